"""Model answers of one batch, built column by column into the store's `outputs` layout.

Per row only what must be per row is done (reading the score and label, serialising the
output); the coordinates are the request table's columns, repeated once per variant. When every
row answered a bare number (a vectorised in-process model, a tensor protocol) the columns are
built in Arrow without a Python pass a row."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from shadowdiff.replay.models.base import CallResult, OutputReader
from shadowdiff.schemas.records import ErrorClass

_WRONG_SHAPE = str(ErrorClass.WRONG_SHAPE)
Versions = str | list[str | None] | None  # one model version for the batch, or one per row


def _versions(version: Versions, n: int) -> pa.Array:
    return pa.array(version if isinstance(version, list) else [version] * n, pa.string())


class OutputColumns:
    def __init__(self, reader: OutputReader, keys: pa.Table) -> None:
        self.reader = reader
        self.keys = keys  # source, part, offset of the batch's requests, in call order
        self.tables: list[pa.Table] = []
        self.errors: Counter[str] = Counter()  # "variant/error_class"

    def add(
        self,
        variant: str,
        results: list[CallResult],
        version: Versions,
        head: pa.Table | None = None,
        reader: OutputReader | None = None,
    ) -> None:
        """One variant's results, one per request row, in the keys' order, read by `reader`
        (default: the run's). `head`, when given, holds the first rows' columns already built
        (model_version, score, label, output, latency_ms, error_class, error_detail, attempts)
        and `results` the rest."""
        reader = reader or self.reader
        skip = 0 if head is None else head.num_rows
        if skip + len(results) != self.keys.num_rows:
            raise ValueError(f"{variant}: {skip + len(results)} results for {self.keys.num_rows} requests")
        if head is not None:
            self.tables.append(self._table(variant, self.keys.slice(0, skip), *head.columns))
        if not results:
            return
        keys = self.keys.slice(skip)
        table = None
        if reader.bare_scores and all(type(c[0]) is float and c[2] is None for c in results):
            table = self._scores_table(variant, results, version, keys, reader)
        self.tables.append(table if table is not None else self._rows_table(variant, results, version, keys, reader))

    def table(self) -> pa.Table:
        if not self.tables:
            return self.keys.slice(0, 0)
        return pa.concat_tables(self.tables)

    def _rows_table(
        self, variant: str, results: list[CallResult], version: Versions, keys: pa.Table, reader: OutputReader
    ) -> pa.Table:
        read, dumps = reader.read, orjson.dumps
        errors = self.errors
        rows: list[tuple[Any, ...]] = []
        append = rows.append
        # tuple unpacking and one append a row: this loop runs for every row of every variant
        for out, latency, err, detail, attempts in results:
            score = label = None
            if err is None:
                score, label, problem = read(out)
                if problem is not None:
                    err, detail = _WRONG_SHAPE, problem  # type: ignore[assignment]
            if err is not None:
                errors[f"{variant}/{err}"] += 1
            append((score, label, None if out is None else dumps(out, default=str).decode(), latency, err, detail, attempts))
        scores, labels, texts, latencies, classes, details, attempts_col = zip(*rows, strict=True) if rows else ((),) * 7
        return self._table(
            variant,
            keys,
            _versions(version, keys.num_rows),
            pa.array(scores, pa.float64()),
            pa.array(labels, pa.string()),
            pa.array(texts, pa.string()),
            pa.array(latencies, pa.float64()),
            pa.array(classes, pa.string()),  # ErrorClass values are str
            pa.array(details, pa.string()),
            pa.array(attempts_col, pa.int32()),
        )

    def _scores_table(
        self, variant: str, results: list[CallResult], version: Versions, keys: pa.Table, reader: OutputReader
    ) -> pa.Table | None:
        """The Arrow-built table of bare-number answers; None when one is not finite (the row
        path then records it as wrong-shaped)."""
        n = len(results)
        scores = pa.array([c[0] for c in results], pa.float64())
        if not pc.all(pc.is_finite(scores)).as_py():
            return None
        threshold = reader.spec.threshold
        labels = (
            pa.nulls(n, pa.string())
            if threshold is None
            else pc.if_else(pc.greater_equal(scores, threshold), pa.scalar("1"), pa.scalar("0"))
        )
        return self._table(
            variant,
            keys,
            _versions(version, keys.num_rows),
            scores,
            labels,
            pc.cast(scores, pa.string()),  # shortest round-trip text: valid JSON numbers
            pa.array([c[1] for c in results], pa.float64()),
            pa.nulls(n, pa.string()),
            pa.nulls(n, pa.string()),
            pa.array([c[4] for c in results], pa.int32()),
        )

    @staticmethod
    def _table(variant: str, keys: pa.Table, *columns: pa.Array | pa.ChunkedArray) -> pa.Table:
        """Keys and variant, then model_version, score, label, output, latency_ms, error_class,
        error_detail and attempts."""
        n = keys.num_rows
        names = ["model_version", "score", "label", "output", "latency_ms", "error_class", "error_detail", "attempts"]
        table = keys.append_column("variant", pa.array([variant] * n, pa.string()))
        for name, col in zip(names, columns, strict=True):
            table = table.append_column(name, col)
        return table
