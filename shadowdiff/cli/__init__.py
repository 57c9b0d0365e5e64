"""Thin entry points: the `shadowdiff` CLI, the demo and a loopback model server."""
