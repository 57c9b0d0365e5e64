"""Decode a whole batch of raw messages in DuckDB instead of one message at a time in Python.

Why: at 100% sampling the replay is bound by the GIL. Reading Kafka with kafka-python costs
GIL time for every message, and decoding, building the rows and reading the live output in
Python cost about as much again. DuckDB parses the batch's JSON in C++ with the GIL released,
on the decoder thread, while the main thread keeps polling Kafka (docs/performance.md has
today's rates). A decode query has a fixed planning cost whatever its size, then a cost a row;
its working memory follows its rows, which is why the runner cuts batches at exactly
`batch_size`.

The SQL decodes only rows it can decode exactly as the Python decoder (`schemas.envelope`, the
reference) would: the common shapes (string or integer ids and segment values, numeric or
missing features, numeric or RFC 3339 event times, a live output whose score is a number...).
Every other row is "unclean" and handed back by index, so the reference decides it: it may
still be a good request (a float segment value, a week date) or a dead letter with its exact
reason and detail. A row never gets a different answer for taking the fast path;
`tests/test_columnar.py` checks the two decoders agree on a corpus of odd envelopes.

A key repeated in one object is the one JSON input the two parsers read differently: yyjson
(DuckDB) keeps the first value, orjson the last (as JavaScript's JSON.parse and Python's json
do). Such a row is never clean, so the reference's reading (the last value) is the only one.

Avro and Protobuf envelopes take the same path: the format's reader (replay/formats.py) turns
each message into the object the codec would map, orjson writes it as JSON, and the SQL decodes
that text. orjson reads its own text back as the very object it wrote, so a row means the same
on both paths, with one exception: orjson writes a non-finite float as null, so an object
holding one is left to the reference. The text needs none of the checks that guard against
JSON orjson and yyjson read differently (it is strict, has no repeated key and is nested at most
orjson's 255 levels), which makes its decode cheaper than a producer's JSON.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa

from shadowdiff.schemas.config import RunConfig
from shadowdiff.schemas.envelope import BadMessage, Payload
from shadowdiff.schemas.records import EVENT_TIME_MAX_US, MAX_INPUT_DEPTH
from shadowdiff.schemas.sql import ident, literal

_INTS = "('BIGINT', 'UBIGINT')"
_NUMBERS = "('BIGINT', 'UBIGINT', 'DOUBLE')"
_TEXTLIKE = "('VARCHAR', 'BIGINT', 'UBIGINT')"  # JSON types whose text equals Python's str()
_HOUR_US = 3_600_000_000
_SCAN_CHUNK_ROWS = 2048  # DuckDB's vector size
# yyjson accepts NaN/Infinity literals and trailing commas, and reads 1e400 as infinity; orjson
# rejects all three. A row where one might appear is left to the Python decoder (a false hit,
# such as ", }" inside a string, only costs speed).
_NON_STRICT = r"""'[:,\[]\s*[-+]?(?i:nan|inf)|[eE]\+?\d{3}|,\s*[\]}]'"""
# offsets below 24 h, as Python's datetime takes them (DuckDB would also read "+25:00")
_RFC3339 = r"""'\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)?'"""
# every quoted string, captured when it is a key (followed by a colon): matching every string
# keeps the scan aligned, so a colon inside a string value is never read as a key
_KEY_TOKENS = r"""'("(?:[^"\\]|\\.)*")\s*:|"(?:[^"\\]|\\.)*"'"""
MISSING_LIVE = "no live output in the envelope"
log = logging.getLogger(__name__)


def _steps(path: str) -> list[str]:
    return path.split(".") if path else []


def _plain(step: str) -> bool:
    """A step a JSON path can name the way the Python walk reads it: not a list index (digit
    steps are indexes there), no quote or backslash."""
    return bool(step) and not step.isdigit() and '"' not in step and "\\" not in step


def _json_path(steps: list[str]) -> str:
    return "$" + "".join(f'."{s}"' for s in steps)


def _no_repeated_keys(text_column: str) -> str:
    """SQL true when a JSON text of nested containers surely has no key twice in one object:
    it has no nested container, or no key text appears twice in it at all and no key is
    escaped (an escape can spell one key two ways). A false alarm only sends the row to the
    Python decoder."""
    tokens = f"list_filter(regexp_extract_all({text_column}, {_KEY_TOKENS}, 1), lambda k: k IS NOT NULL)"
    return (
        f"(NOT regexp_matches(substr({text_column}, 2), '[\\[{{]')"
        f" OR (strpos({text_column}, '\\') = 0 AND len({tokens}) = len(list_distinct({tokens}))))"
    )


def supports(cfg: RunConfig) -> bool:
    """True when every configured path has a JSON-path twin that means the same thing, and no
    path is empty where the Python decoder would read the whole envelope."""
    env = cfg.envelope
    required = [env.request_id, env.event_time, env.input, env.live_latency_ms, env.model_version, env.feature_version]
    if any(not p for p in required):
        return False
    names = [*cfg.features.numeric, *cfg.features.categorical, *cfg.segments.fields]
    steps = [s for p in [*required, env.segments, env.live_output] for s in _steps(p)] + names
    return all(_plain(s) for s in steps)


def reads_live_scores(cfg: RunConfig) -> bool:
    """True when the SQL can also read the live output's score and label (a score output at a
    plain key, or the output itself); otherwise the pipeline reads them in Python."""
    out = cfg.output
    keys = [k for k in (out.score_path, out.label_path) if k]
    return out.kind == "score" and all("." not in k and _plain(k) for k in keys) and bool(cfg.envelope.live_output)


@dataclass
class RawColumns:
    """Admitted messages of a batch, column by column: extending lists per partition batch is
    the cheapest way to collect them from kafka-python's records."""

    source: list[str] = field(default_factory=list)
    part: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    timestamp_ms: list[int] = field(default_factory=list)
    key: list[bytes | None] = field(default_factory=list)
    value: list[bytes | None] = field(default_factory=list)
    # a format other than JSON: the values as JSON text (JsonTranscoder), a chunk per extend
    texts: list[pa.Array] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offset)

    def extend(self, source: str, part: int, records: list[Any], transcode: JsonTranscoder | None = None) -> None:
        """Add `records`; with `transcode`, their JSON texts too, written here on the reading
        thread while the decoder thread's DuckDB decodes the batch before (with the GIL
        released)."""
        n = len(records)
        self.source.extend([source] * n)
        self.part.extend([part] * n)
        self.offset.extend([r.offset for r in records])
        self.timestamp_ms.extend([r.timestamp for r in records])
        self.key.extend([r.key for r in records])
        values = [r.value for r in records]
        self.value.extend(values)
        if transcode is not None:
            self.texts.append(transcode(values))


