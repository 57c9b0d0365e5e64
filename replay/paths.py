"""Dotted-path lookups into decoded JSON (`a.b.c`); '' means the object itself."""

from __future__ import annotations

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
