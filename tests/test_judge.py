"""The verdict on synthetic stores written through the store DDL (real DuckDB files)."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pytest
from helpers import judge_run, judged, judged_document, verdict_of

from shadowdiff.diff.load import open_run
from shadowdiff.diff.stats import benjamini_hochberg, holm, wilson
from shadowdiff.diff.testing import Scenario, write_synthetic_store
from shadowdiff.schemas import verdict_schema
from shadowdiff.schemas.errors import ConfigError, RunNotFound, VerdictOutsideContract
from shadowdiff.schemas.policy import Policy, load_policy, parse_policy
from shadowdiff.schemas.verdict import SCHEMA_FILE, Verdict, emitted, schema_text, undeclared, verdict_dict


def failing(doc: dict, check: str) -> set[str]:
    return {c["segment"] for c in doc["checks"] if c["check"] == check and c["status"] == "fail"}


def test_aa_run_is_go(tmp_path):
    doc = verdict_of(tmp_path, Scenario(n=100_000, segments=10, seed=5))
    assert doc["verdict"] == "go", doc["reasons"]
    assert doc["failing_segments"] == []
    assert doc["statistics"]["correction"].startswith("holm")
    assert doc["statistics"]["tests_in_family"] > 50


def test_planted_label_flips_in_a_small_segment_are_caught_and_named(tmp_path):
    weights = [3.0] + [97.0 / 29] * 29
    doc = verdict_of(tmp_path, Scenario(n=100_000, segments=30, weights=weights, flip_extra={0: 0.05}, seed=7))
    assert doc["verdict"] == "no_go"
    assert failing(doc, "label_flip") == {"seg=s00"}
    assert any("label_flip failed in seg=s00" in r for r in doc["reasons"])
    assert doc["flips"]["seg=s00"]  # directions of the flips are reported


def test_sustained_latency_regression_is_caught(tmp_path):
    doc = verdict_of(tmp_path, Scenario(n=40_000, segments=4, latency_factor_all=1.4, seed=8))
    assert doc["verdict"] == "no_go"
    lat = next(c for c in doc["checks"] if c["check"] == "latency_p95" and c["segment"] == "all")
    assert lat["status"] == "fail"
    assert lat["sustained"] is True
    assert 1.3 < lat["value"] < 1.5
    assert lat["ci"][0] < lat["value"] < lat["ci"][1]


def test_encoder_version_mismatch_in_one_segment_is_named(tmp_path):
    # the seed's case: a candidate built for encoder v5, fed v4 features in one segment
    scenario = Scenario(
        n=20_000, segments=4, seed=9, traffic_feature_version="enc-v4", candidate_feature_version="enc-v5", mismatch_segment=2
    )
    doc = verdict_of(tmp_path, scenario)
    assert doc["verdict"] == "no_go"
    assert failing(doc, "version_pairing") == {"all", "seg=s02"}
    reason = next(r for r in doc["reasons"] if "version_pairing failed in seg=s02" in r)
    assert "enc-v4" in reason
    assert "enc-v5" in reason


def test_null_spike_against_the_reference_is_caught_and_named_when_critical(tmp_path):
    # f1 turns 20 % null half-way through; the first 50 minutes are the reference
    reference = {"start": "2026-11-25T00:00:00+00:00", "end": "2026-11-25T00:50:00+00:00"}
    policy = parse_policy({"reference": reference, "checks": [{"id": "null_spike", "severity": "critical"}]})
    doc = verdict_of(tmp_path, Scenario(n=20_000, segments=4, null_spike={"f1": 0.2}, null_spike_after=0.5, seed=10), policy)
    assert doc["verdict"] == "no_go"
    spikes = [c for c in doc["checks"] if c["check"] == "null_spike" and c["status"] == "fail"]
    assert {c["feature"] for c in spikes} == {"f1"}
    assert any("null_spike[f1] failed in all" in r for r in doc["reasons"])
    # the built-in severity of a null spike is a warning: the traffic changed, not the model
    doc = verdict_of(
        tmp_path,
        Scenario(n=20_000, segments=4, null_spike={"f1": 0.2}, null_spike_after=0.5, seed=10),
        parse_policy({"reference": reference}),
        run="warn",
    )
    assert doc["verdict"] == "go", doc["reasons"]
    assert any(w.startswith("null_spike[f1] in all") for w in doc["warnings"])


def test_builtin_policy_aa_run_with_nulls_and_no_reference_is_go(tmp_path):
    # a feature 11 % null in all traffic is no spike; with no reference it cannot be assessed,
    # and a check that cannot be assessed is not a failure
    doc = verdict_of(tmp_path, Scenario(n=20_000, segments=4, null_spike={"f1": 0.11}, seed=15))
    assert doc["verdict"] == "go", doc["reasons"]
    na = [c for c in doc["checks"] if c["check"] == "null_spike"]
    assert {c["status"] for c in na} == {"n/a"}
    assert "no reference" in na[0]["detail"]


def test_a_critical_check_that_cannot_be_assessed_holds_the_verdict_pending(tmp_path):
    policy = parse_policy({"checks": [{"id": "null_spike", "severity": "critical"}]})
    doc = verdict_of(tmp_path, Scenario(n=20_000, segments=4, seed=16), policy)
    assert doc["verdict"] == "pending"
    assert any("null_spike not assessable in all" in r and "no reference" in r for r in doc["reasons"])


def test_quota_samples_count_for_their_segment_only(tmp_path):
    # segment s00 was topped up by its quota: its own verdict uses every sample, but segments
    # that mix it with other traffic ('all') use rate samples only, or s00 would weigh too much
    doc = verdict_of(tmp_path, Scenario(n=20_000, segments=4, quota_segment=0, quota_share=0.6, seed=14))
    by_seg = {s["segment"]: s["n"] for s in doc["segments"]}
    quota = doc["data"]["pairs_by_reason"]["quota"]
    assert quota > 2000
    assert by_seg["all"] == 20_000 - quota
    assert by_seg["seg=s00"] > 4000  # all of its rows, quota ones included
    assert doc["data"]["pairs"] == 20_000


def test_too_few_samples_is_pending_with_how_many_more(tmp_path):
    weights = [2.0] + [98.0 / 4] * 4  # s00: ~400 pairs, a share worth waiting for
    doc = verdict_of(tmp_path, Scenario(n=20_000, segments=5, weights=weights, seed=11), Policy(min_samples=500))
    assert doc["verdict"] == "pending"
    seg = next(s for s in doc["segments"] if s["segment"] == "seg=s00")
    assert seg["status"] == "pending"
    assert seg["needed"] == 500 - seg["n"] > 0
    assert any(f"needs {seg['needed']} more" in r for r in doc["reasons"])
    assert all(c["status"] == "pending" for c in doc["checks"] if c["segment"] == "seg=s00")


def test_values_too_rare_to_judge_are_pooled_and_do_not_hold_the_verdict(tmp_path):
    # like carrier=OO: 26 requests in a run of 20,000 (and two more rare values beside it)
    weights = [0.13, 0.2, 0.3] + [99.37 / 4] * 4
    scenario = Scenario(n=20_000, segments=7, weights=weights, seed=17)
    doc = verdict_of(tmp_path, scenario)
    assert doc["verdict"] == "go", doc["reasons"]
    by_seg = {s["segment"]: s for s in doc["segments"]}
    assert "seg=s00" not in by_seg
    assert by_seg["seg=(other)"]["rare"] is True
    assert by_seg["seg=(other)"]["status"] == "pending"  # not judged alone, and said so
    assert doc["pooled_segment_values"]["seg"]["values"] == ["s02", "s01", "s00"]
    assert doc["pooled_segment_values"]["seg"]["requests"] == by_seg["seg=(other)"]["n"]
    # without pooling (no share floor) the same run waits forever for its rare values
    doc = verdict_of(tmp_path, scenario, Policy(min_segment_share=0.0), run="unpooled")
    assert doc["verdict"] == "pending"
    assert any(r.startswith("seg=s00:") for r in doc["reasons"])


def test_rejudging_gives_the_same_verdict(tmp_path):
    write_synthetic_store(tmp_path / "r" / "store-w0.duckdb", Scenario(n=20_000, segments=5, seed=12), "r")
    digests = set()
    for _ in range(3):
        con = open_run(tmp_path, "r")
        digests.add(judged_document(con, Policy())["digest"])
        con.close()
    assert len(digests) == 1


def test_a_one_off_judge_keeps_its_pairs_in_a_scratch_file_that_goes_with_its_connection(tmp_path):
    write_synthetic_store(tmp_path / "r" / "store-w0.duckdb", Scenario(n=20_000, segments=5, seed=12), "r")
    scratch_folder = tmp_path / "r" / ".tmp"
    scratch_folder.mkdir()
    killed = scratch_folder / "judge-scratch-999999999-0.duckdb.wal"  # above any pid: a judge that is gone
    killed.write_bytes(b"log")
    con = open_run(tmp_path, "r")
    assert not killed.exists()
    doc = judged_document(con, Policy())
    (in_scratch,) = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = 'scratch' AND table_name = 'pairs_all'"
    ).fetchone()
    assert in_scratch == 1
    assert not list(scratch_folder.glob("judge-scratch-*.duckdb"))  # unlinked once attached
    con.close()
    assert not list(scratch_folder.glob("judge-scratch-*"))
    # the same verdict with the pairs in a temporary table
    con = open_run(tmp_path, "r")
    con.execute("DETACH scratch")
    assert judged_document(con, Policy())["digest"] == doc["digest"]
    con.close()


def test_verdict_follows_its_json_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    doc = verdict_of(tmp_path, Scenario(n=5_000, segments=3, seed=13))
    jsonschema.validate(json.loads(json.dumps(doc, default=str)), verdict_schema())
    # the judge emits only what the typed models name: a new field is added to the contract first
    assert undeclared(Verdict.model_validate(json.loads(json.dumps(doc, default=str)))) == []


def test_the_judge_cannot_publish_a_field_the_models_do_not_declare(tmp_path):
    write_synthetic_store(tmp_path / "r" / "store-w0.duckdb", Scenario(n=2_000, segments=2, seed=14), "r")
    published = verdict_dict(judged(tmp_path, "r"))
    assert emitted(published).digest == published["digest"]
    published["checks"][0]["confidence"] = 0.9  # a field added to the judge without the contract
    with pytest.raises(VerdictOutsideContract, match=r"checks\[0\]\.confidence"):
        emitted(published)


def test_the_published_schema_is_the_one_the_models_generate():
    # `python -m shadowdiff.schemas.verdict` regenerates it; a model changed without it fails here
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text()
    assert verdict_schema()["$id"].endswith("verdict.v1.schema.json")


def test_unknown_run_is_a_clear_error(tmp_path):
    with pytest.raises(RunNotFound, match="nope"):
        open_run(tmp_path, "nope")


def test_bad_policy_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_policy(
            {"alpha": 2, "checks": [{"id": "x", "kind": "latency", "quantile": 1.5}, {"id": "label_flip", "tolerance": "x"}]}
        )
    text = str(err.value)
    assert "alpha" in text
    assert "checks[id=x].quantile" in text
    assert "checks[id=label_flip].tolerance" in text
    p = tmp_path / "p.toml"
    p.write_text("[policy]\nmin_samples = 'many'\n")
    with pytest.raises(ConfigError, match="min_samples"):
        load_policy(p)


def test_statistics_helpers():
    lo, hi = wilson(5, 100)
    assert 0.02 < lo < 0.05 < hi < 0.12
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert benjamini_hochberg([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.04, 0.04])


def test_latency_intervals_stay_honest_when_load_comes_in_stretches(tmp_path):
    # A/A where each stretch of time slows one side or the other (a noisy neighbour): intervals
    # that treat every call as independent exclude 1.0 in 5 of these 6 runs; judged per time
    # block, every one contains it
    for seed in range(20, 26):
        doc = verdict_of(tmp_path, Scenario(n=20_000, segments=4, latency_block_sigma=0.3, seed=seed), run=f"aa{seed}")
        lat = next(c for c in doc["checks"] if c["check"] == "latency_p95" and c["segment"] == "all")
        assert lat["ci"][0] <= 1.0 <= lat["ci"][1], (seed, lat["value"], lat["ci"])
        assert lat["extra"]["estimate"].startswith(f"mean over {lat['extra']['blocks']} stretches of wall-clock time")
        assert 8 <= lat["extra"]["blocks"] <= 20
        # never a false NO_GO; under noise this heavy, 20k pairs may not yet show the candidate
        # within ×1.3 either, and then it says so
        assert doc["verdict"] != "no_go", doc["reasons"]
    # a real, sustained slowdown still stands out of that noise (x1.6 does not yet: ten
    # stretches read through Student's t with 9 degrees of freedom)
    doc = verdict_of(
        tmp_path, Scenario(n=20_000, segments=4, latency_block_sigma=0.3, latency_factor_all=1.8, seed=20), run="slow"
    )
    assert doc["verdict"] == "no_go"
    lat = next(c for c in doc["checks"] if c["check"] == "latency_p95" and c["segment"] == "all")
    assert lat["status"] == "fail"
    assert 1.3 < lat["ci"][0] < lat["value"] < lat["ci"][1]


def test_latency_blocks_follow_the_call_clock_not_event_time(tmp_path):
    # A/A with load in stretches of call time, and event times shuffled against the calls (as
    # partitions read side by side do): blocks cut by event time mix every stretch, look
    # independent and give intervals that exclude 1.0 (6 of these 8, e.g. x1.12 [1.05, 1.19]);
    # blocks in call order keep them honest
    for seed in range(30, 38):
        scenario = Scenario(n=20_000, segments=4, latency_block_sigma=0.5, calls_in_event_order=False, seed=seed)
        doc = verdict_of(tmp_path, scenario, run=f"shuffled{seed}")
        lat = next(c for c in doc["checks"] if c["check"] == "latency_p95" and c["segment"] == "all")
        assert lat["ci"][0] <= 1.0 <= lat["ci"][1], (seed, lat["value"], lat["ci"])
        assert doc["verdict"] != "no_go", doc["reasons"]
    assert doc["statistics"]["latency_axis"].startswith("blocks of the wall-clock time the calls were made")


def test_a_slow_candidate_without_baseline_latencies_is_pending_not_go(tmp_path):
    # the candidate is 3x slower, but the live envelopes carried no latency: nothing shows it
    # is within the latency margin, so the verdict cannot be GO
    doc = verdict_of(tmp_path, Scenario(n=20_000, segments=4, latency_factor_all=3.0, baseline_latency=False, seed=41))
    assert doc["verdict"] == "pending", doc["reasons"]
    assert any(r.startswith("latency_p95 not assessable in all: no baseline latencies recorded") for r in doc["reasons"])
    lat = [c for c in doc["checks"] if c["check"] == "latency_p95"]
    assert [(c["segment"], c["status"]) for c in lat] == [("all", "n/a")]


def replay_file_run(tmp_path, run_id: str, rows: list, candidates: list[str], extra: str = "") -> None:
    """Replay envelopes `rows` from a file to python candidates (models_for_tests:logistic)."""
    from helpers import jsonl, write_config

    from shadowdiff.replay.job import run_replay
    from shadowdiff.schemas.config import load_config

    models = "".join(f'[[candidates]]\nname = "{c}"\nkind = "python"\ntarget = "models_for_tests:logistic"\n' for c in candidates)
    cfg = write_config(
        tmp_path / "r.toml",
        f"""
