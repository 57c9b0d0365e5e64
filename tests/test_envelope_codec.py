"""One envelope codec: the replay, the judge's reference sample and `produce` read the same
envelopes the same way (schemas/envelope.py)."""

from __future__ import annotations

from pathlib import Path

import duckdb
from helpers import write_config

HOUR_US = 3_600_000_000

# offset timestamps, a number of milliseconds, no time at all; a dict-valued segment and
# categorical, a list-valued categorical, a numeric as text; repeated keys (the last one wins
# in the JSON parsers both decoders use); one envelope without a request id (dead-lettered)
ENVELOPES = [
    b'{"request_id": "r1", "event_time": "2026-11-25T01:00:00+02:00", "segments": {"region": "eu"},'
    b' "input": {"x": 1.5, "c": {"nested": 1}}}',
    b'{"request_id": 2, "event_time": 1764032400000, "segments": {"region": {"odd": 1}}, "input": {"x": "3", "c": 7}}',
    b'{"request_id": "r3", "event_time": "2026-11-25T23:30:00-05:00", "segments": {"region": "us", "region": "apac"},'
    b' "input": {"x": 2, "x": 4, "c": "a"}}',
    b'{"request_id": "r4", "segments": {}, "input": {"x": null, "c": ["l"]}}',
    b'{"segments": {"region": "eu"}, "input": {"x": 1}}',
    b'{"request_id": "r6", "event_time": "2026-11-24T12:00:00Z", "segments": {"region": "eu"},'
    b' "input": {"x": -1, "c": "b", "deep": {"a": [1, {"b": 2}]}}}',
]


def replay(tmp_path: Path) -> Path:
    from shadowdiff.replay.job import run_replay
    from shadowdiff.schemas.config import load_config

    recording = tmp_path / "t.jsonl"
    recording.write_bytes(b"\n".join(ENVELOPES) + b"\n")
    cfg = write_config(
        tmp_path / "r.toml",
        f"""
[run]
id = "codec"
home = "{tmp_path / "runs"}"
[source]
kind = "file"
path = "{recording}"
[features]
numeric = ["x"]
categorical = ["c"]
[segments]
fields = ["region"]
hour_buckets = {{ name = "daypart" }}
[output]
score_path = "score"
[[candidates]]
name = "v2"
kind = "python"
target = "models_for_tests:logistic"
""",
    )
    run_replay(load_config(cfg))
    return recording


def test_the_replay_the_reference_sample_and_produce_decode_envelopes_alike(tmp_path):
    from shadowdiff.diff.features import load_reference_file
    from shadowdiff.diff.load import run_info
    from shadowdiff.replay.produce import ProduceStats, key_and_time

    recording = replay(tmp_path)
    (store,) = (tmp_path / "runs" / "codec").glob("store-*.duckdb")
    con = duckdb.connect(str(store), read_only=True)
    stored = con.execute(
        """SELECT request_id, epoch_us(event_time), coalesce(segments.region, '(missing)'), segments.daypart,
                  features.x, features.c
           FROM requests ORDER BY "offset" """
    ).fetchall()
    info = run_info(con)
    con.close()

    reference = load_reference_file(recording, info)
    assert reference.columns == ["seg_region", "seg_daypart", "f_x", "f_c"]
    from_reference = [(r["seg_region"], r["seg_daypart"], r["f_x"], r["f_c"]) for r in reference.to_dicts()]
    assert from_reference == [row[2:] for row in stored]

    # the old reference reader put 01:00+02:00 in hour 1 (night), str()-ed a dict categorical and
    # a dict as text; the codec reads UTC hour 23 and no category
    assert [row[0] for row in stored] == ["r1", "2", "r3", "r4", "r6"]
    r1, r2, r3, _, r6 = stored
    assert r1[1] // HOUR_US % 24 == 23
    assert r1[3] == "evening"
    assert r1[5] is None  # a dict is no category
    assert r2[4] is None
    assert r2[5] == "7"
    assert r3[2] == "apac"
    assert r3[4] == 4.0
    assert r3[1] // HOUR_US % 24 == 4
    assert r3[3] == "night"
    assert r6[3] == "afternoon"

    # produce keys each message by its request id and stamps it with the same event time (r4 has
    # none: the broker's time stands for it, in the replay as in Kafka)
    stats = ProduceStats()
    produced = [key_and_time(v, "request_id", "event_time", stats) for v in ENVELOPES]
    keyed = [p for p in produced if p[0] is not None]
    assert [k.decode() for k, _ in keyed] == [row[0] for row in stored]
    assert [stamp * 1000 if stamp is not None else None for _, stamp in keyed] == [
        None if row[0] == "r4" else row[1] for row in stored
    ]
    assert stats.unkeyed == 1
    assert stats.untimed == 2
