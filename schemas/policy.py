"""Gate policy: which checks decide the verdict, their thresholds and severities, minimum
samples and duration, and the false-alarm control. Validated once; errors name the key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shadowdiff.schemas.config import format_validation_error, read_toml
from shadowdiff.schemas.errors import ConfigError

Severity = Literal["critical", "warning"]


@dataclass(frozen=True, slots=True)
class KindDefaults:
    """What a check of this kind means when the policy leaves a field out. Input drift, nulls and
    ranges move for baseline and candidate alike (the traffic changed, not the model), so they
    warn unless a policy asks for more; comparisons of the two models' outputs are critical."""

    threshold: float
    severity: Severity
    meaning: str


KINDS: dict[str, KindDefaults] = {
    "label_flip": KindDefaults(0.01, "critical", "share of pairs whose label differs (above the noise floor)"),
    "score_diff": KindDefaults(0.05, "critical", "share of pairs whose |Δscore| exceeds `tolerance` (above noise)"),
    "score_shift": KindDefaults(0.02, "critical", "signed mean paired score difference, |mean| ≤ threshold"),
    "abs_score_diff": KindDefaults(0.05, "critical", "mean absolute paired score difference, mean |Δscore| ≤ threshold"),
    "abs_diff_quantile": KindDefaults(0.1, "critical", "`quantile` of |Δscore| ≤ threshold (e.g. P95 |Δ| ≤ 0.1)"),
    "latency": KindDefaults(1.3, "critical", "candidate/baseline latency `quantile` ratio, sustained `for_minutes`"),
    "error_rate": KindDefaults(0.05, "critical", "candidate error + timeout rate, sustained `for_minutes`"),
    "shadow_load": KindDefaults(
        0.01, "warning", "calls the candidate refused as too many (429): the shadow's load, never counted as its errors"
    ),
    # a distance read without a test (no error rate of its own): it warns; the paired checks
    # (flips, score shifts, |Δ| quantiles) carry the critical questions with anytime-valid tests
    "prediction_drift": KindDefaults(0.1, "warning", "candidate score distribution vs the baseline's (Wasserstein)"),
    "feature_drift": KindDefaults(0.1, "warning", "current features vs the reference"),
    "null_spike": KindDefaults(0.05, "warning", "null share of a feature above the reference's"),
    "out_of_range": KindDefaults(0.02, "warning", "numeric values outside the reference range"),
    "new_category": KindDefaults(0.02, "warning", "categorical values unseen in the reference"),
    "dead_letters": KindDefaults(0.02, "critical", "malformed / schema-violating messages"),
    "duplicate_requests": KindDefaults(0.001, "warning", "requests stored twice under one request id (producer retries)"),
    "version_pairing": KindDefaults(0.0, "critical", "candidate fed by a feature pipeline it was not built for"),
    "field_diff": KindDefaults(0.02, "critical", "structured outputs: share of pairs with field differences (above noise)"),
    "ranking_overlap": KindDefaults(0.8, "critical", "rankings: mean overlap@k with the baseline (fails when below)"),
    "probability_distance": KindDefaults(0.05, "critical", "mean Jensen-Shannon distance of class probabilities"),
    # outcome checks: the candidate is no worse than the baseline by more than the threshold on
    # the requests whose outcome arrived (paired differences, candidate minus baseline)
    "outcome_error": KindDefaults(0.01, "critical", "error-rate difference on the same requests (discordant pairs, McNemar's)"),
    "outcome_brier": KindDefaults(0.005, "critical", "Brier score difference of probability scores on the same requests"),
    "outcome_log_loss": KindDefaults(0.02, "critical", "log-loss difference of probability scores on the same requests"),
    "outcome_abs_error": KindDefaults(0.05, "critical", "mean absolute error difference (outcome units) on the same requests"),
    "outcome_sq_error": KindDefaults(
        0.05, "critical", "mean squared error difference (outcome units squared) on the same requests"
    ),
}

CheckKind = Literal[
    "label_flip",
    "score_diff",
    "score_shift",
    "abs_score_diff",
    "abs_diff_quantile",
    "latency",
    "error_rate",
    "shadow_load",
    "prediction_drift",
    "feature_drift",
    "null_spike",
    "out_of_range",
    "new_category",
    "dead_letters",
    "duplicate_requests",
    "version_pairing",
    "field_diff",
    "ranking_overlap",
    "probability_distance",
    "outcome_error",
    "outcome_brier",
    "outcome_log_loss",
    "outcome_abs_error",
    "outcome_sq_error",
]
OUTCOME_KINDS = frozenset(k for k in KINDS if k.startswith("outcome_"))


