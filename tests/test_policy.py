"""Policies say what users mean: they extend the built-in checks, each kind has its own default
severity and threshold, and score differences can be bounded in absolute terms."""

from __future__ import annotations

import pytest
from helpers import verdict_of

from shadowdiff.diff.testing import Scenario
from shadowdiff.schemas.errors import ConfigError
from shadowdiff.schemas.policy import KINDS, Policy, default_checks, load_policy, parse_policy


def ids(policy: Policy) -> list[str]:
    return [c.id for c in policy.checks]


def test_a_policy_file_extends_the_builtin_checks_overrides_by_id_and_removes_with_enabled_false(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(
        """
[policy]
min_samples = 300

[[checks]]
id = "label_flip"
threshold = 0.03            # only the threshold changes; kind and severity stay built-in

[[checks]]
id = "feature_drift"
enabled = false

[[checks]]
id = "p95_abs_diff"
kind = "abs_diff_quantile"
quantile = 0.95
threshold = 0.1
""",
        encoding="utf-8",
    )
    policy = load_policy(path)
    builtin = [c.id for c in default_checks()]
    assert ids(policy) == [i for i in builtin if i != "feature_drift"] + ["p95_abs_diff"]
    flip = policy.check("label_flip")
    assert flip is not None
    assert (flip.kind, flip.threshold, flip.severity) == ("label_flip", 0.03, "critical")
    assert policy.check("latency_p95") == next(c for c in default_checks() if c.id == "latency_p95")
    # the resolved policy reads back as itself (it is stored with verdicts)
    assert parse_policy(policy.model_dump()) == policy


def test_inherit_defaults_false_replaces_every_builtin_check():
    policy = parse_policy({"inherit_defaults": False, "checks": [{"id": "flips", "kind": "label_flip"}]})
    assert ids(policy) == ["flips"]
    # and an empty list then means no checks at all
    assert ids(parse_policy({"inherit_defaults": False, "checks": []})) == []
    # a new kind under a built-in id replaces that check whole
    policy = parse_policy({"checks": [{"id": "score_shift", "kind": "abs_score_diff"}]})
    c = policy.check("score_shift")
    assert c is not None
    assert (c.kind, c.threshold) == ("abs_score_diff", KINDS["abs_score_diff"].threshold)


def test_each_kind_has_its_own_default_severity_and_threshold():
    policy = parse_policy(
        {
            "inherit_defaults": False,
            "checks": [{"id": k, "kind": k} for k in ("feature_drift", "null_spike", "out_of_range", "new_category")]
            + [{"id": k, "kind": k} for k in ("label_flip", "latency", "error_rate", "abs_diff_quantile")],
        }
    )
    sev = {c.id: c.severity for c in policy.checks}
    assert sev == {
        "feature_drift": "warning",
        "null_spike": "warning",
        "out_of_range": "warning",
        "new_category": "warning",
        "label_flip": "critical",
        "latency": "critical",
        "error_rate": "critical",
        "abs_diff_quantile": "critical",
    }
    assert all(c.threshold == KINDS[c.kind].threshold for c in policy.checks)
    # asked for explicitly, a drift check is critical
    c = parse_policy({"checks": [{"id": "feature_drift", "severity": "critical"}]}).check("feature_drift")
    assert c is not None
    assert c.severity == "critical"


def test_a_check_with_an_unknown_kind_or_no_kind_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"checks\[id=mine\]\.kind"):
        parse_policy({"checks": [{"id": "mine"}]})
    with pytest.raises(ConfigError, match=r"checks\[id=mine\]\.kind"):
        parse_policy({"checks": [{"id": "mine", "kind": "vibes"}]})


def test_absolute_mean_difference_and_abs_diff_quantiles_catch_what_the_signed_mean_hides(tmp_path):
    # s01's candidate scores scatter both ways around the baseline's: mean Δ ≈ 0, mean |Δ| ≈ 0.08
    scenario = Scenario(n=20_000, segments=4, score_noise={1: 0.1}, seed=21)
    policy = parse_policy(
        {
            "checks": [
                {"id": "mean_abs_diff", "kind": "abs_score_diff", "threshold": 0.05},
                {"id": "p95_abs_diff", "kind": "abs_diff_quantile", "quantile": 0.95, "threshold": 0.1},
            ]
        }
    )
    doc = verdict_of(tmp_path, scenario, policy)
    assert doc["verdict"] == "no_go"
    by = {(c["check"], c["segment"]): c for c in doc["checks"]}
    assert by[("score_shift", "seg=s01")]["status"] == "pass"  # the signed mean cancels out
    assert by[("mean_abs_diff", "seg=s01")]["status"] == "fail"
    assert 0.07 < by[("mean_abs_diff", "seg=s01")]["value"] < 0.09
    assert by[("p95_abs_diff", "seg=s01")]["status"] == "fail"
    lo, hi = by[("p95_abs_diff", "seg=s01")]["ci"]
    assert 0.1 < lo <= by[("p95_abs_diff", "seg=s01")]["value"] <= hi
    for seg in ("seg=s00", "seg=s02", "seg=s03"):
        assert by[("mean_abs_diff", seg)]["status"] == "pass"
        assert by[("p95_abs_diff", seg)]["status"] == "pass"
        assert by[("p95_abs_diff", seg)]["value"] < 0.05
    # a quarter of all pairs scatter: more than 5 % of the run's pairs differ by over 0.1
    assert doc["failing_segments"] == ["all", "seg=s01"]


def test_a_per_segment_override_of_an_abs_quantile_threshold_is_counted_at_its_own_threshold(tmp_path):
    scenario = Scenario(n=20_000, segments=4, score_noise={1: 0.1}, seed=22)
    policy = parse_policy(
        {
            "checks": [
                {
                    "id": "p95_abs_diff",
                    "kind": "abs_diff_quantile",
                    "threshold": 0.1,
                    "overrides": [{"segment": "seg=s01", "threshold": 0.5}],
                }
            ]
        }
    )
    doc = verdict_of(tmp_path, scenario, policy)
    cell = next(c for c in doc["checks"] if c["check"] == "p95_abs_diff" and c["segment"] == "seg=s01")
    assert cell["threshold"] == 0.5
    assert cell["status"] == "pass"
    assert cell["extra"]["share_beyond_threshold"] < 0.01


def test_every_check_kind_a_policy_can_name_is_judged_somewhere():
    from typing import get_args

    from shadowdiff.diff.kinds import KINDS as REGISTERED
    from shadowdiff.diff.kinds import SEGMENT_KINDS
    from shadowdiff.diff.quality import FEATURE_KINDS, RUN_KINDS
    from shadowdiff.schemas.policy import KINDS, CheckKind

    assert set(get_args(CheckKind)) == set(KINDS)
    assert set(KINDS) == set(REGISTERED)  # one registry: each kind the policy names is judged by one unit
    assert len(SEGMENT_KINDS) + len(FEATURE_KINDS) + len(RUN_KINDS) == len(REGISTERED)
