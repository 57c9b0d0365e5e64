"""Thousands of hostile messages through the whole run: both decoders, the store, the judge and
the report. Every JSON type at every path, extreme numbers, nesting to 1,100 levels, bad UTF-8,
huge strings, script payloads and poison event times: no exception escapes, every message is
stored or dead-lettered, and the DuckDB and Python decode paths store the same requests."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import duckdb
import orjson
from helpers import POISON_TIMES, write_config
from test_columnar import raw_values

from shadowdiff.diff.judge import judge
from shadowdiff.diff.load import open_run
from shadowdiff.replay.job import run_replay
from shadowdiff.reports.html import write_report
from shadowdiff.schemas.config import load_config
from shadowdiff.schemas.policy import Policy

SCRIPT = "</script><script>alert(1)</script>"


def hostile_lines(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    lines: list[bytes] = []
    for i, raw in enumerate(raw_values(rng, n)):
        if raw is None or not raw.strip():
            continue  # a recording's blank line is not a message
        roll = rng.random()
        if roll < 0.1 and raw.startswith(b"{"):
            try:
                env = orjson.loads(raw)
            except orjson.JSONDecodeError:
                lines.append(raw)
                continue
            if isinstance(env, dict):
                env["request_id"] = rng.choice([f"{SCRIPT}{i}", f"r{i}", "\u202e" + "x" * 5000])
                env["event_time"] = rng.choice([*POISON_TIMES, "2026-11-25T03:04:05Z"])
                if isinstance(env.get("input"), dict):
                    env["input"]["deep"] = "__DEEP__"
                    env["input"]["plan"] = SCRIPT
                    env["input"]["x"] = rng.choice([1e308, -1e308, 2**63, -(2**63), 5e-324, 0.0])
                if isinstance(env.get("segments"), dict):
                    env["segments"]["region"] = rng.choice([SCRIPT, "eu", "\x00", "ü" * 300])
                # nested as JSON text: past 255 levels no JSON writer would make it
                depth = rng.choice([5, 50, 127, 128, 300, 1100])
                raw = orjson.dumps(env).replace(b'"__DEEP__"', b"[" * depth + b"1" + b"]" * depth)
        lines.append(raw.replace(b"\n", b" "))
    return lines


def config(tmp: Path, run: str, recording: Path, key: str) -> Path:
    return write_config(
        tmp / f"{run}.toml",
        f"""
[run]
id = "{run}"
home = "{tmp / "runs"}"
batch_size = 500
[source]
kind = "file"
path = "{recording}"
max_message_bytes = 2000
[envelope]
live_output = "out.answer"
model_version = "meta.version"
[features]
numeric = ["x", "y", "n"]
categorical = ["plan", "tier"]
[segments]
fields = ["region", "device"]
allowed = {{ device = ["ios", "android", "7"] }}
hour_buckets = {{}}
[sampling]
rate = 1.0
key = "{key}"
[output]
score_path = "score"
label_path = "label"
threshold = 0.5
[[candidates]]
name = "c"
kind = "python"
target = "models_for_tests:logistic"
""",
    )


def test_hostile_messages_are_stored_or_dead_lettered_the_same_way_by_both_paths_and_judged(tmp_path):
    lines = hostile_lines(4000, seed=29)
    recording = tmp_path / "hostile.jsonl"
    recording.write_bytes(b"\n".join(lines) + b"\n")
    stored: dict[str, tuple[set[Any], dict[str, int]]] = {}
    for run, key in (("python-path", "request_id"), ("duckdb-path", "kafka_key")):
        stats = run_replay(load_config(config(tmp_path, run, recording, key)))
        assert stats.consumed == len(lines)
        with duckdb.connect(str(tmp_path / "runs" / run / "store-w0.duckdb"), read_only=True) as con:
            offsets = {o for (o,) in con.execute('SELECT "offset" FROM requests').fetchall()}
            dead = dict(con.execute("SELECT reason, count(*) FROM dead_letters GROUP BY 1").fetchall())
            (dead_offsets,) = con.execute('SELECT count(DISTINCT "offset") FROM dead_letters').fetchone()
        # every message is stored or dead-lettered, never both, never neither
        assert len(offsets) + dead_offsets == len(lines), run
        stored[run] = (offsets, dead)
        assert dead.get("out_of_range", 0) > 0, dead  # the poison times were met
        # and the run judges and reports
        con = open_run(tmp_path / "runs", run)
        try:
            doc = judge(con, Policy(min_samples=50))
            html = write_report(tmp_path / "runs", doc, tmp_path / f"{run}.html", con=con).read_text(encoding="utf-8")
        finally:
            con.close()
        assert doc.verdict in ("go", "no_go", "pending")
        assert SCRIPT not in html
    assert stored["python-path"] == stored["duckdb-path"]


def test_hostile_avro_payloads_are_bad_messages_never_crashes(tmp_path):
    import io

    from fastavro import parse_schema, schemaless_writer
    from registry import assert_never_crashes

    from shadowdiff.replay.formats import payload_reader
    from shadowdiff.schemas.config import EnvelopeMapping

    schema = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "request_id", "type": "string"},
            {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "input", "type": {"type": "map", "values": ["null", "double", "string", "bytes"]}},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
        ],
    }
    path = tmp_path / "r.avsc"
    path.write_text(orjson.dumps(schema).decode(), encoding="utf-8")
    read = payload_reader(EnvelopeMapping(format="avro", schema_file=path))
    assert read is not None
    buf = io.BytesIO()
    schemaless_writer(
        buf,
        parse_schema(schema),
        {"request_id": "r1", "event_time": 1764028800000, "input": {"x": 1.5, "b": b"\x00"}, "tags": ["a"]},
    )
    valid = buf.getvalue()
    assert read(valid)["event_time"].startswith("2025-11-25T00:00:00")  # logical types as a JSON envelope carries them

    assert_never_crashes(read, valid)
