"""Dotted paths into decoded JSON (`a.b.c`, list indexes as digits; '' is the object itself):
how a run config points into envelopes and model answers. Shared by replay and diff."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MISSING = object()


def lookup(obj: Any, path: str, default: Any = _MISSING) -> Any:
    """Value at `path`; `default` (or KeyError) when a step is absent or not an object."""
    if not path:
        return obj
    cur = obj
    for step in path.split("."):
        if isinstance(cur, dict) and step in cur:
            cur = cur[step]
        elif isinstance(cur, list) and step.isdigit() and int(step) < len(cur):
            cur = cur[int(step)]
        else:
            if default is _MISSING:
                raise KeyError(path)
            return default
    return cur


def getter(path: str) -> Callable[[Any], Any]:
    """A function reading the dotted `path` from decoded JSON (None when absent)."""
    if not path:
        return lambda obj: obj
    steps = path.split(".")
    if len(steps) == 1:
        key = steps[0]
        return lambda obj: obj.get(key) if type(obj) is dict else None

    def get(obj: Any) -> Any:
        for s in steps:
            if type(obj) is dict:
                obj = obj.get(s)
            elif type(obj) is list and s.isdigit() and int(s) < len(obj):
                obj = obj[int(s)]
            else:
                return None
        return obj

    return get
