"""Records that flow through the replay hot path. Plain slotted classes, not frozen dataclasses:
a frozen dataclass pays an object.__setattr__ per field, and these are built per message.
They are never mutated after construction (Position aside)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol


class SourceRecord(Protocol):
    """What a source hands over per message: kafka-python's ConsumerRecord has these fields,
    and file recordings produce `FileRecord`s with the same names."""

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def timestamp(self) -> int: ...

    @property
    def headers(self) -> Any: ...


class FileRecord(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: tuple[tuple[str, bytes | None], ...] = ()


class PartitionBatch(NamedTuple):
    """Records of one partition, in offset order, as polled (no per-message copy)."""

    source: str
    part: int
    records: list[Any]


@dataclass(slots=True)
class Position:
    """Where a partition stands after a batch: next offset to read and running counts."""

    next_offset: int
    consumed: int = 0
    sampled: int = 0