def binary_array(values: list[bytes | None]) -> pa.Array:
    """`values` as one Arrow binary array built from one joined buffer (pa.array over a list of
    bytes copies each object separately and costs ~4x more)."""
    n = len(values)
    present = [b"" if v is None else v for v in values]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.fromiter(map(len, present), np.int64, n), out=offsets[1:])
    validity = None
    if any(v is None for v in values):
        validity = pa.array([v is not None for v in values], pa.bool_()).buffers()[1]
    data = pa.py_buffer(b"".join(present))
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [validity, pa.py_buffer(offsets), data])


def _has_non_finite(value: Any) -> bool:
    t = type(value)
    if t is float:
        return bool(value - value != 0)
    if t is dict:
        return any(map(_has_non_finite, value.values()))
    if t is list:
        return any(map(_has_non_finite, value))
    return False


class JsonTranscoder:
    """A non-JSON format's messages as JSON text the SQL decodes: None for a message the
    reference must decide (a tombstone, an oversized or undecodable message, an object orjson
    would not write back as itself)."""

    def __init__(self, payload: Payload, max_bytes: int) -> None:
        self.payload = payload
        self.max_bytes = max_bytes

    def __call__(self, values: list[bytes | None]) -> pa.Array:
        """The texts as one Arrow binary array, null where the reference decides. Each text is
        appended to one buffer as it is written: keeping a batch's worth of separate bytes
        objects alive until a join was slower than writing them (see the commit)."""
        payload, max_bytes, dumps = self.payload, self.max_bytes, orjson.dumps
        buf = bytearray()
        ends = [0]
        end = ends.append
        valid = [True] * len(values)
        for k, value in enumerate(values):
            text = None
            if value is not None and len(value) <= max_bytes:
                try:
                    obj = payload(value)
                    # JSONEncodeError: a value orjson cannot write (a lone surrogate, an
                    # integer past 64 bits, an object nested past 255 levels)
                    text = dumps(obj) if type(obj) is dict else None
                except (BadMessage, orjson.JSONEncodeError):  # the reference records the reason
                    text = None
                # a non-finite float is written as null, which would read as a missing value
                if text is not None and b"null" in text and _has_non_finite(obj):
                    text = None
            if text is None:
                valid[k] = False
            else:
                buf += text
            end(len(buf))
        validity = None if all(valid) else pa.array(valid, pa.bool_()).buffers()[1]
        offsets = pa.py_buffer(np.array(ends, np.int64))
        return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(values), [validity, offsets, pa.py_buffer(buf)])


