"""Structured and ranking outputs through the real pipeline (file source, in-process models,
DuckDB), judged with the field-level and top-k comparators."""

from __future__ import annotations

import random
from pathlib import Path

from helpers import envelope, jsonl, judge_run, write_config

from shadowdiff.replay.job import run_replay
from shadowdiff.schemas.config import load_config
from shadowdiff.schemas.policy import parse_policy


def run(tmp: Path, kind: str) -> dict:
    rng = random.Random(5)
    jsonl(tmp / "traffic.jsonl", [envelope(i, rng) for i in range(3000)])
    cfg = write_config(
        tmp / f"{kind}.toml",
        f"""
[run]
id = "{kind}"
home = "runs"
[source]
kind = "file"
path = "traffic.jsonl"
[features]
numeric = ["x", "y"]
categorical = ["plan"]
[segments]
fields = ["region"]
[baseline]
kind = "model"
repeat = true
model = {{ name = "b", kind = "python", target = "models_for_tests:structured_baseline" }}
[output]
kind = "{kind}"
score_path = "{"ranking" if kind == "ranking" else "score"}"
probabilities_path = "probs"
ignore_fields = ["meta.trace"]
[[candidates]]
name = "c"
kind = "python"
target = "models_for_tests:structured_candidate"
""",
    )
    run_replay(load_config(cfg))
    policy = parse_policy(
        {
            "min_samples": 100,
            "checks": [
                {"id": "field_diff", "kind": "field_diff", "threshold": 0.05},
                {"id": "ranking_overlap", "kind": "ranking_overlap", "threshold": 0.8},
                {"id": "probability_distance", "kind": "probability_distance", "threshold": 0.01},
            ],
        }
    )
    return judge_run(tmp / "runs", kind, policy)


def test_json_outputs_get_field_level_diffs_above_the_noise(tmp_path):
    doc = run(tmp_path, "json")
    fd = next(c for c in doc["checks"] if c["check"] == "field_diff" and c["segment"] == "all")
    assert fd["status"] == "fail"
    # a third gained a field, half (plan 'pro') got another ranking: 1/3 + 1/2 - 1/6; noise is zero
    assert 0.6 < fd["value"] < 0.74
    top = doc["comparisons"]["all"]["top_field_diffs"]
    assert "meta.extra (extra)" in top
    assert "ranking[0] (changed)" in top
    assert not any(k.startswith("meta.trace") for k in top)  # differs every time, but ignored
    assert doc["comparisons"]["all"]["noise_share_with_field_diffs"] == 0.0
    prob = next(c for c in doc["checks"] if c["check"] == "probability_distance" and c["segment"] == "all")
    assert prob["status"] == "pass"  # same probabilities


def test_ranking_outputs_get_overlap_at_k_per_segment(tmp_path):
    doc = run(tmp_path, "ranking")
    overlap = {c["segment"]: c for c in doc["checks"] if c["check"] == "ranking_overlap"}
    # half of the top-10 replaced for the 'pro' plan (about half the traffic): mean ~0.75
    assert overlap["all"]["status"] == "fail"
    assert 0.65 < overlap["all"]["value"] < 0.85
    assert doc["comparisons"]["all"]["mean_rank_correlation"] is not None
