"""The first terminal verdict is final. A deploy pipeline acts on the first GO or NO_GO it sees
(Argo Rollouts promotes at the first `go`, a CI job at the first exit 0), so a later look that
would say something else must not change what the gate answers: the stopping rule is part of
the decision. The tests behind it are anytime-valid, which is what makes stopping at the first
terminal answer sound.

`latch(previous, current)` takes the verdict last published for a candidate and the one just
judged, and returns the one to publish: the current look in full (checks, segments, report), with
the verdict, reasons and failing segments of the first terminal look, that look kept under
`terminal` and the current look's own verdict under `latest`."""

from __future__ import annotations

from shadowdiff.schemas.verdict import FailingCheck, Latest, Terminal, Verdict

TERMINAL = ("go", "no_go")


def terminal_record(verdict: Verdict) -> Terminal:
    """What the gate keeps answering once `verdict` (a GO or NO_GO) was published."""
    assert verdict.verdict != "pending"
    return Terminal(
        verdict=verdict.verdict,
        published_at=verdict.generated_at,
        pairs=verdict.data.pairs,
        digest=verdict.digest,
        policy_digest=verdict.policy.digest,
        reasons=list(verdict.reasons),
        failing_segments=list(verdict.failing_segments),
        # waivers are matched against the failures of the look that was acted on
        failing_checks=[FailingCheck(check=c.check, segment=c.segment) for c in verdict.checks if c.status == "fail"],
    )


def _shown(verdict: str) -> str:
    return verdict.upper().replace("_", "-")


def latch(previous: Verdict | None, current: Verdict) -> Verdict:
    """The verdict to publish after `previous` (None: nothing published yet). A terminal verdict
    published under the same policy stays the verdict; a policy change (only a labelled judgment
    or `--publish` can bring one) starts afresh, since its tests are other tests."""
    first = previous.terminal if previous is not None else None
    latest = Latest(verdict=current.verdict, reasons=list(current.reasons), failing_segments=list(current.failing_segments))
    if first is None or first.policy_digest != current.policy.digest:
        if current.verdict not in TERMINAL:
            return current
        return current.model_copy(update={"terminal": terminal_record(current), "latest": latest})
    note = (
        f"final: {_shown(first.verdict)} was first published at {first.published_at} with {first.pairs} pairs; "
        f"a terminal verdict is never changed (this look alone: {_shown(current.verdict)})"
    )
    return current.model_copy(
        update={
            "verdict": first.verdict,
            "reasons": [note, *first.reasons],
            "failing_segments": list(first.failing_segments),
            "terminal": first,
            "latest": latest,
        }
    )


__all__ = ["TERMINAL", "latch", "terminal_record"]
