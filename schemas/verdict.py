"""The verdict document, a public contract: what `shadowdiff judge` publishes as
`verdict-<candidate>.json`, the gate reads and `?full=1` returns. `verdict.v1.schema.json` is
generated from these models (`python -m shadowdiff.schemas.verdict`; a test keeps the file equal to them).

`Verdict` is also what the judge returns and what the publisher, the gate, the report and the
evidence bundle read: `emitted` builds one from the judge's fields and refuses any the models do
not declare, `verdict_bytes` writes it, `read_verdict` reads a published one.

Within a major version fields are only added, never renamed or removed, so every object admits
properties it does not name: a client validating with an older schema still accepts a newer
document. The judge itself emits only what the models name."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from shadowdiff.schemas.errors import VerdictOutsideContract

SCHEMA_ID = "https://shadowdiff.dev/schemas/verdict.v1.schema.json"
SCHEMA_FILE = Path(__file__).with_name("verdict.v1.schema.json")

VerdictValue = Literal["go", "no_go", "pending"]
CheckStatus = Literal["pass", "fail", "warn", "pending", "n/a", "undecided"]


class _Open(BaseModel):
    """An object of the contract: named fields typed, later additions admitted."""

    model_config = ConfigDict(extra="allow")


class Offset(_Open):
    source: str
    partition: int
    next_offset: int
    consumed: int | None = None
    sampled: int | None = None


class Window(_Open):
    first_event: str | None = None
    last_event: str | None = None
    configured: Any = None


class Data(_Open):
    """What was judged: the pairs, their event-time window and the source offsets they cover."""

    pairs: int = Field(ge=0)
    pair_set_digest: str | None = Field(
        None,
        description="sha256 of the number of judged pairs and the sums of their md5s of coordinates and "
        "request id (free of order): equal for one worker or several over the same traffic",
    )
    pairs_by_reason: dict[str, int] = {}
    window: Window
    offsets: list[Offset]
    consumed: int
    sampled: int
    dead_letters: int


class SideLoad(_Open):
    called: bool
    kind: str | None = None
    rows_per_call: int | None = None
    calls_in_flight: str | None = None
    max_rps: float | None = None
    rows_sent: int | None = None
    rows_per_s_per_worker: float | None = None
    note: str | None = None


class Load(_Open):
    """What the shadow asked of each side whose latency is compared."""

    baseline: SideLoad
    candidate: SideLoad


class WorkerCoverage(_Open):
    worker: str
    exports: int
    last_export_at: str | None = None
    heartbeat_at: str | None = None
    final: bool
    silent: bool
    silent_for_s: float | None = None
    failed_exports: int = Field(0, description="checkpoint exports of the worker that failed (their rows wait for the next)")
    failing_exports: int = Field(0, description="of those, the ones since its last published export: its newer rows are not here")
    last_export_failure: str | None = None


class Coverage(_Open):
    """A verdict judged from the workers' exports: the workers and exports it read, and the
    workers silent past --silent-after (outside the digest)."""

    source: str = "exports"
    workers: list[WorkerCoverage]
    silent_workers: list[str]


class OutcomeDelay(_Open):
    p50_s: float | None = None
    p90_s: float | None = None
    p99_s: float | None = None


class Outcomes(_Open):
    """The truth joined to the pairs (diff/outcomes.py): how much of it has arrived, how long it
    takes, and what could not be joined."""

    records: int = Field(ge=0, description="outcome records stored by the outcome workers, duplicates included")
    pairs: int = Field(ge=0, description="the candidate's judged pairs")
    with_outcome: int = Field(ge=0, description="pairs whose request has an outcome")
    waiting: int = Field(ge=0, description="pairs still without an outcome (reported, never dropped)")
    waiting_share: float | None = None
    duplicates: int = Field(0, ge=0, description="records for a request already resolved: the first observed counts")
    conflicting: int = Field(0, ge=0, description="duplicates whose outcome differs from the first one's")
    unknown_requests: int = Field(
        0, ge=0, description="resolved request ids with no stored pair: not sampled, not yet replayed, or unknown"
    )
    dead_letters: dict[str, int] = Field({}, description="outcome records that could not be read, by reason")
    delay: OutcomeDelay = Field(
        default_factory=OutcomeDelay,
        description="observed_at minus the request's event time over the judged pairs of `all` with an outcome, "
        "read from log-spaced bins (within 0.1 %); an outcome observed before its request counts as no delay",
    )
    workers: list[str] = []
    complete: bool = Field(False, description="every outcome worker read its whole source (a recording or window)")
    calibration: dict[str, dict[str, list[list[float]]]] = Field(
        {}, description="per segment and side (baseline, candidate): reliability bins [mean score, observed rate, pairs]"
    )
    discordant: list[dict[str, Any]] = Field(
        [], description="pairs the models disagree on, with their outcome and which model was right (`right`)"
    )


class ServedSide(_Open):
    name: str = Field(description="stable / canary, or last-known-good / current")
    version: str
    start: str | None = None
    end: str | None = None
    records: int = Field(ge=0)
    errors: int = Field(ge=0)


class TrafficShare(_Open):
    segment: str
    reference_share: float
    subject_share: float
    moved: bool = Field(description="the segment's share of the traffic changed beyond chance (not counted against the model)")
    note: str


class Served(_Open):
    """A run over served traffic (canary analysis or rollback verification): the two sides
    compared, unpaired, and how each segment's share of the traffic moved between them."""

    mode: Literal["canary", "rollback"]
    reference: ServedSide
    subject: ServedSide
    traffic_mix: list[TrafficShare] = []
    not_applicable: list[str] = Field([], description="the policy's checks that compare pairs of answers to one request")
    complete: bool | None = None
    restored: bool | None = Field(
        None, description="rollback verification: GO, every critical check shown within against the last-known-good"
    )


