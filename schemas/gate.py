"""The gate's answer, a public contract: what the Argo endpoint, the Flagger endpoint and
`shadowdiff gate` all give for a run and candidate, computed by one function over one typed
model. Waivers are people's decisions on top of a verdict: who, why, which check and segment,
and until when."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Verdict = Literal["go", "no_go", "pending"]

# the CLI's exit codes, and what an HTTP client gets instead
EXIT_CODES: dict[str, int] = {"go": 0, "no_go": 1, "pending": 2}
EXIT_UNKNOWN = 3  # unknown run or candidate, or any error: never read as a verdict
FLAGGER_STATUS: dict[str, int] = {"go": 200, "no_go": 412, "pending": 425}

DEFAULT_MAX_WAIVER = timedelta(days=7)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WaiverRequest(_Model):
    """A waiver as a person asks for it (POST /runs/{run}/waivers)."""

    check: Annotated[str, Field(pattern=r"^[a-z0-9_.-]{1,64}$")]
    segment: Annotated[str, Field(min_length=1, max_length=512)] = "*"
    candidate: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = None
    reason: Annotated[str, Field(min_length=1, max_length=2000)]
    by: Annotated[str, Field(min_length=1, max_length=200)]
    expires_at: AwareDatetime


class Waiver(WaiverRequest):
    """A recorded waiver: applies to a NO_GO only while it has not expired."""

    created_at: AwareDatetime

    def active(self, now: datetime) -> bool:
        return now < self.expires_at

    def covers(self, check: str, segment: str, candidate: str) -> bool:
        return self.check == check and self.segment in ("*", segment) and self.candidate in (None, candidate)

    def describe(self) -> str:
        return f"waived by {self.by} until {self.expires_at.isoformat()}: {self.check} in {self.segment} ({self.reason})"


class WaiverFile(_Model):
    waivers: list[Waiver] = []


class GateAnswer(_Model):
    """One run's and candidate's answer."""

    run_id: str
    candidate: str | None
    verdict: Verdict
    reasons: list[str]
    failing_segments: list[str] = []
    waivers_applied: list[Waiver] = []
    stale: bool = False
    pairs: int = 0
    digest: str | None = None
    generated_at: str | None = None
    policy_digest: str | None = None
    report_url: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def flagger_status(self) -> int:
        return FLAGGER_STATUS[self.verdict]