@dataclass
class Decoded:
    """The clean rows (column `i` indexes the raw batch) and the indexes of the rows the Python
    decoder must decide."""

    table: pa.Table
    unclean: list[int]


class BatchDecoder:
    """Owns an in-memory DuckDB connection with two threads: the decode is the replay's
    busiest work, and two threads let it use the core the main thread leaves idle while it
    waits on the consumer."""

    def __init__(self, cfg: RunConfig, payload: Payload | None = None) -> None:
        """`payload`: the reader of a format other than JSON, whose objects are decoded as the
        JSON text orjson writes of them."""
        self.cfg = cfg
        self.live_scores = reads_live_scores(cfg)
        self.transcode = None if payload is None else JsonTranscoder(payload, cfg.source.max_message_bytes)
        # without the ICU extension (not installable offline) a TIMESTAMPTZ cast reads a string
        # without an offset as UTC, as the Python decoder does
        # a bounded buffer: a batch's working set is a few MB, and the replay's RSS stays flat
        self.con = duckdb.connect(":memory:", config={"threads": 2, "memory_limit": "256MB"})
        # the extraction below is MATERIALIZED; pushed into it, the rows' checks were evaluated
        # both inside and again after it, a fifth of the decode (bench/replay_bench.py)
        with contextlib.suppress(duckdb.Error):  # a DuckDB without that optimizer: nothing to turn off
            self.con.execute("SET disabled_optimizers = 'cte_filter_pusher'")
        self.sql = self._build_sql(own_text=payload is not None)

    def close(self) -> None:
        self.con.close()

    def _build_sql(self, own_text: bool) -> str:
        """`own_text`: the batch holds JSON written by orjson, which needs no check against
        the JSON yyjson and orjson read differently."""
        cfg, env = self.cfg, self.cfg.envelope
        paths: list[str] = []
        clean: list[str] = []
        # objects read on the way to a configured value, and the stored objects themselves:
        # their keys are checked for repeats
        objects: set[tuple[str, ...]] = {(), tuple(_steps(env.input)), tuple(_steps(env.live_output))}

        def slot(steps: list[str]) -> str:
            """A column with the text of the JSON value at `steps` (`s<k>`: a string unquoted,
            anything else as JSON); its JSON type is `t<k>`."""
            paths.append(_json_path(steps))
            objects.update(tuple(steps[:j]) for j in range(len(steps)))
            return f"s{len(paths)}"

        def jt(text_column: str) -> str:
            return "t" + text_column[1:]

        def textlike(v: str, also_null: tuple[str, ...] = ()) -> str:
            """Python's `None if v is None else str(v)`: equal for strings and integers; JSON
            types in `also_null` read as None on both sides; any other type goes to Python."""
            ok = ", ".join(f"'{t}'" for t in ("NULL", "VARCHAR", "BIGINT", "UBIGINT", *also_null))
            clean.append(f"({jt(v)} IS NULL OR {jt(v)} IN ({ok}))")
            return f"CASE WHEN {jt(v)} IN {_TEXTLIKE} THEN {v} END"

        rid = slot(_steps(env.request_id))
        clean.append(f"{jt(rid)} IN {_TEXTLIKE} AND {rid} <> ''")
        model_input = slot(_steps(env.input))
        clean.append(f"{jt(model_input)} = 'OBJECT'")
        if not own_text:
            clean.append(_no_repeated_keys(model_input))
        # nesting never exceeds the opening brackets: fewer than the limit is surely shallow
        # enough; other rows go to the Python decoder, which measures the depth
        # (counted only in texts long enough to nest that deep: most inputs are not)
        clean.append(
            f"(strlen({model_input}) <= {2 * MAX_INPUT_DEPTH + 1}"
            f" OR length({model_input}) - length(translate({model_input}, '[{{', '')) <= {MAX_INPUT_DEPTH})"
        )
        t = slot(_steps(env.event_time))
        t_us = (
            f"CASE WHEN {jt(t)} IS NULL OR {jt(t)} = 'NULL' THEN ts * 1000"
            f" WHEN {jt(t)} IN {_INTS} AND abs({t}::DOUBLE) < 1e15 THEN {t}::BIGINT * 1000"
            f" WHEN {jt(t)} = 'DOUBLE' AND abs({t}::DOUBLE) < 1e15 THEN trunc({t}::DOUBLE * 1000)::BIGINT"
            f" WHEN {jt(t)} = 'VARCHAR' AND regexp_full_match({t}, {_RFC3339})"
            f" THEN epoch_us(TRY_CAST({t} AS TIMESTAMPTZ)) END"
        )
        seg_steps = _steps(env.segments)
        segments: list[tuple[str, str]] = []
        for name in cfg.segments.fields:
            segments.append((name, textlike(slot([*seg_steps, name]))))
        hb = cfg.segments.hour_buckets
        if hb is not None:
            hour = f"((t_us // {_HOUR_US}) % 24)"
            whens = " ".join(
                f"WHEN {hour} IN ({', '.join(map(str, hours))}) THEN {literal(bucket)}"
                for bucket, hours in hb.buckets.items()
                if hours
            )
            segments.append((hb.name, f"CASE {whens} END" if whens else "NULL::VARCHAR"))
        for name, allowed in cfg.segments.allowed.items():
            expr = dict(segments).get(name)
            if expr is not None:
                values = ", ".join(literal(a) for a in allowed) or "NULL"
                clean.append(f"({expr} IS NULL OR {expr} IN ({values}))")
        in_steps = _steps(env.input)
        features: list[tuple[str, str]] = []
        for name in cfg.features.numeric:
            x = slot([*in_steps, name])
            features.append((name, f"CASE WHEN {jt(x)} IN {_NUMBERS} THEN {x}::DOUBLE END"))
        for name in cfg.features.categorical:
            features.append((name, textlike(slot([*in_steps, name]), ("OBJECT", "ARRAY"))))
        latency = slot(_steps(env.live_latency_ms))
        version = textlike(slot(_steps(env.model_version)))
        feature_version = textlike(slot(_steps(env.feature_version)))
        live_cols = self._live_sql(slot, jt, clean, own_text)

        def struct(items: list[tuple[str, str]]) -> str:
            if not items:
                return 'struct_pack("_" := NULL::VARCHAR)'
            return "struct_pack(" + ", ".join(f"{ident(n)} := {e}" for n, e in items) + ")"

        k = len(paths)
        path_list = "[" + ", ".join(literal(p) for p in paths) + "]"
        object_list = "[" + ", ".join(literal(_json_path(list(o))) for o in sorted(objects)) + "]"
        # one test an object: a lambda over the list of lists is slower (see the commit)
        unique_keys = " AND ".join(f"coalesce(len(keys[{j}]) = list_unique(keys[{j}]), true)" for j in range(1, len(objects) + 1))
        keys = f"json_keys(txt, {object_list})"
        strict = f"""json_valid(txt) AND NOT regexp_matches(txt, {_NON_STRICT})
        -- orjson refuses documents nested past 1024 levels, DuckDB does not: the reference decides
        AND (strlen(txt) <= 2001 OR length(txt) - length(translate(txt, '[{{', '')) <= 1000)"""
        if own_text:
            keys, strict, unique_keys = "NULL", "true", "true"
        type_paths = path_list[:-1] + ", '$']"  # the envelope's own type comes last
        # `parsed` keeps rows that are strict JSON within the size limit; `extracted`
        # reads every configured path's JSON type and text with one parse a row for each list
        # (json_type and json_extract_string take a list of paths). Typing and casting the text
        # costs no further JSON parse, where json_extract fragments would each be parsed again by
        # every json_type, ->> and cast. The extraction is MATERIALIZED: inlined, DuckDB would
        # evaluate it again at every reference of a field.
        return f"""
WITH parsed AS (
    SELECT i, ts, txt FROM (
        SELECT i, ts, TRY(decode(value)) AS txt FROM raw
        WHERE value IS NOT NULL AND octet_length(value) <= {cfg.source.max_message_bytes}
    )
    WHERE txt IS NOT NULL AND {strict}
), extracted AS MATERIALIZED (
    SELECT i, ts, json_type(txt, {type_paths}) AS t, json_extract_string(txt, {path_list}) AS s,
        {keys} AS keys
    FROM parsed
), fields AS (
    SELECT i, ts, t[{k + 1}] AS root_type, {", ".join(f"t[{j}] AS t{j}, s[{j}] AS s{j}" for j in range(1, k + 1))}
    FROM extracted
    WHERE {unique_keys}
), timed AS (
    SELECT *, {t_us} AS t_us FROM fields
)
SELECT
    i,
    {rid} AS request_id,
    t_us AS event_time_us,
    {struct(segments)} AS segments,
    {struct(features)} AS features,
    {model_input} AS model_input,
    {feature_version} AS feature_version,
    {live_cols},
    CASE WHEN {jt(latency)} IN {_NUMBERS} THEN {latency}::DOUBLE END AS live_latency_ms,
    {version} AS live_model_version
FROM timed
WHERE root_type = 'OBJECT' AND t_us IS NOT NULL AND t_us >= 0 AND t_us < {EVENT_TIME_MAX_US} AND {" AND ".join(clean)}
"""

    def _live_sql(self, slot: Any, jt: Any, clean: list[str], own_text: bool) -> str:
        """The live output's columns: presence and JSON text, and, where the SQL can read them
        as OutputReader does, its score and label."""
        env, out = self.cfg.envelope, self.cfg.output
        unread = "NULL::DOUBLE AS live_score, NULL::VARCHAR AS live_label"
        if not env.live_output:
            return f"false AS has_live_output, NULL::VARCHAR AS live_output, {unread}"
        live = slot(_steps(env.live_output))
        has = f"{jt(live)} IS NOT NULL"
        # the JSON text: a string value is quoted back
        text = f"CASE WHEN {jt(live)} = 'VARCHAR' THEN to_json({live})::VARCHAR WHEN {jt(live)} <> 'NULL' THEN {live} END"
        if not own_text:
            clean.append(f"({jt(live)} IS NULL OR {jt(live)} NOT IN ('OBJECT', 'ARRAY') OR {_no_repeated_keys(live)})")
        if not self.live_scores:
            return f"{has} AS has_live_output, {text} AS live_output, {unread}"
        # OutputReader: a bare number is the score; else the number at score_path. Anything
        # else (a missing or non-numeric score) is a wrong shape, which Python records.
        if out.score_path:
            s = slot([*_steps(env.live_output), out.score_path])
            score = (
                f"CASE WHEN {jt(live)} IN {_NUMBERS} THEN {live}::DOUBLE"
                f" WHEN {jt(live)} = 'OBJECT' AND {jt(s)} IN {_NUMBERS} THEN {s}::DOUBLE END"
            )
        else:
            score = f"CASE WHEN {jt(live)} IN {_NUMBERS} THEN {live}::DOUBLE END"
        label = "NULL::VARCHAR"
        if out.label_path:
            lab = slot([*_steps(env.live_output), out.label_path])
            ok = "'NULL', 'VARCHAR', 'BIGINT', 'UBIGINT', 'OBJECT', 'ARRAY'"
            clean.append(f"({jt(lab)} IS NULL OR {jt(lab)} IN ({ok}))")
            label = f"CASE WHEN {jt(lab)} IN {_TEXTLIKE} THEN {lab} END"
        if out.threshold is not None:
            label = f"coalesce({label}, CASE WHEN ({score}) >= {float(out.threshold)!r} THEN '1' ELSE '0' END)"
        # a present live output must have a readable score here (absent is the MISSING error)
        clean.append(f"(NOT ({has}) OR ({score}) IS NOT NULL)")
        return f"{has} AS has_live_output, {text} AS live_output, {score} AS live_score, {label} AS live_label"

    def decode(self, raw: RawColumns) -> Decoded:
        n = len(raw)
        if self.transcode is None:
            values: pa.Array | pa.ChunkedArray = binary_array(raw.value)
        elif sum(map(len, raw.texts)) == n:
            values = pa.chunked_array(raw.texts, pa.large_binary())
        else:  # collected without their texts
            values = self.transcode(raw.value)
        ids = pa.array(np.arange(n, dtype=np.int64))
        batch = pa.table({"i": ids, "ts": pa.array(raw.timestamp_ms, pa.int64()), "value": values})
        # DuckDB scans an Arrow table chunk by chunk: chunks of its vector size (2048 rows)
        # keep each chunk's intermediate lists in cache, where one 20k-row chunk does not,
        # and a connection with two threads can decode two chunks at once
        batch = pa.Table.from_batches(batch.to_batches(max_chunksize=_SCAN_CHUNK_ROWS))
        cur = self.con.cursor()
        try:
            cur.register("raw", batch)
            table = cur.sql(self.sql).to_arrow_table()
        except duckdb.Error as err:
            # never lose a batch to the fast path: the reference decoder takes every row
            log.warning("batch decode in DuckDB failed (%s); decoding %d messages in Python", err, n)
            return Decoded(pa.table({}), list(range(n)))
        finally:
            cur.close()
        unclean = np.ones(n, dtype=bool)
        unclean[table.column("i").to_numpy()] = False
        return Decoded(table, np.flatnonzero(unclean).tolist())