[run]
id = "{run_id}"
home = "{tmp_path / "runs"}"
[source]
kind = "file"
path = "{jsonl(tmp_path / "t.jsonl", rows)}"
[output]
score_path = "score"
threshold = 0.5
{extra}
{models}""",
    )
    run_replay(load_config(cfg))


def test_live_answers_without_a_score_are_pending_not_a_silent_go(tmp_path):
    # the live envelopes carry an answer, but not where [output] says the score is: nothing was
    # compared, and the verdict said "all 4 checks passed"
    import random

    from helpers import envelope

    rng = random.Random(3)
    replay_file_run(tmp_path, "noscore", [envelope(i, rng) | {"output": {"other": 1}} for i in range(3000)], ["v2"])
    doc = judge_run(tmp_path / "runs", "noscore", Policy(min_samples=200))
    assert doc["verdict"] == "pending", doc["reasons"]
    missing = {c["check"] for c in doc["checks"] if c["segment"] == "all" and c["status"] == "n/a"}
    # (prediction_drift warns by default: a warning with no evidence holds nothing)
    assert {"label_flip", "score_diff", "score_shift", "latency_p95"} <= missing
    assert any(r.startswith("score_diff not assessable in all: no paired baseline and candidate scores") for r in doc["reasons"])


def test_quantiles_from_log_histograms_follow_quantile_cont_within_a_bin():
    # the kept aggregates read latency and |Δscore| quantiles from log-binned counts: each
    # within a bin's width (0.1 %) of DuckDB's exact quantile_cont, zeros exactly zero
    import duckdb
    import numpy as np

    from shadowdiff.diff.aggregate import hist_quantiles, log_bin

    rng = np.random.default_rng(7)
    fractions = [0.0005, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.9995]
    samples = {
        "lognormal latencies": rng.lognormal(np.log(30), 0.6, 20_000),
        "three values": np.array([12.0, 15.0, 40.0]),
        "one value": np.array([7.5]),
        "half zeros": np.r_[np.zeros(500), rng.uniform(0, 0.2, 500)],
    }
    con = duckdb.connect()
    for name, values in samples.items():
        con.register("v", {"x": values})
        exact = con.execute(f"SELECT quantile_cont(x, {fractions}) FROM v").fetchone()[0]
        got = con.execute(f"SELECT {log_bin('x')} AS bin, count(*) AS k FROM v GROUP BY bin").fetchnumpy()
        binned = hist_quantiles(got["bin"], got["k"], fractions)
        assert binned is not None
        for f, e, b in zip(fractions, exact, binned, strict=True):
            assert b == pytest.approx(e, rel=2e-3, abs=1e-12), f"{name}: q{f} {b} vs exact {e}"
        con.unregister("v")
    assert hist_quantiles(np.array([], dtype=np.int64), np.array([], dtype=np.int64), fractions) is None


def test_candidates_judged_together_collect_the_features_once(tmp_path, monkeypatch):
    # features describe the traffic, not a candidate's answers: judging a run's candidates
    # together collects their statistics once, and each verdict is the one judged alone
    import random
    from datetime import timedelta

    from helpers import T0, envelope

    from shadowdiff.diff import features
    from shadowdiff.diff.judge import judge_all
    from shadowdiff.schemas.policy import Reference

    rng = random.Random(5)
    features_declared = '[features]\nnumeric = ["x", "y"]\ncategorical = ["plan"]'
    replay_file_run(tmp_path, "three", [envelope(i, rng) for i in range(3000)], ["a", "b", "c"], features_declared)
    policy = Policy(min_samples=200, reference=Reference(start=T0.isoformat(), end=(T0 + timedelta(minutes=10)).isoformat()))
    collected = []
    collect = features.FeatureTables.collect

    def counted(self, *args, **kwargs):
        collected.append(1)
        return collect(self, *args, **kwargs)

    monkeypatch.setattr(features.FeatureTables, "collect", counted)
    con = open_run(tmp_path / "runs", "three")
    try:
        together = [verdict_dict(v) for v in judge_all(con, policy)]
        assert len(collected) == 1
        alone = [judged_document(con, policy, name) for name in ("a", "b", "c")]
    finally:
        con.close()
    assert len(collected) == 4
    assert [d["digest"] for d in together] == [d["digest"] for d in alone]
    drift = [c for c in together[2]["checks"] if c["check"] == "feature_drift"]
    assert {c["feature"] for c in drift} >= {"x", "y"}  # the shared statistics reached the last candidate


def test_pairs_built_a_range_at_a_time_equal_one_query(tmp_path, monkeypatch):
    # a large run's pairs are built a range of offsets at a time (the pivot of the
    # outputs would spill past a few million pairs): the pairs and the verdict must be those of
    # one query, also when request ids were stored twice (the first copy counts, run-wide)
    import duckdb

    from shadowdiff.diff import pairs
    from shadowdiff.diff.judge import judge

    store = tmp_path / "run" / "store-w0.duckdb"
    write_synthetic_store(store, Scenario(n=6_000, segments=3, seed=6), "run")
    with duckdb.connect(str(store)) as con:
        # producer retries: 60 requests stored again at later offsets, with their answers
        for table in ("requests", "outputs"):
            con.execute(
                f"""INSERT INTO {table} SELECT * REPLACE ("offset" + 1000000 AS "offset") FROM {table}
                    WHERE "offset" IN (SELECT "offset" FROM requests WHERE "offset" % 100 = 7)"""
            )
    policy = Policy(min_samples=200)

    def built(per_query: int) -> tuple[list[Any], str]:
        monkeypatch.setattr(pairs, "PAIRS_PER_QUERY", per_query)
        con = open_run(tmp_path, "run")
        try:
            doc = verdict_dict(judge(con, policy))
            rows = con.execute('SELECT * FROM pairs ORDER BY source, part, "offset"').fetchall()
            (leftover,) = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'requests_first'").fetchone()
            assert leftover == 0  # the ranges' deduplicated requests are dropped once used
            return rows, doc["digest"]
        finally:
            con.close()

    whole_rows, whole_digest = built(10**9)
    assert len(whole_rows) == 6_000  # each retried request is one pair
    assert built(700) == (whole_rows, whole_digest)


@pytest.mark.parametrize("recorded_answers", [False, True])
def test_windows_and_latency_blocks_computed_a_few_at_a_time_equal_one_query(tmp_path, monkeypatch, recorded_answers):
    # the judge of a large run computes the exact quantiles of its windows and latency blocks
    # over a few of them at a time, to stay inside its memory limit: the rows must be those of
    # one query over all pairs. `recorded_answers`: a third of the candidate's answers were
    # recorded in production (a canary's), without a call time: their event time orders them
    from shadowdiff.diff import aggregate
    from shadowdiff.diff.judge import gather_evidence
    from shadowdiff.diff.load import run_info

    store = tmp_path / "run" / "store-w0.duckdb"
    write_synthetic_store(store, Scenario(n=6_000, segments=3, seed=5), "run")
    if recorded_answers:
        with duckdb.connect(str(store)) as con:
            con.execute("""UPDATE outputs SET called_at = NULL WHERE variant = 'candidate:cand' AND "offset" % 3 = 0""")
    policy = Policy(min_samples=200)

    def aggregates(at_most: int, preserve_order: bool = True) -> tuple[dict[float, Any], dict[str, Any]]:
        monkeypatch.setattr(aggregate, "QUANTILE_PAIRS_PER_QUERY", at_most)
        con = open_run(tmp_path, "run")
        try:
            # the blocks' ranks are the row ids of a sorted table whatever the connection's setting
            con.execute(f"SET preserve_insertion_order = {str(preserve_order).lower()}")
            info = run_info(con)
            evidence = gather_evidence(con, policy, info, info.candidates[0].name)
            return evidence.windows, evidence.blocks
        finally:
            con.close()

    (whole_windows, whole_blocks), (windows, blocks) = aggregates(10**9), aggregates(700)
    assert set(whole_windows) == {3.0, 5.0}
    assert all(len(by_segment["all"]) >= 10 for by_segment in whole_windows.values())
    assert windows == whole_windows
    assert len(whole_blocks["all"]) == 94  # 6,000 pairs, 64 a block
    assert blocks == whole_blocks
    assert aggregates(700, preserve_order=False) == (whole_windows, whole_blocks)
