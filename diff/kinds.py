"""The registry of check kinds judged per segment: each declares the aggregates it reads, the
segments it runs over and how it turns them into a result (its statistic and test live in
diff/checks.py). The judge computes only the aggregates the policy's kinds need and asks each
kind in turn. A new kind is one entry here, its function in diff/checks.py and its name and
defaults in schemas/policy.py.

Feature kinds (per segment and feature) and whole-run kinds read the features and the store
rather than pairs: each is one function in diff/quality.py, registered there in FEATURE_KINDS
and RUN_KINDS. `KINDS` below is every kind the policy may name, by how it is judged; a test
keeps it equal to the policy's kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from shadowdiff.diff import checks as ck
from shadowdiff.diff.aggregate import PairStats
from shadowdiff.diff.outcome_checks import outcome_check
from shadowdiff.diff.quality import FEATURE_KINDS, RUN_KINDS
from shadowdiff.schemas.config import OutputSpec
from shadowdiff.schemas.policy import OUTCOME_KINDS, Check

# aggregates a kind may read beside the segment's pair statistics (always there)
Aggregate = Literal["windows", "distributions", "labels", "latency_blocks", "outcomes"]


@dataclass
class Evidence:
    """What the aggregates say about one segment."""

    segment: str
    pairs: PairStats
    windows: dict[float, list[dict[str, Any]]] = field(default_factory=dict)  # by for_minutes
    distribution: dict[str, Any] | None = None
    labels: dict[str, Any] | None = None
    blocks: list[dict[str, Any]] | None = None
    comparison: Any = None  # structured-output statistics (diff/outputs.py)
    event_time_segment: bool = False  # a stretch of a replay's event time (see the judge)
    lat_quantiles: list[float] = field(default_factory=list)
    lat_grid: list[float] = field(default_factory=list)
    abs_grid: list[float] = field(default_factory=list)
    abs_thresholds: list[float] = field(default_factory=list)
    outcomes: dict[str, Any] | None = None  # outcome sums (diff/outcomes.py), when the policy has outcome checks
    min_outcomes: int = 0


Evaluate = Callable[[Check, Evidence, float, str], "ck.CheckResult | None"]


@dataclass(frozen=True)
class Kind:
    evaluate: Evaluate
    needs: frozenset[Aggregate] = frozenset()
    # "pairs": every segment of the run; "comparisons": segments with structured-output samples
    over: Literal["pairs", "comparisons"] = "pairs"
    # whether a run with this [output] mapping must give the check its evidence, and what that
    # evidence is: a critical check that finds none in the whole run is "not assessable" (the
    # verdict PENDING with that reason), never left out as if it had passed
    expects_evidence: Callable[[OutputSpec], bool] = lambda output: False
    evidence: str = ""


def _latency(chk: Check, ev: Evidence, thr: float, sev: str) -> ck.CheckResult | None:
    if ev.event_time_segment:
        return None  # judged on wall-clock blocks: an event-time stretch of a replay is not one
    mins = ev.windows.get(chk.for_minutes)
    if mins:
        ck.window_quantile_index({ev.segment: mins}, ev.lat_quantiles, chk.quantile)
    qi = sorted(set(ev.lat_quantiles)).index(chk.quantile)
    return ck.latency(chk, ev.segment, ev.pairs, thr, sev, ev.lat_grid, mins, ev.blocks, qi)


def _abs_diff_quantile(chk: Check, ev: Evidence, thr: float, sev: str) -> ck.CheckResult | None:
    far = ev.pairs["far_abs"][ev.abs_thresholds.index(thr)]
    return ck.abs_diff_quantile(chk, ev.segment, ev.pairs, thr, sev, ev.abs_grid, far)


def _on_pairs(fn: Callable[[Check, str, PairStats, float, str], ck.CheckResult | None]) -> Evaluate:
    return lambda chk, ev, thr, sev: fn(chk, ev.segment, ev.pairs, thr, sev)


def _on_comparison(fn: Callable[[Check, str, Any, float, str], ck.CheckResult | None]) -> Evaluate:
    return lambda chk, ev, thr, sev: fn(chk, ev.segment, ev.comparison, thr, sev)


def _scores(output: OutputSpec) -> bool:
    return output.kind == "score"


def _labels(output: OutputSpec) -> bool:
    """Labels are expected from a label output, or from scores cut at a threshold; a score
    output without one has labels only if its answers carry them."""
    return output.kind == "label" or (_scores(output) and output.threshold is not None)


def _any_output(output: OutputSpec) -> bool:
    return True


_PAIRED_SCORES = "paired baseline and candidate scores"


def _outcome(chk: Check, ev: Evidence, thr: float, sev: str) -> ck.CheckResult | None:
    return outcome_check(chk, ev.segment, ev.outcomes, thr, sev, ev.min_outcomes)


# declared in the family of every run (any output may be joined to outcomes); a check without
# the outcomes it needs waits for them or says it is not assessable (diff/outcome_checks.py)
_OUTCOME_KIND = Kind(_outcome, frozenset({"outcomes"}), expects_evidence=_any_output, evidence="outcomes joined to the pairs")

SEGMENT_KINDS: dict[str, Kind] = {
    "label_flip": Kind(_on_pairs(ck.label_flip), expects_evidence=_labels, evidence="paired baseline and candidate labels"),
    "score_diff": Kind(_on_pairs(ck.score_diff), expects_evidence=_scores, evidence=_PAIRED_SCORES),
    "score_shift": Kind(_on_pairs(ck.score_shift), expects_evidence=_scores, evidence=_PAIRED_SCORES),
    "abs_score_diff": Kind(_on_pairs(ck.abs_score_diff), expects_evidence=_scores, evidence=_PAIRED_SCORES),
    "abs_diff_quantile": Kind(_abs_diff_quantile, expects_evidence=_scores, evidence=_PAIRED_SCORES),
    "latency": Kind(
        _latency,
        frozenset({"windows", "latency_blocks"}),
        expects_evidence=_any_output,
        evidence="paired baseline and candidate latencies",
    ),
    "error_rate": Kind(
        lambda chk, ev, thr, sev: ck.error_rate(chk, ev.segment, ev.pairs, thr, sev, ev.windows.get(chk.for_minutes)),
        frozenset({"windows"}),
        expects_evidence=_any_output,
        evidence="candidate calls answered or failed (every call was refused as too many: shadow_load)",
    ),
    "shadow_load": Kind(_on_pairs(ck.shadow_load)),
    "prediction_drift": Kind(
        lambda chk, ev, thr, sev: ck.prediction_drift(chk, ev.segment, ev.distribution, ev.labels, thr, sev),
        frozenset({"distributions", "labels"}),
        expects_evidence=lambda output: _scores(output) or _labels(output),
        evidence="baseline scores or labels to compare the candidate's with",
    ),
    "field_diff": Kind(_on_comparison(ck.field_diff), over="comparisons"),
    "ranking_overlap": Kind(_on_comparison(ck.ranking_overlap), over="comparisons"),
    "probability_distance": Kind(_on_comparison(ck.probability_distance), over="comparisons"),
    **dict.fromkeys(OUTCOME_KINDS, _OUTCOME_KIND),
}

# judged without pairs, so never "pending" for a short segment
RUN_LEVEL_KINDS = frozenset(k for k, v in RUN_KINDS.items() if v.without_pairs)
# every kind, by what it is judged on: pairs (or structured-output comparisons) per segment,
# features per segment, or the whole run
KINDS: dict[str, Literal["pairs", "features", "run"]] = {
    **{k: "pairs" for k in SEGMENT_KINDS},
    **{k: "features" for k in FEATURE_KINDS},
    **{k: "run" for k in RUN_KINDS},
}
assert len(KINDS) == len(SEGMENT_KINDS) + len(FEATURE_KINDS) + len(RUN_KINDS), "a kind registered twice"
