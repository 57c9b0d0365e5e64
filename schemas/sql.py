"""Quoting for the SQL the replay and the judge write: names and values that come from configs
and traffic go into DuckDB statements quoted, never as they are."""

from __future__ import annotations


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(s: str) -> str:
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


__all__ = ["ident", "literal"]
