"""Gate policy: which checks decide the verdict, their thresholds and severities, minimum
samples and duration, and the false-alarm control. Validated once; errors name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.config import format_validation_error, read_toml
from schemas.errors import ConfigError

CheckKind = Literal[
    "label_flip",  # share of pairs whose label differs (above the noise floor)
    "score_diff",  # share of pairs whose score differs by more than a tolerance (above noise)
    "score_shift",  # mean paired score difference
    "latency",  # candidate/baseline latency quantile ratio, sustained
    "error_rate",  # candidate error+timeout rate, sustained
    "prediction_drift",  # candidate score distribution vs baseline's
    "feature_drift",  # current features vs the reference
    "null_spike",  # null share of a feature vs reference
    "out_of_range",  # numeric values outside the reference range
    "new_category",  # categorical values unseen in the reference
    "dead_letters",  # malformed / schema-violating messages
    "version_pairing",  # candidate fed by a feature pipeline it was not built for
    "field_diff",  # structured outputs: share of pairs with field-level differences (above noise)
    "ranking_overlap",  # rankings: mean overlap@k of candidate vs baseline top-k (fails when below)
    "probability_distance",  # mean Jensen-Shannon distance of class probabilities
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Override(_Frozen):
    """Per-segment changes to a check: e.g. a looser latency bound for `region=apac`."""

    segment: str
    threshold: float | None = None
    severity: Literal["critical", "warning", "off"] | None = None


class Check(_Frozen):
    id: Annotated[str, Field(pattern=r"^[a-z0-9_.-]{1,64}$")]
    kind: CheckKind
    severity: Literal["critical", "warning"] = "critical"
    threshold: float
    # score_diff: what counts as a different pair; latency: which quantile
    tolerance: float = 0.05
    quantile: Annotated[float, Field(gt=0, lt=1)] = 0.95
    for_minutes: Annotated[float, Field(ge=0)] = 0.0  # sustained for this long (event time)
    overrides: list[Override] = []


def default_checks() -> list[Check]:
    """The seed runbook's triggers, 1:1."""
    return [
        Check(id="label_flip", kind="label_flip", threshold=0.01),
        Check(id="score_diff", kind="score_diff", threshold=0.05, tolerance=0.1),
        Check(id="score_shift", kind="score_shift", threshold=0.02),
        Check(id="latency_p95", kind="latency", threshold=1.3, quantile=0.95, for_minutes=5),
        Check(id="error_rate", kind="error_rate", threshold=0.05, for_minutes=3),
        Check(id="prediction_drift", kind="prediction_drift", threshold=0.1),
        Check(id="feature_drift", kind="feature_drift", threshold=0.1, severity="warning"),
        Check(id="null_spike", kind="null_spike", threshold=0.05),
        Check(id="out_of_range", kind="out_of_range", threshold=0.02, severity="warning"),
        Check(id="new_category", kind="new_category", threshold=0.02, severity="warning"),
        Check(id="dead_letters", kind="dead_letters", threshold=0.02),
        Check(id="version_pairing", kind="version_pairing", threshold=0.0),
        # structured, ranking and probability outputs (applied when the output kind has them)
        Check(id="field_diff", kind="field_diff", threshold=0.02),
        Check(id="ranking_overlap", kind="ranking_overlap", threshold=0.8),
        Check(id="probability_distance", kind="probability_distance", threshold=0.05),
    ]


class Reference(_Frozen):
    """Traffic that defines 'normal' for drift and quality: an event-time window of this run, or
    a recording (JSONL/Parquet envelopes)."""

    start: str | None = None
    end: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one(self) -> Reference:
        if self.file is None and (self.start is None or self.end is None):
            raise ValueError("reference needs `file`, or both `start` and `end`")
        return self


class Policy(_Frozen):
    min_samples: Annotated[int, Field(ge=1)] = 500  # pairs per segment before it can be judged
    min_duration_minutes: Annotated[float, Field(ge=0)] = 0.0
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.01  # false NO_GO rate the run may risk
    correction: Literal["holm", "bh"] = "holm"
    require_all_segments: bool = True  # a PENDING segment keeps the whole verdict PENDING
    segments: list[str] | None = None  # None: the run's segment fields and combinations
    max_segment_values: Annotated[int, Field(ge=1)] = 50  # rarer values are pooled as '(other)'
    examples: Annotated[int, Field(ge=0, le=100)] = 10
    reference: Reference | None = None
    checks: list[Check] = Field(default_factory=default_checks)

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
        raise ConfigError(origin, format_validation_error(err)) from err


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