class PolicyCheck(_Open):
    id: str
    kind: str
    severity: Literal["critical", "warning"]
    threshold: float | None = None
    require_proof: bool | None = None


class PolicySummary(_Open):
    """The policy the verdict was judged under; `label` and `published_over_the_run_policy`
    mark a re-judge under another policy (docs/gate.md)."""

    digest: str
    min_samples: int
    min_duration_minutes: float | None = None
    alpha: float
    correction: Literal["holm", "bh"]
    require_all_segments: bool | None = None
    prove_in_segments: bool | None = None
    segment_margin: float | None = Field(
        None, description="a segment's critical checks are shown within this many times the threshold's distance from the ideal"
    )
    latency_min_span_minutes: float | None = None
    decision: Literal["anytime", "fixed"] | None = None
    anytime_horizon: int | None = None
    min_segment_share: float | None = None
    min_outcomes: int | None = None
    checks: list[PolicyCheck] = []
    label: str | None = None
    published_over_the_run_policy: bool | None = None


class Statistics(_Open):
    correction: str
    alpha: float
    tests_in_family: int
    latency_axis: str | None = None
    decision: str | None = None
    note: str | None = None


class SegmentStatus(_Open):
    segment: str
    n: int
    n_pairs: int | None = None
    status: VerdictValue
    needed: int = Field(ge=0)
    rare: bool = Field(
        False,
        description="below policy.min_segment_share of the traffic: judged once it has min_samples, "
        "never holds the verdict PENDING",
    )
    exhausted: bool = Field(
        False,
        description="the run is complete and every request of the segment was stored (its quota never filled), "
        "fewer than min_samples: it cannot hold the verdict PENDING",
    )


class CheckResult(_Open):
    check: str
    kind: str
    segment: str
    feature: str | None = None
    status: CheckStatus
    severity: Literal["critical", "warning"]
    value: float | None = None
    ci: list[float | None] | None = None
    threshold: float
    p_value: float | None = None
    p_adjusted: float | None = None
    n: int
    sustained: bool | None = None
    p_within: float | None = None
    pairs_needed: int | None = None
    detail: str = ""
    extra: dict[str, Any] = {}


class PooledValues(_Open):
    values: list[str]
    distinct: int
    requests: int


class Coordinates(_Open):
    source: str
    partition: int
    offset: int


class Answer(_Open):
    score: float | None = None
    label: str | None = None
    output: Any = None
    error: str | None = None
    error_detail: str | None = None


class Example(_Open):
    """One of the most different pairs (label flips first, then the largest score gaps, then
    failures); its input and answers came from traffic, so a reader escapes them."""

    request_id: str
    coordinates: Coordinates
    segments: dict[str, Any] = {}
    input: Any = None
    baseline: Answer
    candidate: Answer
    score_diff: float | None = None
    field_diffs: list[Any] = []


class FailingCheck(_Open):
    check: str
    segment: str


