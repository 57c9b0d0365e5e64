"""In-process Python models: `module:function` called in batches (one row per call is ~240x
slower for a scikit-learn model here) and returning one output per row. Latency is the batch's
wall time divided by its rows.

The function gets either the inputs as a list of dicts (`input = "records"`, the default) or,
with `input = "table"`, the declared features as a pyarrow Table (numeric columns float64,
categorical ones string): a vectorised model then scores a batch without a Python loop per row,
and `polars.from_arrow` / `Table.to_pandas()` hand it to most libraries without a copy."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from shadowdiff.replay.models.base import CallResult
from shadowdiff.replay.models.resilience import CircuitBreaker
from shadowdiff.schemas.config import ModelSpec
from shadowdiff.schemas.errors import ConfigError
from shadowdiff.schemas.records import ErrorClass as E

BatchFn = Callable[[Any], Any]  # a list of input dicts, or a pyarrow Table of features -> outputs


def load_callable(target: str) -> BatchFn:
    """Import `module:function`. Raises ConfigError when it cannot."""
    module_name, _, attr = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError("model target", [f"{target}: cannot import ({err})"]) from err
    if not callable(fn):
        raise ConfigError("model target", [f"{target}: not callable"])
    return fn


class PythonModel:
    def __init__(self, spec: ModelSpec, fn: BatchFn | None = None) -> None:
        assert spec.target is not None
        self.spec = spec
        self.name = spec.name
        self.model_version = spec.model_version
        self.fn = fn or load_callable(spec.target)
        self.breaker = CircuitBreaker(spec.breaker_failures, spec.breaker_reset_s, spec.name)
        self.takes_table = spec.input == "table"

    async def predict(self, inputs: list[dict[str, Any]]) -> list[CallResult]:
        k = self.spec.rows_per_call
        out: list[CallResult] = []
        for i in range(0, len(inputs), k):
            out.extend(await self._chunk(inputs[i : i + k]))
        return out

    async def predict_table(self, features: pa.Table) -> list[CallResult]:
        """Like `predict`, for models configured with `input = "table"`."""
        k = self.spec.rows_per_call
        out: list[CallResult] = []
        for i in range(0, features.num_rows, k):
            out.extend(await self._chunk(features.slice(i, k)))
        return out

    async def _chunk(self, rows: list[dict[str, Any]] | pa.Table) -> list[CallResult]:
        n = len(rows)
        if not self.breaker.allow():
            return [CallResult(None, None, E.CIRCUIT_OPEN, "breaker open after repeated failures", 0)] * n
        t0 = time.perf_counter()
        try:
            # small batches run inline: a thread hop costs more than scoring them
            if n >= 64:
                result = await asyncio.wait_for(asyncio.to_thread(self.fn, rows), self.spec.timeout_s)
            else:
                result = self.fn(rows)
        except TimeoutError:
            self.breaker.record(False)
            return [CallResult(None, None, E.TIMEOUT, f"no answer in {self.spec.timeout_s}s", 1)] * n
        except Exception as exc:  # a model's bug is data about the model, not a crash of the run
            self.breaker.record(False)
            return [CallResult(None, None, E.EXCEPTION, f"{type(exc).__name__}: {exc}"[:300], 1)] * n
        per_row = (time.perf_counter() - t0) * 1000.0 / max(n, 1)
        try:
            # a numpy array of scores is as good as a list; its items become plain floats
            values = result.tolist() if hasattr(result, "tolist") else list(result)
        except TypeError:
            values = []
        if len(values) != n:
            self.breaker.record(False)
            return [CallResult(None, per_row, E.WRONG_SHAPE, f"returned {len(values)} outputs for {n} rows", 1)] * n
        self.breaker.record(True)
        # tuple.__new__ directly: a NamedTuple's own __new__ and _make are Python-level calls
        new = tuple.__new__
        return [new(CallResult, (v, per_row, None, None, 1)) for v in values]

    async def close(self) -> None:
        """Nothing to release."""
