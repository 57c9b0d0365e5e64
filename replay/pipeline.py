"""The replay's pipeline thread: a batch read by the main thread is decoded on a decoder
thread (in DuckDB when it can be, see replay/columnar.py), sent to every variant from the
event loop, turned into output columns and handed to the writer thread, which stores rows and
checkpoints in one DuckDB transaction.

Batches are stored strictly in order: each batch's write waits for the one before it. The
DuckDB work runs with the GIL released, so it overlaps the main thread's Kafka reads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from shadowdiff.replay.columnar import MISSING_LIVE, BatchDecoder, RawColumns
from shadowdiff.replay.messages import Position
from shadowdiff.replay.models.base import CallResult, ModelClient, OutputReader
from shadowdiff.replay.models.call_process import ProcessHttpModel
from shadowdiff.replay.models.inprocess import PythonModel
from shadowdiff.replay.outputs import OutputColumns
from shadowdiff.replay.sampling import RATE
from shadowdiff.replay.store import StoreWriter
from shadowdiff.schemas.config import RunConfig
from shadowdiff.schemas.envelope import Decoder, Row
from shadowdiff.schemas.records import BASELINE, BASELINE_REPEAT, DeadLetter, ErrorClass, candidate_variant
from shadowdiff.schemas.rows import requests_arrow


@dataclass
class PendingBatch:
    """What has been read but not yet stored. Filled by the main thread until dispatched, then
    owned by the pipeline thread."""

    raw: RawColumns = field(default_factory=RawColumns)  # admitted, decoded later in DuckDB
    reqs: list[Row] = field(default_factory=list)  # decoded in Python, see schemas.envelope.RowLayout
    dead: list[DeadLetter] = field(default_factory=list)
    # (source, part, offset, quota, hash) of the requests stored for a quota (replay.sampling)
    quota_hashes: list[tuple[str, int, int, str, int]] = field(default_factory=list)
    # next offset per partition; `consumed` and `sampled` count this batch only (the pipeline
    # thread keeps the running totals, in batch order)
    positions: dict[tuple[str, int], Position] = field(default_factory=dict)
    consumed: int = 0
    since: float = 0.0
    sampled: int = 0  # requests stored, set once decoded

    def size(self) -> int:
        return len(self.raw) + len(self.reqs)

    def add(self, decoded: Row | DeadLetter) -> None:
        """Keep what the Python decoder made of one message: a request or a dead letter."""
        if type(decoded) is tuple:
            self.reqs.append(decoded)
        else:
            self.dead.append(decoded)  # type: ignore[arg-type]


class BatchPipeline:
    """Runs on the replay's event loop thread; owns the batch decoder and the writer thread."""

    def __init__(
        self,
        cfg: RunConfig,
        writer: StoreWriter,
        decoder: Decoder,
        batch_decoder: BatchDecoder | None,
        baseline: ModelClient | None,
        candidates: Mapping[str, ModelClient],
        loop: asyncio.AbstractEventLoop,
        call_errors: Counter[str],
    ) -> None:
        self.cfg = cfg
        self.writer = writer
        self.decoder = decoder
        self.layout = decoder.layout
        self.batch_decoder = batch_decoder
        self.baseline = baseline
        self.candidates = dict(candidates)
        self.reader = OutputReader(cfg.output)  # the run's: the live baseline's answers
        # each model's own mapping where it has one (a candidate on another serving stack)
        self.readers: dict[str, OutputReader] = {}
        if cfg.baseline.model is not None:
            self.readers[BASELINE] = self.readers[BASELINE_REPEAT] = OutputReader(cfg.output_of(cfg.baseline.model))
        for spec in cfg.candidates:
            self.readers[candidate_variant(spec.name)] = OutputReader(cfg.output_of(spec))
        self.call_errors = call_errors  # "variant/error_class" -> count, the run's stats
        self._loop = loop
        self._request_schema = writer.requests_table([]).schema
        # running totals per partition, advanced in batch order
        self._totals: dict[tuple[str, int], Position] = dict(writer.positions)
        # the DuckDB writes run on their own thread (GIL released) while this thread prepares
        # the next batch; `_last_write` chains them so batches commit in order
        self._writer_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shadowdiff-writer")
        self._last_write: asyncio.Future[None] | None = None
        # decoding runs off the event loop, so calls in flight keep being served meanwhile
        self._decoder_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shadowdiff-decoder")

    def close(self) -> None:
        self._decoder_pool.shutdown()
        self._writer_pool.shutdown()
        if self.batch_decoder is not None:
            self.batch_decoder.close()

    async def process(self, p: PendingBatch) -> None:
        """Call every variant on the batch, then store rows and checkpoints together, after the
        batch before it."""
        # coroutines start in dispatch order on this loop: take this batch's place in the chain
        previous_write = self._last_write
        written: asyncio.Future[None] = self._loop.create_future()
        self._last_write = written
        try:
            await self._call_and_store(p, previous_write)
        except BaseException as err:
            written.set_exception(err)
            written.exception()  # marked retrieved: the failure is raised to the main thread below
            raise
        written.set_result(None)

    def _decode_batch(self, p: PendingBatch) -> tuple[pa.Table | None, pa.Table]:
        """Decode the batch's raw messages in DuckDB; the rows it leaves are decoded by the
        Python decoder into `p.reqs` / `p.dead`. Returns the DuckDB-decoded rows (with their
        live-output columns) and the requests table: DuckDB's rows first, then Python's."""
        tables: list[pa.Table] = []
        decoded: pa.Table | None = None
        if len(p.raw):
            assert self.batch_decoder is not None
            result = self.batch_decoder.decode(p.raw)
            raw, decode = p.raw, self.decoder.decode_record
            for i in result.unclean:  # the rows the SQL cannot vouch for: the reference decides
                p.add(decode(raw.source[i], raw.part[i], raw.offset[i], raw.key[i], raw.value[i], raw.timestamp_ms[i], RATE))
            if result.table.num_rows:
                decoded = result.table
                idx = decoded.column("i")
                tables.append(
                    requests_arrow(
                        source=pa.array(raw.source, pa.string()).take(idx),
                        part=pa.array(raw.part, pa.int32()).take(idx),
                        offset=pa.array(raw.offset, pa.int64()).take(idx),
                        request_id=decoded.column("request_id"),
                        event_time=decoded.column("event_time_us"),
                        sampled_reason=[RATE] * decoded.num_rows,
                        segments=decoded.column("segments"),
                        features=decoded.column("features"),
                        model_input=decoded.column("model_input"),
                        feature_version=decoded.column("feature_version"),
                    ).cast(self._request_schema)
                )
        if p.reqs or not tables:
            tables.append(self.writer.requests_table(p.reqs))
        return decoded, pa.concat_tables(tables)

    def _live_outputs(self, outputs: OutputColumns, decoded: pa.Table | None, reqs: list[Row]) -> None:
        """The live baseline recorded in the envelopes, in the requests table's row order."""
        L = self.layout
        missing = CallResult(None, None, ErrorClass.MISSING, MISSING_LIVE, 0)
        new = tuple.__new__  # a NamedTuple's own __new__ is a Python-level call
        head: pa.Table | None = None
        results: list[CallResult] = []
        versions: list[str | None] = []
        if decoded is not None:
            has = decoded.column("has_live_output")
            if self.batch_decoder is not None and self.batch_decoder.live_scores:
                # score and label were read in SQL: no Python pass over these rows
                n = decoded.num_rows
                head = pa.table(
                    {
                        "model_version": decoded.column("live_model_version"),
                        "score": decoded.column("live_score"),
                        "label": decoded.column("live_label"),
                        "output": decoded.column("live_output"),
                        # like the Python rows' MISSING result: no latency without an output
                        "latency_ms": pc.if_else(has, decoded.column("live_latency_ms"), pa.scalar(None, pa.float64())),
                        "error_class": pc.if_else(has, pa.scalar(None, pa.string()), pa.scalar(str(ErrorClass.MISSING))),
                        "error_detail": pc.if_else(has, pa.scalar(None, pa.string()), pa.scalar(MISSING_LIVE)),
                        "attempts": pa.array(np.zeros(n, np.int32)),
                    }
                )
            else:
                loads = orjson.loads
                for present, text, latency in zip(
                    has.to_pylist(),
                    decoded.column("live_output").to_pylist(),
                    decoded.column("live_latency_ms").to_pylist(),
                    strict=True,
                ):
                    output = None if text is None else loads(text)
                    results.append(new(CallResult, (output, latency, None, None, 0)) if present else missing)
                versions.extend(decoded.column("live_model_version").to_pylist())
        has_i, out_i, latency_i = L.has_live_output, L.live_output, L.live_latency_ms
        results.extend(new(CallResult, (r[out_i], r[latency_i], None, None, 0)) if r[has_i] else missing for r in reqs)
        versions.extend(r[L.live_model_version] for r in reqs)
        outputs.add(BASELINE, results, versions, head=head)

    async def _call_and_store(self, p: PendingBatch, previous_write: asyncio.Future[None] | None) -> None:
        decoded, requests = await self._loop.run_in_executor(self._decoder_pool, self._decode_batch, p)
        reqs, L = p.reqs, self.layout
        outputs = OutputColumns(self.reader, requests.select(["source", "part", "offset"]))
        # the batch's calls are sent together: latency is judged over the wall-clock time they
        # were made (the load they met), which a replay's event time only approximates
        called_at = pa.scalar(int(time.time() * 1e6), pa.timestamp("us", tz="UTC"))
        if requests.num_rows:
            records: list[dict[str, Any]] | None = None
            texts: list[str] | None = None
            calls: dict[str, Any] = {}
            versions: dict[str, str | None] = {}
            clients = [(BASELINE, self.baseline)] if self.baseline is not None else []
            if self.baseline is not None and self.cfg.baseline.repeat:
                clients.append((BASELINE_REPEAT, self.baseline))
            clients += [(candidate_variant(name), c) for name, c in self.candidates.items()]
            for variant, client in clients:
                assert client is not None
                versions[variant] = client.model_version
                if isinstance(client, PythonModel) and client.takes_table:
                    calls[variant] = client.predict_table(_features(requests))
                elif isinstance(client, ProcessHttpModel):
                    # the stored JSON text goes to the call process as it is: parsing it there
                    # keeps that work off this process's GIL
                    if texts is None:
                        texts = requests.column("model_input").to_pylist()
                    calls[variant] = client.predict_json(texts)
                else:
                    if records is None:
                        # the models get the input as production sent it (parsed once, here)
                        head = [] if decoded is None else [orjson.loads(s) for s in decoded.column("model_input").to_pylist()]
                        records = head + [r[L.model_input] for r in reqs]
                    calls[variant] = client.predict(records)
            results = await asyncio.gather(*calls.values())
            if self.baseline is None:
                self._live_outputs(outputs, decoded, reqs)
            for variant, res in zip(calls, results, strict=True):
                outputs.add(variant, res, versions[variant], reader=self.readers.get(variant))
        self.call_errors.update(outputs.errors)
        out_table = outputs.table()
        stamps: pa.Array | pa.ChunkedArray = pa.repeat(called_at, out_table.num_rows)
        if self.baseline is None and out_table.num_rows:  # the baseline's answers were recorded in production
            stamps = pc.if_else(pc.equal(out_table.column("variant"), BASELINE), pa.scalar(None, called_at.type), stamps)
        out_table = out_table.append_column("called_at", stamps)
        counts = requests.group_by(["source", "part"]).aggregate([("offset", "count")])
        sampled = dict(
            zip(
                zip(counts.column("source").to_pylist(), counts.column("part").to_pylist(), strict=True),
                counts.column("offset_count").to_pylist(),
                strict=True,
            )
        )
        p.sampled = requests.num_rows
        if previous_write is not None:
            await asyncio.shield(previous_write)  # raises if it failed: nothing is stored past a gap
        positions: dict[tuple[str, int], Position] = {}
        for k, pos in p.positions.items():
            before = self._totals.get(k)
            positions[k] = self._totals[k] = Position(
                pos.next_offset,
                (before.consumed if before else 0) + pos.consumed,
                (before.sampled if before else 0) + sampled.get(k, 0),
            )
        await self._loop.run_in_executor(
            self._writer_pool, self.writer.write_batch, requests, out_table, p.dead, positions, p.quota_hashes
        )


def _features(requests: pa.Table) -> pa.Table:
    """The declared features of a batch as a flat table, for models that take one."""
    col = requests.column("features")
    return pa.Table.from_batches(
        [pa.RecordBatch.from_struct_array(chunk) for chunk in col.chunks], schema=pa.schema(list(col.type))
    )