class _Frozen(BaseModel):
    # strict, as the run config: `min_samples = "500"` is an error, not a conversion
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Override(_Frozen):
    """Per-segment changes to a check: e.g. a looser latency bound for `region=apac`."""

    segment: str
    threshold: float | None = None
    severity: Literal["critical", "warning", "off"] | None = None


class Check(_Frozen):
    """One question asked in every segment. `threshold` and `severity` default per kind
    (`KINDS`), so a policy names only what it changes."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9_.-]{1,64}$")]
    kind: CheckKind
    severity: Severity
    threshold: float
    # score_diff: what counts as a different pair; latency, abs_diff_quantile: which quantile
    tolerance: float = 0.05
    quantile: Annotated[float, Field(gt=0, lt=1)] = 0.95
    for_minutes: Annotated[float, Field(ge=0)] = 0.0  # sustained for this long (event time)
    # GO needs this check shown within its threshold (default: critical checks); false keeps
    # the lenient rule, a pass unless shown worse
    require_proof: bool | None = None
    overrides: list[Override] = []

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") in KINDS:
            defaults = KINDS[data["kind"]]
            data = dict(data)
            if data.get("threshold") is None:
                data["threshold"] = defaults.threshold
            if data.get("severity") is None:
                data["severity"] = defaults.severity
        return data


def _check(**fields: Any) -> Check:
    return Check.model_validate(fields)  # threshold and severity come from the kind


def default_checks() -> list[Check]:
    """The seed runbook's triggers, and shadow_load (a warning when the candidate refused calls as
    too many: the shadow's own load)."""
    return [
        _check(id="label_flip", kind="label_flip"),
        _check(id="score_diff", kind="score_diff", tolerance=0.1),
        _check(id="score_shift", kind="score_shift"),
        _check(id="latency_p95", kind="latency", quantile=0.95, for_minutes=5),
        _check(id="error_rate", kind="error_rate", for_minutes=3),
        _check(id="shadow_load", kind="shadow_load"),
        _check(id="prediction_drift", kind="prediction_drift"),
        _check(id="feature_drift", kind="feature_drift"),
        _check(id="null_spike", kind="null_spike"),
        _check(id="out_of_range", kind="out_of_range"),
        _check(id="new_category", kind="new_category"),
        _check(id="dead_letters", kind="dead_letters"),
        _check(id="duplicate_requests", kind="duplicate_requests"),
        _check(id="version_pairing", kind="version_pairing"),
        # structured, ranking and probability outputs (applied when the output kind has them)
        _check(id="field_diff", kind="field_diff"),
        _check(id="ranking_overlap", kind="ranking_overlap"),
        _check(id="probability_distance", kind="probability_distance"),
    ]


def merge_checks(entries: list[Any], inherit_defaults: bool) -> list[Any]:
    """A policy's `[[checks]]` over the built-in ones: an entry whose `id` is a built-in check
    changes only the fields it names (a different `kind` replaces it whole), `enabled = false`
    removes it, a new id adds a check. With `inherit_defaults = false` the entries are the
    whole list."""
    merged: dict[str, Any] = {}
    if inherit_defaults:
        merged = {c.id: c.model_dump() for c in default_checks()}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            merged[f"#{n}"] = entry  # let validation name the problem
            continue
        entry = dict(entry)
        enabled = entry.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ValueError(f"checks: `enabled` of check {entry.get('id')!r} must be true or false, not {enabled!r}")
        cid = entry.get("id")
        key = cid if isinstance(cid, str) else f"#{n}"
        base = merged.get(key)
        if enabled is False:
            merged.pop(key, None)
            continue
        if base is not None and entry.get("kind", base["kind"]) == base["kind"]:
            keep = {k: v for k, v in base.items() if k not in entry}
            # a changed quantile or kind-specific field keeps the built-in's other settings
            merged[key] = {**keep, **entry}
        else:
            merged[key] = entry
    return list(merged.values())


class Reference(_Frozen):
    """Traffic that defines 'normal' for drift and quality: an event-time window of this run, or
    a recording (JSONL/Parquet envelopes)."""

    start: str | None = None
    end: str | None = None
    file: Annotated[Path | None, Field(strict=False)] = None

    @model_validator(mode="after")
    def _one(self) -> Reference:
        if self.file is None and (self.start is None or self.end is None):
            raise ValueError("reference needs `file`, or both `start` and `end`")
        return self


