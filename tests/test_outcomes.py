"""Outcomes: the codec, the outcome worker's exactly-once store (recordings here, a live Kafka
topic with SIGKILLs in test_outcomes_kafka.py), the join to the pairs, and the outcome checks'
decisions."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from helpers import envelope, jsonl, outcome_run_config

from shadowdiff.cli.wiring import judge_and_publish
from shadowdiff.diff import checks as ck
from shadowdiff.diff.decide import Family, decide
from shadowdiff.diff.load import open_run
from shadowdiff.diff.outcome_checks import outcome_check, say_better
from shadowdiff.replay.job import run_replay
from shadowdiff.replay.outcomes import run_outcomes
from shadowdiff.schemas.config import OutcomeSpec, load_config, parse_config
from shadowdiff.schemas.errors import ConfigError
from shadowdiff.schemas.outcomes import OutcomeCodec, OutcomeRow
from shadowdiff.schemas.policy import Check, Policy, parse_policy
from shadowdiff.schemas.records import DeadLetter

OBSERVED = "2026-12-01T00:00:00Z"  # after every request of `envelope` traffic


def _spec(**fields: Any) -> OutcomeSpec:
    return OutcomeSpec.model_validate({"source": {"kind": "file", "path": "o.jsonl"}, **fields})


def _decode(spec: OutcomeSpec, value: bytes | None) -> OutcomeRow | DeadLetter:
    return OutcomeCodec(spec).decode("o.jsonl", 0, 7, b"k", value, 1_700_000_000_000)


def test_the_codec_reads_each_outcome_and_dead_letters_what_it_cannot() -> None:
    spec = _spec(label="label", value="truth.hours")
    row = _decode(spec, b'{"request_id": 42, "label": true, "truth": {"hours": 2.5}, "observed_at": "2026-12-01T01:00:00+01:00"}')
    assert row == OutcomeRow("o.jsonl", 0, 7, "42", "True", 2.5, 1_796_083_200_000_000)
    # no observed_at: the record's timestamp
    assert _decode(spec, b'{"request_id": "a", "label": "x"}').observed_us == 1_700_000_000_000_000  # type: ignore[union-attr]
    poison = {
        None: "malformed_json",
        b"{nope": "malformed_json",
        b"[1, 2]": "not_an_object",
        b'{"label": "x"}': "missing_field",
        b'{"request_id": 1.5, "label": "x"}': "wrong_type",
        b'{"request_id": "a"}': "missing_field",
        b'{"request_id": "a", "label": {"x": 1}}': "wrong_type",
        b'{"request_id": "a", "truth": {"hours": "2"}}': "wrong_type",
        b'{"request_id": "a", "truth": {"hours": 1e999}}': "malformed_json",  # JSON has no infinity
        b'{"request_id": "a", "label": "x", "observed_at": "yesterday"}': "wrong_type",
        b'{"request_id": "a", "label": "x", "observed_at": 1e300}': "out_of_range",
        b"x" * (2 << 20): "oversized",
    }
    for value, reason in poison.items():
        dead = _decode(spec, value)
        assert isinstance(dead, DeadLetter), value
        assert (dead.reason, dead.offset, dead.raw_key) == (reason, 7, b"k"), (value, dead.detail)
    # a binary format can carry a NaN: not an outcome
    nan = OutcomeCodec(spec, lambda _: {"request_id": "a", "truth": {"hours": math.nan}}).decode("t", 0, 1, None, b"\0", 0)
    assert isinstance(nan, DeadLetter)
    assert nan.reason == "out_of_range"


def test_the_config_needs_a_label_or_a_value_and_a_format_its_schema() -> None:
    base = {
        "run": {"id": "r"},
        "source": {"kind": "file", "path": "t.jsonl"},
        "candidates": [{"name": "c", "kind": "python", "target": "m:f"}],
    }
    with pytest.raises(ConfigError, match=r"outcomes: .*`label`.*`value`"):
        parse_config({**base, "outcomes": {"source": {"kind": "file", "path": "o.jsonl"}}})
    with pytest.raises(ConfigError, match="format 'avro' needs one of schema_registry"):
        parse_config({**base, "outcomes": {"source": {"kind": "file", "path": "o.jsonl"}, "label": "y", "format": "avro"}})
    cfg = parse_config({**base, "outcomes": {"source": {"kind": "file", "path": "o.jsonl"}, "value": "y"}})
    assert cfg.outcomes is not None
    assert cfg.outcomes.value == "y"


def _traffic(tmp: Path, n: int = 3000, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    envs = [envelope(i, rng) for i in range(n)]
    jsonl(tmp / "t.jsonl", envs)
    return envs


def _truth(envs: list[dict[str, Any]], seed: int = 2) -> list[dict[str, Any]]:
    """A label per request, right for the logistic model most of the time."""
    rng = random.Random(seed)
    return [
        {"request_id": e["request_id"], "label": "1" if e["input"]["x"] + rng.gauss(0, 1) > 0 else "0", "observed_at": OBSERVED}
        for e in envs
    ]


def _config(tmp: Path, model: str = "logistic") -> Path:
    return outcome_run_config(tmp, 'kind = "file"\npath = "o.jsonl"', model)


POLICY = parse_policy(
    {
        "min_samples": 100,
        "checks": [
            {"id": "accuracy", "kind": "outcome_error"},
            {"id": "brier", "kind": "outcome_brier"},
            {"id": "log_loss", "kind": "outcome_log_loss"},
        ],
    }
)


def _judge(tmp: Path) -> dict[str, Any]:
    con = open_run(tmp / "runs", "r")
    try:
        return judge_and_publish(con, tmp / "runs", "r", POLICY, final=True)[0].model_dump()
    finally:
        con.close()


def _write_outcomes(path: Path, records: list[Any], mode: str = "w") -> None:
    with path.open(mode, encoding="utf-8") as fh:
        fh.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def test_outcomes_join_their_pairs_once_whatever_arrives_first(tmp_path: Path) -> None:
    envs = _traffic(tmp_path)
    truth = _truth(envs)
    resolved = truth[:2000]
    again = [dict(o) for o in resolved[:50]]  # delivered twice
    for o in again[:10]:  # ... and 10 of those disagree with the first delivery
        o["label"] = "0" if o["label"] == "1" else "1"
        o["observed_at"] = "2026-12-02T00:00:00Z"
    unknown = [{"request_id": f"nobody-{i}", "label": "1", "observed_at": OBSERVED} for i in range(20)]
    cfg = load_config(_config(tmp_path))
    # outcomes before their pairs: half of them stored before the replay ran
    _write_outcomes(tmp_path / "o.jsonl", [*resolved[:1000], "{not json", "[1]"])
    first = run_outcomes(cfg)
    assert (first.stored, first.complete, dict(first.dead_letters)) == (1000, True, {"malformed_json": 1, "not_an_object": 1})
    run_replay(cfg)
    # ... the rest after, with the duplicates and unknown ids; a restart re-reads nothing
    _write_outcomes(tmp_path / "o.jsonl", [*resolved[1000:], *again, *unknown, '{"label": "1"}'], mode="a")
    assert run_outcomes(cfg).stored == 1000 + 50 + 20
    assert run_outcomes(cfg).stored == 0
    doc = _judge(tmp_path)
    out = doc["outcomes"]
    assert {
        k: out[k] for k in ("records", "pairs", "with_outcome", "waiting", "duplicates", "conflicting", "unknown_requests")
    } == {
        "records": 2070,
        "pairs": 3000,
        "with_outcome": 2000,
        "waiting": 1000,
        "duplicates": 50,
        "conflicting": 10,
        "unknown_requests": 20,
    }
    assert out["dead_letters"] == {"malformed_json": 1, "not_an_object": 1, "missing_field": 1}
    assert out["complete"]
    assert out["workers"] == ["w0"]
    delays = [out["delay"][k] for k in ("p50_s", "p90_s", "p99_s")]
    assert all(d is not None and d > 0 for d in delays)
    assert delays == sorted(delays)
    # the first delivery counts: the accuracy is the truth's, computed here independently
    whole = next(c for c in doc["checks"] if c["check"] == "accuracy" and c["segment"] == "all")
    scores = {e["request_id"]: 1 / (1 + math.exp(-e["input"]["x"])) for e in envs}
    wrong = sum(("1" if scores[o["request_id"]] >= 0.5 else "0") != o["label"] for o in resolved)
    assert whole["extra"]["candidate_error_rate"] == pytest.approx(wrong / 2000)
    assert whole["n"] == 2000
    assert whole["value"] == 0.0


def _stats(n: int, c_only: int, b_only: int, both: int = 0, n_pairs: int | None = None) -> dict[str, Any]:
    return {
        "n_pairs": n_pairs or n,
        "n_out": n,
        "n_cls": n,
        "c_only_wrong": c_only,
        "b_only_wrong": b_only,
        "b_wrong": both + b_only,
        "c_wrong": both + c_only,
    }


CHECK = Check.model_validate({"id": "accuracy", "kind": "outcome_error"})


def _decided(per_segment: dict[str, dict[str, Any]], policy: Policy | None = None) -> dict[str, ck.CheckResult]:
    policy = policy or Policy(checks=[CHECK])
    results = [r for seg, st in per_segment.items() if (r := outcome_check(CHECK, seg, st, 0.01, "critical", 200))]
    decide(results, policy, per_segment["all"]["n_pairs"], Family.declared([(), ("region",)], policy, ["accuracy"], 1))
    say_better(results)
    return {r.segment: r for r in results}


def test_a_segment_worse_on_outcomes_fails_and_is_held_to_the_runs_margin() -> None:
    # 2 points worse in one segment: 600 vs 200 discordant of 20,000 (est +2 %); the run overall is within
    got = _decided({"all": _stats(200_000, 6_200, 5_800), "region=apac": _stats(20_000, 600, 200)})
    assert got["all"].status == ck.PASS
    assert got["region=apac"].status == ck.FAIL
    # within the segment margin of the pair checks (3 x 1 point) it would pass: outcome checks
    # hold a segment to the run's threshold
    assert got["region=apac"].within_threshold == pytest.approx(0.01)


def test_outcomes_too_few_or_missing_wait_and_say_how_many() -> None:
    got = _decided({"all": _stats(150, 5, 5, n_pairs=9_000)})
    assert got["all"].status == ck.UNDECIDED
    assert "150 of 200 outcomes needed (150 of 9000 pairs have their outcome so far)" in got["all"].detail
    got = _decided({"all": _stats(5_000, 150, 150)})
    assert got["all"].status == ck.UNDECIDED
    assert "outcomes in the run would show it" in got["all"].detail
    assert got["all"].extra["outcomes_needed"] > 5_000
    # outcomes the check cannot use (no labels on either side) are not a pass
    unusable = {**_stats(0, 0, 0, n_pairs=900), "n_out": 900}
    r = outcome_check(CHECK, "all", unusable, 0.01, "critical", 200)
    assert r is not None
    assert r.status == ck.NA
    assert "none with baseline and candidate labels" in r.detail


def test_a_better_candidate_is_said_better_with_its_interval() -> None:
    got = _decided({"all": _stats(50_000, 1_000, 2_000)})
    r = got["all"]
    assert r.status == ck.PASS
    assert r.extra["candidate_better"]
    assert r.ci is not None
    assert r.ci[1] < 0 < -r.ci[0]
    assert f"interval [{r.ci[0]:+.4g}, {r.ci[1]:+.4g}]" in r.detail
    equal = _decided({"all": _stats(50_000, 1_500, 1_500)})["all"]
    assert "candidate_better" not in equal.extra


def test_the_report_shows_outcomes_calibration_and_who_was_right(tmp_path: Path) -> None:
    from shadowdiff.reports.html import write_report

    envs = _traffic(tmp_path, n=2000)
    _write_outcomes(tmp_path / "o.jsonl", _truth(envs))
    cfg = load_config(_config(tmp_path, "shifted_logistic"))
    run_replay(cfg)
    run_outcomes(cfg)
    doc = _judge(tmp_path)
    shown = doc["outcomes"]["discordant"]
    assert len(shown) == 10
    for d in shown:  # each says who the outcome proves right
        assert d["baseline"]["label"] != d["candidate"]["label"]
        assert d["right"] == ("candidate" if d["candidate"]["label"] == d["outcome"]["label"] else "baseline")
    from shadowdiff.schemas.verdict import read_verdict

    verdict = read_verdict((tmp_path / "runs" / "r" / "verdict-c.json").read_bytes())
    html = write_report(tmp_path / "runs", verdict, tmp_path / "report.html", with_evidently=False).read_text(encoding="utf-8")
    assert 'id="outcomes"' in html
    assert html.count("Calibration in ") >= 2  # all, and the segments
    assert 'aria-label="Calibration in all (x: mean score, y: observed rate)"' in html
    assert 'id="discordant"' in html
    assert shown[0]["request_id"] in html


def test_an_outcome_export_published_twice_counts_once(tmp_path: Path) -> None:
    import shutil

    from shadowdiff.schemas.layout import RunLayout

    envs = _traffic(tmp_path, n=600)
    _write_outcomes(tmp_path / "o.jsonl", _truth(envs)[:400])
    cfg = load_config(_config(tmp_path))
    run_replay(cfg)
    run_outcomes(cfg)
    before = _judge(tmp_path)["outcomes"]
    # a worker that crashed after publishing its export and before recording it publishes the
    # same rows again under the next number
    folders = RunLayout(tmp_path / "runs", "r").outcome_export_folders()
    shutil.copytree(folders[0], folders[0].parent / f"{len(folders) + 1:08d}")
    after = _judge(tmp_path)["outcomes"]
    assert (after["records"], after["with_outcome"], after["duplicates"]) == (400, 400, 0)
    assert after == before
    # the watching judge's cache reads both folders in one look, and keeps one copy too

    from shadowdiff.diff.exports import open_cache

    looked = _judged_with_outcomes(open_cache(tmp_path / "runs", "r"), RunLayout(tmp_path / "runs", "r"), POLICY)
    assert looked["outcomes"] == after


def test_a_run_waiting_for_outcomes_says_how_far_they_have_come(tmp_path: Path) -> None:
    envs = _traffic(tmp_path, n=1500)
    _write_outcomes(tmp_path / "o.jsonl", _truth(envs)[:150])  # fewer than min_outcomes (200)
    cfg = load_config(_config(tmp_path))
    run_replay(cfg)
    run_outcomes(cfg)
    doc = _judge(tmp_path)
    assert doc["verdict"] == "pending"
    assert any("accuracy in all: 150 usable outcomes" in r and "150 of 200 outcomes needed" in r for r in doc["reasons"])
    assert any(
        r.startswith("outcomes: 150 of 1,500 pairs resolved (90% still waiting); they arrive a median ") for r in doc["reasons"]
    )


def _judged_with_outcomes(con: Any, layout: Any, policy: Policy) -> dict[str, Any]:
    """The verdict document of the run `con` reads, its outcomes read from `layout`; closes `con`."""
    from helpers import judged_document

    from shadowdiff.diff.outcomes import load_outcomes

    try:
        load_outcomes(con, layout)
        return judged_document(con, policy)
    finally:
        con.close()


def test_outcomes_kept_between_looks_equal_a_full_rejudge_after_every_look(tmp_path: Path, caplog: Any) -> None:
    import logging

    from shadowdiff.diff.exports import open_cache, open_exports
    from shadowdiff.schemas.layout import RunLayout

    envs = _traffic(tmp_path, n=3000)
    truth = _truth(envs)
    cfg = load_config(_config(tmp_path, "shifted_logistic"))
    layout = RunLayout(tmp_path / "runs", "r")
    policy = POLICY.model_copy(update={"examples": 3})  # 12 kept: the looks take some out

    def conflicting(o: dict[str, Any]) -> dict[str, Any]:
        return {**o, "label": "0" if o["label"] == "1" else "1", "observed_at": "2026-12-02T00:00:00Z"}

    steps = [
        # pairs of the first 1,000 requests; outcomes of 1,500 (500 before their pairs)
        lambda: (run_replay(cfg, max_batches=2), _write_outcomes(tmp_path / "o.jsonl", truth[:1500])),
        # the rest of the pairs, no new outcome
        lambda: run_replay(cfg),
        # more outcomes, some twice and disagreeing, some for no stored request
        lambda: _write_outcomes(
            tmp_path / "o.jsonl",
            [*truth[1500:2500], *[conflicting(o) for o in truth[100:160]], {"request_id": "nobody", "label": "1"}],
            mode="a",
        ),
        lambda: _write_outcomes(tmp_path / "o.jsonl", truth[2500:], mode="a"),
    ]
    caplog.set_level(logging.DEBUG, logger="shadowdiff.diff.outcome_aggregates")
    for look, step in enumerate(steps, 1):
        step()
        run_outcomes(cfg)
        caplog.clear()
        looked = _judged_with_outcomes(open_cache(layout.home, "r"), layout, policy)
        whole = _judged_with_outcomes(open_exports(layout.home, "r"), layout, policy)
        assert looked["outcomes"] == whole["outcomes"], f"look {look}"
        outcome_checks = [c for c in whole["checks"] if c["kind"].startswith("outcome_")]
        assert [c for c in looked["checks"] if c["kind"].startswith("outcome_")] == outcome_checks, f"look {look}"
        assert looked["digest"] == whole["digest"], f"look {look}"
        how = [r.getMessage().split(" at ")[0].split(" from ")[0] for r in caplog.records]
        assert how == (["outcomes: built whole"] if look == 1 else ["outcomes: updated"]), f"look {look}: {how}"
    assert whole["outcomes"]["with_outcome"] == 3000
    # a judge on the cache that did not read the outcomes (a bare look) sees none, and leaves
    # the kept outcome parts as they were for the next look that does
    from helpers import judged_document

    con = open_cache(layout.home, "r")
    try:
        bare = judged_document(con, policy)
    finally:
        con.close()
    assert bare["outcomes"]["records"] == 0
    assert _judged_with_outcomes(open_cache(layout.home, "r"), layout, policy)["digest"] == whole["digest"]
    assert (whole["outcomes"]["duplicates"], whole["outcomes"]["conflicting"], whole["outcomes"]["unknown_requests"]) == (
        60,
        60,
        1,
    )
    assert len(whole["outcomes"]["discordant"]) == 3


def test_outcomes_reach_a_judge_on_another_machine_through_s3(tmp_path: Path, s3_endpoint: str) -> None:
    import boto3

    from shadowdiff.replay.objectstore import SharedRun
    from shadowdiff.schemas.config import SharedSpec
    from shadowdiff.schemas.layout import RunLayout

    bucket = "outcome-runs"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    envs = _traffic(tmp_path, n=500)
    _write_outcomes(tmp_path / "o.jsonl", _truth(envs)[:300])
    text = _config(tmp_path).read_text(encoding="utf-8")
    shared = f'shared = {{ url = "s3://{bucket}/shadow", endpoint_url = "{s3_endpoint}" }}\n'
    (tmp_path / "r.toml").write_text(text.replace("[source]", shared + "[source]", 1), encoding="utf-8")
    cfg = load_config(tmp_path / "r.toml")
    run_replay(cfg)
    run_outcomes(cfg)
    judge_home = tmp_path / "judge"
    SharedRun(SharedSpec(url=f"s3://{bucket}/shadow", endpoint_url=s3_endpoint), "r").pull(RunLayout(judge_home, "r"))
    pulled = RunLayout(judge_home, "r").outcome_export_folders()
    assert len(pulled) == 1
    con = open_run(judge_home, "r", source="exports")
    try:
        doc = judge_and_publish(con, judge_home, "r", POLICY, final=True)[0].model_dump()
    finally:
        con.close()
    assert (doc["outcomes"]["records"], doc["outcomes"]["with_outcome"], doc["outcomes"]["workers"]) == (300, 300, ["w0"])
