"""The DuckDB batch decoder against the Python reference decoder: on every row the SQL calls
clean, both give the same request and the same live score and label; every other row is left to
the reference. The common shapes must all be clean (or the fast path silently never runs)."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path
from typing import Any

import fastavro
import orjson
from helpers import POISON_TIMES

from shadowdiff.replay.columnar import BatchDecoder, RawColumns, reads_live_scores, supports
from shadowdiff.replay.formats import payload_reader
from shadowdiff.replay.messages import FileRecord
from shadowdiff.replay.models.base import OutputReader
from shadowdiff.schemas.config import RunConfig, parse_config
from shadowdiff.schemas.envelope import EVENT_TIME_US, REQUEST_ID, Decoder, Payload
from shadowdiff.schemas.records import DeadLetter

TS_MS = 1_795_000_000_000  # the Kafka timestamp, used when the envelope has no event time


def run_config(**extra: Any) -> RunConfig:
    data: dict[str, Any] = {
        "run": {"id": "c", "home": "/tmp/unused"},
        "source": {"kind": "file", "path": "/tmp/unused.jsonl", "max_message_bytes": 2000},
        "features": {"numeric": ["x", "y", "n"], "categorical": ["plan", "tier"]},
        "segments": {"fields": ["region", "device"], "allowed": {"device": ["ios", "android", "7"]}, "hour_buckets": {}},
        "candidates": [{"name": "m", "kind": "python", "target": "math:fsum"}],
        "envelope": {"live_output": "out.answer", "model_version": "meta.version"},
        "output": {"score_path": "score", "label_path": "label", "threshold": 0.5},
    }
    data.update(extra)
    return parse_config(data)


# values of every JSON type, including the ones where Python's str() and JSON's text differ
ODD = [None, "", "eu", "ünï", 7, -3, 2**63 + 5, 1.5, 1e20, True, False, [], [1, "a"], {}, {"k": 1}, "7", "1.5"]
TIMES = [
    TS_MS,
    TS_MS + 0.25,
    "2026-11-25T03:04:05Z",
    "2026-11-25T03:04:05.123456+02:00",
    "2026-11-25 23:59:59",
    "2026-11-25T03:04:05.5",
    "2026-02-30T00:00:00Z",
    "yesterday",
    None,
    True,
    -5,
    [1],
    *POISON_TIMES,
    "2026-11-25T00:00:00+25:00",  # an offset Python refuses and DuckDB would read
    "2026-11-25T00:00:00+24:00",
    "2026-11-25T00:00:00-23:59",
    "2200-01-01T00:00:00Z",  # the first instant past the range
    7_258_118_399_999,  # the last millisecond in it
]


def odd_envelope(rng: random.Random, i: int) -> Any:
    def pick() -> Any:
        return rng.choice(ODD)

    answer = rng.choice([{"score": pick(), "label": pick()}, {"score": rng.random()}, 0.7, 3, None, "x", [0.1]])
    env: dict[str, Any] = {
        "request_id": rng.choice([f"r{i}", f"r{i}", i, "", None, 1.5, {"id": 1}]),
        "event_time": rng.choice(TIMES),
        "segments": rng.choice([{"region": pick(), "device": rng.choice(["ios", "android", "web", 7, None])}, "eu", None]),
        "input": rng.choice(
            [
                {"x": pick(), "y": rng.random(), "n": rng.randint(-5, 5), "plan": pick(), "tier": pick(), "z": [{"a": None}]},
                {"x": 1.0},
                [],
                "text",
                None,
            ]
        ),
        "out": rng.choice([{"answer": answer}, {"answer": None}, {"other": 1}, "x", None]),
        "latency_ms": rng.choice([1.5, 3, None, "3", True]),
        "meta": rng.choice([{"version": pick()}, None, 5]),
        "feature_version": pick(),
    }
    for k in list(env):
        if rng.random() < 0.08:
            del env[k]
    return env


def raw_values(rng: random.Random, n: int) -> list[bytes | None]:
    values: list[bytes | None] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.02:
            # strict-JSON violations yyjson (DuckDB) accepts and orjson rejects, in good envelopes
            env = orjson.dumps(odd_envelope(rng, i)).decode()
            values.append(rng.choice([env[:-1] + ', "z": NaN}', env[:-1] + ', "z": [1e999]}', env[:-1] + ",}"]).encode())
        elif roll < 0.04:
            values.append(rng.choice([b"{not json", b"[1, 2]", b'"s"', b"", b"\xff\xfe{}", None, b'{"a": [1,]}']))
        elif roll < 0.05:
            values.append(orjson.dumps({"request_id": f"r{i}", "input": {}, "pad": "x" * 3000}))  # oversized
        elif roll < 0.06:
            # deep nesting: in the input past the limit, past what the JSON writers take, and
            # outside the input past what orjson reads (1024)
            depth = rng.choice([127, 129, 300])
            deep = "[" * depth + "1" + "]" * depth
            env = orjson.dumps(odd_envelope(rng, i) | {"request_id": f"r{i}", "event_time": TS_MS}).decode()
            values.append(
                rng.choice(
                    [
                        f'{{"request_id": "r{i}", "input": {{"x": 1, "deep": {deep}}}}}',
                        env[:-1] + ', "elsewhere": ' + "[" * 1100 + "]" * 1100 + "}",
                    ]
                ).encode()
            )
        elif roll < 0.08:
            values.append(repeated_key(rng, i))
        else:
            values.append(orjson.dumps(odd_envelope(rng, i)))
    return values


def repeated_key(rng: random.Random, i: int) -> bytes:
    """A sound envelope with one key given twice in one object (on a read path, deep in the
    input or in the live output, spelled alike or with an escape): yyjson keeps the first
    value and orjson the last."""
    env = {
        "request_id": f"r{i}",
        "event_time": TS_MS,
        "segments": {"region": "eu", "device": "ios"},
        "input": {"x": 1.5, "plan": "free", "z": [{"a": None}]},
        "out": {"answer": {"score": 0.25, "label": "a"}},
        "meta": {"version": "v1"},
    }
    text = orjson.dumps(env).decode()
    edits = [
        ('"request_id":', '"request_id":"first","request_id":'),
        ('"request_id":', '"\\u0072equest_id":"first","request_id":'),
        ('"event_time":', f'"event_time":{TS_MS - 9},"event_time":'),
        ('"region":', '"region":"us","region":'),
        ('"x":', '"x":9.5,"x":'),
        ('"a":null', '"a":1,"a":null'),
        ('"score":', '"score":0.9,"score":'),
        ('"version":', '"version":"v0","version":'),
        ('"input":', '"input":{"x":2.5},"input":'),
        ('{"answer":', '{"answer":{"score":0.1,"score":0.2},"answer":'),
    ]
    old, new = rng.choice(edits)
    return text.replace(old, new, 1).encode()


def no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"a stored JSON text repeats a key: {keys}"
    return dict(pairs)


def decode_both(
    cfg: RunConfig, values: list[bytes | None], payload: Payload | None = None
) -> tuple[list[Any], dict[int, dict[str, Any]]]:
    py = Decoder.for_run(cfg, payload)
    dec = BatchDecoder(cfg, payload)
    raw = RawColumns()
    records = [FileRecord(i, b"k", v, TS_MS + i) for i, v in enumerate(values)]
    # as the replay collects them: a partition's records at a time (their texts written then)
    for start in range(0, len(records), 700):
        raw.extend("t", 0, records[start : start + 700], dec.transcode)
    reference = [
        py.decode_record(raw.source[i], raw.part[i], raw.offset[i], raw.key[i], raw.value[i], raw.timestamp_ms[i], "rate")
        for i in range(len(values))
    ]
    try:
        decoded = dec.decode(raw)
    finally:
        dec.close()
    rows = {r["i"]: r for r in decoded.table.to_pylist()}
    assert set(rows).isdisjoint(decoded.unclean)
    assert len(rows) + len(decoded.unclean) == len(values)
    return reference, rows


def assert_same(cfg: RunConfig, ref: Any, row: dict[str, Any]) -> None:
    L = Decoder.for_run(cfg).layout
    assert row["request_id"] == ref[REQUEST_ID]
    assert row["event_time_us"] == ref[EVENT_TIME_US]
    assert row["segments"] == L.segments_of(ref)
    names = [*cfg.features.numeric, *cfg.features.categorical]
    assert tuple(row["features"][n] for n in names) == ref[L.features]
    # the stored text itself is unambiguous: parsed by any reader, it means the same
    assert json.loads(row["model_input"], object_pairs_hook=no_repeated_keys) == ref[L.model_input]
    assert row["feature_version"] == ref[L.feature_version]
    assert row["has_live_output"] == ref[L.has_live_output]
    live = None if row["live_output"] is None else json.loads(row["live_output"], object_pairs_hook=no_repeated_keys)
    assert live == ref[L.live_output]
    assert row["live_latency_ms"] == ref[L.live_latency_ms]
    assert row["live_model_version"] == ref[L.live_model_version]
    if reads_live_scores(cfg) and ref[L.has_live_output]:
        score, label, problem = OutputReader(cfg.output).read(ref[L.live_output])
        assert problem is None
        assert (row["live_score"], row["live_label"]) == (score, label)


def test_every_row_the_sql_decodes_matches_the_python_decoder():
    for cfg in (run_config(), run_config(output={"score_path": "score"}), run_config(output={"kind": "json"})):
        assert supports(cfg)
        reference, rows = decode_both(cfg, raw_values(random.Random(7), 9000))
        for i, row in rows.items():
            assert not isinstance(reference[i], DeadLetter), (i, reference[i])  # nothing rejected is taken
            assert_same(cfg, reference[i], row)
        assert len(rows) > 100  # the comparison covered many rows, not a handful


def test_a_key_given_twice_reads_as_its_last_value_on_both_paths():
    cfg = run_config()
    values: list[bytes | None] = [repeated_key(random.Random(k), k) for k in range(200)]
    reference, rows = decode_both(cfg, values)
    L = Decoder.for_run(cfg).layout
    for i, row in rows.items():
        assert_same(cfg, reference[i], row)
    decoded = [r for r in reference if not isinstance(r, DeadLetter)]
    assert len(decoded) == len(values)  # each is a sound request, read as JSON.parse would
    assert {r[L.features][0] for r in decoded} == {1.5}  # "x": 9.5 then "x": 1.5
    assert {r[REQUEST_ID] for r in decoded} == {f"r{k}" for k in range(200)}


def common_envelope(rng: random.Random, i: int) -> dict[str, Any]:
    env = {
        "request_id": rng.choice([f"r{i}", i]),
        "event_time": rng.choice([TS_MS + i, "2026-11-25T03:04:05.123+00:00", "2026-11-25T03:04:05Z"]),
        "segments": {"region": rng.choice(["eu", "us", None]), "device": rng.choice(["ios", "android", 7])},
        "input": {"x": rng.gauss(0, 1), "y": rng.randint(0, 9), "plan": rng.choice(["free", "pro"]), "tier": 3},
        "out": {"answer": rng.choice([{"score": rng.random(), "label": "a"}, {"score": 1}, 0.25])},
        "latency_ms": 4.5,
        "meta": {"version": "v3"},
        "feature_version": rng.choice(["f1", 2, None]),
    }
    if i % 3 == 0:
        del env["event_time"], env["input"]["y"], env["out"]
    return env


def test_the_common_shapes_are_all_decoded_in_sql():
    cfg = run_config()
    rng = random.Random(3)
    values: list[bytes | None] = [orjson.dumps(common_envelope(rng, i)) for i in range(2000)]
    reference, rows = decode_both(cfg, values)
    assert len(rows) == len(values)
    for i, row in rows.items():
        assert_same(cfg, reference[i], row)


def json_union(depth: int) -> list[Any]:
    """An Avro union holding any JSON value nested up to `depth` containers deep."""
    scalars: list[Any] = ["null", "boolean", "long", "double", "string"]
    if depth == 0:
        return scalars
    inner = json_union(depth - 1)
    return [*scalars, {"type": "array", "items": inner}, {"type": "map", "values": inner}]


ENVELOPE_FIELDS = ["request_id", "event_time", "segments", "input", "out", "latency_ms", "meta", "feature_version"]
AVRO_ANY = {
    "type": "record",
    "name": "Envelope",
    "fields": [{"name": f, "type": json_union(3), "default": None} for f in ENVELOPE_FIELDS],
}
NON_FINITE = [math.nan, math.inf, -math.inf]


def avro_values(rng: random.Random, n: int) -> list[bytes | None]:
    """The odd envelopes as Avro (those it can carry), some with non-finite floats (which JSON
    cannot carry), and poison: truncated, trailing bytes, foreign bytes, oversized."""
    schema = fastavro.parse_schema(AVRO_ANY)

    def encode(env: dict[str, Any]) -> bytes | None:
        buf = io.BytesIO()
        try:
            fastavro.schemaless_writer(buf, schema, env)
        except (ValueError, TypeError, OverflowError):  # past the union's depth or a long's range
            return None
        return buf.getvalue()

    values: list[bytes | None] = []
    while len(values) < n:
        i = len(values)
        env = common_envelope(rng, i) if rng.random() < 0.6 else odd_envelope(rng, i)
        roll = rng.random()
        if roll < 0.1:
            where = rng.choice(["latency_ms", "event_time", "x", "score", "version"])
            if where in ("latency_ms", "event_time"):
                env[where] = rng.choice(NON_FINITE)
            elif where == "x":
                env["input"] = {"x": rng.choice(NON_FINITE), "plan": "free"}
            elif where == "score":
                env["out"] = {"answer": {"score": rng.choice(NON_FINITE)}}
            else:
                env["meta"] = {"version": rng.choice(NON_FINITE)}
        elif roll < 0.12:
            env["input"] = {"x": 1.0, "pad": "x" * 3000}  # oversized
        value = encode(env)
        if value is None:
            continue
        roll = rng.random()
        if roll < 0.02:
            value = value[: rng.randrange(len(value))]
        elif roll < 0.04:
            value += b"\x02\x04"
        elif roll < 0.05:
            values.append(rng.choice([b"", b"\xff" * 9, None]))
            continue
        values.append(value)
    return values


def test_avro_rows_the_sql_decodes_match_the_avro_reference(tmp_path: Path):
    schema_file = tmp_path / "envelope.avsc"
    schema_file.write_text(json.dumps(AVRO_ANY))
    cfg = run_config(
        envelope={"live_output": "out.answer", "model_version": "meta.version", "format": "avro", "schema_file": schema_file}
    )
    assert supports(cfg)
    payload = payload_reader(cfg.envelope)
    values = avro_values(random.Random(11), 6000)
    reference, rows = decode_both(cfg, values, payload)
    for i, row in rows.items():
        assert not isinstance(reference[i], DeadLetter), (i, reference[i])
        assert_same(cfg, reference[i], row)
    assert len(rows) > 2000
    # the poison was there and became dead letters on the reference path alone
    assert sum(isinstance(r, DeadLetter) for r in reference) > 300
    # a non-finite float, which orjson writes as null, is never read in SQL
    non_finite = {i for i, r in enumerate(reference) if not isinstance(r, DeadLetter) and holds_non_finite(r)}
    assert len(non_finite) > 50
    assert non_finite.isdisjoint(rows)


def holds_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, list | tuple) and any(map(holds_non_finite, value))


def test_paths_without_a_json_path_twin_keep_the_python_decoder():
    assert not supports(run_config(envelope={"input": "inputs.0"}))  # a list index
    assert not supports(run_config(envelope={"request_id": ""}))
    assert not supports(run_config(features={"numeric": ['we"ird']}))
    assert supports(run_config(envelope={"segments": ""}))  # segments at the top level
    assert not reads_live_scores(run_config(output={"score_path": "a.b"}))


def test_a_failing_batch_decode_hands_every_row_to_the_python_decoder():
    cfg = run_config()
    raw = RawColumns()
    raw.extend("t", 0, [FileRecord(i, b"k", orjson.dumps({"request_id": f"r{i}", "input": {}}), TS_MS) for i in range(50)])
    dec = BatchDecoder(cfg)
    dec.con.execute("SET memory_limit = '1MB'")
    dec.sql = "SELECT * FROM range(100000000) ORDER BY random()"  # cannot fit: an OutOfMemory error
    try:
        decoded = dec.decode(raw)
    finally:
        dec.close()
    assert decoded.table.num_rows == 0
    assert decoded.unclean == list(range(50))
