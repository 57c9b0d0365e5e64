"""The Arrow layout of the store's `requests` rows (schemas/store.sql): the one place that names
their columns and types, for the replay's two decoders (the Python rows and DuckDB's batches)
and the synthetic stores of the tests and benches."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

EVENT_TIME = pa.timestamp("us", tz="UTC")


def _typed(values: Any, kind: pa.DataType) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values if values.type == kind else values.cast(kind)
    return pa.array(values, kind)


def requests_arrow(
    *,
    source: Any,
    part: Any,
    offset: Any,
    request_id: Any,
    event_time: Any,
    sampled_reason: Any,
    segments: pa.StructArray | pa.ChunkedArray,
    features: pa.StructArray | pa.ChunkedArray,
    model_input: Any,
    feature_version: Any,
) -> pa.Table:
    """A batch of requests rows; `event_time` as timestamps or integer microseconds (UTC), the
    other columns as Arrow arrays or Python sequences of their values."""
    if isinstance(event_time, pa.Array | pa.ChunkedArray) and pa.types.is_integer(event_time.type):
        event_time = event_time.cast(pa.int64()).cast(EVENT_TIME)
    return pa.table(
        {
            "source": _typed(source, pa.string()),
            "part": _typed(part, pa.int32()),
            "offset": _typed(offset, pa.int64()),
            "request_id": _typed(request_id, pa.string()),
            "event_time": _typed(event_time, EVENT_TIME),
            "sampled_reason": _typed(sampled_reason, pa.string()),
            "segments": segments,
            "features": features,
            "model_input": _typed(model_input, pa.string()),
            "feature_version": _typed(feature_version, pa.string()),
        }
    )


__all__ = ["EVENT_TIME", "requests_arrow"]