class Policy(_Frozen):
    """The gate's rules. The checks in force are the built-in ones changed by the policy's own
    (`merge_checks`); once built, `checks` lists every check in force and `inherit_defaults` is
    false, so a stored policy reads back as the same policy."""

    inherit_defaults: bool = True
    min_samples: Annotated[int, Field(ge=1)] = 500  # pairs per segment before it can be judged
    min_duration_minutes: Annotated[float, Field(ge=0)] = 0.0
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.01  # false NO_GO rate the run may risk
    correction: Literal["holm", "bh"] = "holm"
    # anytime: tests valid however often the run is judged, GO only once shown within (see
    # diff/decide.py); fixed: fixed-sample tests, a pass unless shown worse
    decision: Literal["anytime", "fixed"] = "anytime"
    anytime_horizon: Annotated[int, Field(ge=100)] = 10_000  # pairs where the anytime tests are tightest
    require_all_segments: bool = True  # a segment short of min_samples keeps the whole verdict PENDING
    # GO needs every critical check shown within its threshold in `all` (the whole run) and,
    # in every segment but the rare ones, shown within `segment_margin` times as far from the
    # ideal (flips +3 points where the run allows +1, a P95 ratio of 1.3^3 = 2.2 where it
    # allows 1.3): a regression confined to a segment cannot be answered GO before it is caught,
    # while a segment's fewer pairs still decide in the same run (at 2, a sound candidate's 30
    # segments of 3 % were rarely all shown within by 100k pairs: bench/decision_bench.py). prove_in_segments holds the
    # segments to the run's own thresholds (a margin of 1). A segment shown worse than the run's
    # threshold is a NO_GO either way
    segment_margin: Annotated[float, Field(ge=1, le=10)] = 3.0
    # latency decides neither way before its calls span this much wall-clock time: a burst of
    # load on one server lasts tens of seconds, and a spread read from the first minute of a
    # run cannot know the bursts still to come
    latency_min_span_minutes: Annotated[float, Field(ge=0)] = 10.0
    prove_in_segments: bool = False
    segments: list[str] | None = None  # None: the run's segment fields and combinations
    max_segment_values: Annotated[int, Field(ge=1)] = 50  # more values than this: the rarest pooled as '(other)'
    # values rarer than this share of the run's requests are pooled as '(other)'; a pool or a
    # combination still rarer is judged once it has min_samples, but never holds the verdict PENDING
    min_segment_share: Annotated[float, Field(ge=0, lt=1)] = 0.01
    examples: Annotated[int, Field(ge=0, le=100)] = 10
    # outcome checks are tested in a segment once this many of its pairs have their outcome
    # (the plug-in variance of a paired difference is poor on fewer)
    min_outcomes: Annotated[int, Field(ge=20)] = 200
    reference: Reference | None = None
    checks: list[Check] = Field(default_factory=default_checks)

    @model_validator(mode="before")
    @classmethod
    def _resolve_checks(cls, data: Any) -> Any:
        if isinstance(data, dict):
            inherit = data.get("inherit_defaults", True)
            if "checks" in data and isinstance(data["checks"], list) and isinstance(inherit, bool):
                data = {**data, "checks": merge_checks(data["checks"], inherit), "inherit_defaults": False}
        return data

    @model_validator(mode="after")
    def _unique(self) -> Policy:
        ids = [c.id for c in self.checks]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"check ids must be unique: {sorted(dup)}")
        return self

    def check(self, check_id: str) -> Check | None:
        return next((c for c in self.checks if c.id == check_id), None)


def parse_policy(data: dict[str, Any], origin: str = "policy") -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        raise ConfigError(origin, _name_checks(format_validation_error(err), data)) from err


def _name_checks(lines: list[str], data: dict[str, Any]) -> list[str]:
    """Errors inside the merged check list say which check (`checks[id=latency_p95].quantile`),
    since a position in the merged list is not a position in the policy file."""
    entries = data.get("checks")
    inherit = data.get("inherit_defaults", True)
    if not isinstance(entries, list) or not isinstance(inherit, bool):
        return lines
    try:
        merged = merge_checks(entries, inherit)
    except ValueError:
        return lines
    out = []
    for line in lines:
        head, _, rest = line.partition(".")
        index, _, tail = rest.partition(".")
        if head == "checks" and index.isdigit() and int(index) < len(merged):
            entry = merged[int(index)]
            cid = entry.get("id") if isinstance(entry, dict) else None
            line = f"checks[id={cid}]" + (f".{tail}" if tail else "") if cid else line
        out.append(line)
    return out


def load_policy(path: Path) -> Policy:
    """Read and validate a TOML policy ([policy] table and [[checks]])."""
    data = read_toml(path)
    body = dict(data.get("policy", {}))
    if "checks" in data:
        body["checks"] = data["checks"]
    unknown = set(data) - {"policy", "checks"}
    if unknown:
        raise ConfigError(str(path), [f"{k}: unknown table (expected [policy] and [[checks]])" for k in sorted(unknown)])
    pol = parse_policy(body, origin=str(path))
    if pol.reference and pol.reference.file and not pol.reference.file.is_absolute():
        ref = pol.reference.model_copy(update={"file": path.parent.resolve() / pol.reference.file})
        pol = pol.model_copy(update={"reference": ref})
    return pol
