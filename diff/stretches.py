"""Consecutive runs of items that are processed together, each of at most a given size: the
judge reads large relations a stretch at a time to stay inside its memory and disk."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def stretches(items: Sequence[T], sizes: Sequence[int], at_most: int) -> list[list[T]]:
    """`items` in order, cut into consecutive runs whose sizes add up to at most `at_most` (an
    item larger than that alone)."""
    out: list[list[T]] = []
    total = 0
    for item, n in zip(items, sizes, strict=True):
        if out and total + n <= at_most:
            out[-1].append(item)
            total += n
        else:
            out.append([item])
            total = n
    return out