class Terminal(_Open):
    """The first GO or NO_GO published for the candidate: the gate answers it from then on."""

    verdict: Literal["go", "no_go"]
    published_at: str | None
    pairs: int | None
    digest: str | None
    policy_digest: str | None
    reasons: list[str]
    failing_segments: list[str]
    failing_checks: list[FailingCheck] = Field(description="the failures waivers are matched against")


class Latest(_Open):
    """What the newest look alone says (for the report; the gate answers `verdict`)."""

    verdict: VerdictValue
    reasons: list[str]
    failing_segments: list[str]


class Verdict(_Open):
    """The gate's answer for one candidate of one run. Public contract: fields are only added,
    never renamed or removed, within a major version."""

    model_config = ConfigDict(
        extra="allow",
        title="shadowdiff verdict, version 1",
        json_schema_extra={"$id": SCHEMA_ID, "$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    schema_version: Literal[1]
    run_id: str
    candidate: str
    verdict: VerdictValue
    reasons: list[str]
    warnings: list[str] = []
    failing_segments: list[str]
    data: Data
    load: Load | None = Field(
        None,
        description="what the shadow asked of each side whose latency is compared: rows per call, calls in "
        "flight, rate cap, rows sent and the rate one worker sent them at",
    )
    coverage: Coverage | None = None
    terminal: Terminal | None = Field(
        None, description="the first terminal verdict of the run: once present, `verdict` is always its verdict"
    )
    latest: Latest | None = Field(None, description="the newest look's own verdict, once a terminal one was published")
    versions: dict[str, Any]
    policy: PolicySummary
    statistics: Statistics
    segments: list[SegmentStatus]
    pooled_segment_values: dict[str, PooledValues] = Field(
        {}, description="per segment field, the values pooled as '(other)': too rare to judge alone"
    )
    checks: list[CheckResult]
    comparisons: dict[str, dict[str, Any]] = {}
    flips: dict[str, dict[str, int]] = {}
    examples: list[Example]
    outcomes: Outcomes | None = Field(None, description="present when the run has outcomes or its policy outcome checks")
    served: Served | None = Field(None, description="present for a canary analysis or a rollback verification")
    digest: str = Field(
        description="sha256 of the document without generated_at: equal digests mean the same verdict on the same evidence"
    )
    generated_at: str
    run_active: bool | None = Field(
        None, description="false once every writer finished: the gate never calls a finished run's verdict stale"
    )
    report_url: str | None = None


def undeclared(doc: Verdict) -> list[str]:
    """Properties of a parsed document that no model names, as dotted paths: what a judge that
    emits only the contract's fields never has."""
    out: list[str] = []

    def walk(model: BaseModel, path: str) -> None:
        out.extend(f"{path}{k}" for k in (model.model_extra or {}))
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                walk(value, f"{path}{name}.")
            elif isinstance(value, list | dict):
                for key, item in value.items() if isinstance(value, dict) else enumerate(value):
                    if isinstance(item, BaseModel):
                        walk(item, f"{path}{name}[{key}].")

    walk(doc, "")
    return out


def emitted(doc: dict[str, Any]) -> Verdict:
    """The verdict of the judge's fields; a field the models do not declare is a bug."""
    verdict = Verdict.model_validate(doc)
    if extra := undeclared(verdict):
        raise VerdictOutsideContract(f"the judge wrote properties the verdict models do not declare: {extra[:10]}")
    return verdict


def verdict_dict(verdict: Verdict) -> dict[str, Any]:
    """The document as JSON values, with the properties it was given (no defaults filled in)."""
    return verdict.model_dump(mode="json", exclude_unset=True)


def verdict_bytes(verdict: Verdict, indent: bool = True) -> bytes:
    return orjson.dumps(verdict_dict(verdict), option=orjson.OPT_INDENT_2 if indent else 0)


def read_verdict(data: bytes) -> Verdict:
    """A published verdict (pydantic.ValidationError when it is not one)."""
    return Verdict.model_validate_json(data)


def json_schema() -> dict[str, Any]:
    schema = Verdict.model_json_schema()
    # the published schema's header first, as a reader expects it
    head = {k: schema.pop(k) for k in ("$schema", "$id", "title", "description") if k in schema}
    return head | schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    # regenerate the committed schema file from the models
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if SCHEMA_FILE.read_text(encoding="utf-8") == schema_text() else 1)
    SCHEMA_FILE.write_text(schema_text(), encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")
