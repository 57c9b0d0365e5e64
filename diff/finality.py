"""The first terminal verdict is final. A deploy pipeline acts on the first GO or NO_GO it sees
(Argo Rollouts promotes at the first `go`, a CI job at the first exit 0), so a later look that
would say something else must not change what the gate answers: the stopping rule is part of
the decision. The tests behind it are anytime-valid, which is what makes stopping at the first
terminal answer sound.

`latch(previous, current)` takes the document last published for a candidate and the one just
judged, and returns the one to publish: the current look in full (checks, segments, report), with
the verdict, reasons and failing segments of the first terminal look, that look kept under
`terminal` and the current look's own verdict under `latest`."""

from __future__ import annotations

from typing import Any

TERMINAL = ("go", "no_go")


def terminal_record(doc: dict[str, Any]) -> dict[str, Any]:
    """What the gate keeps answering once `doc` (a GO or NO_GO) was published."""
    return {
        "verdict": doc["verdict"],
        "published_at": doc.get("generated_at"),
        "pairs": doc.get("data", {}).get("pairs"),
        "digest": doc.get("digest"),
        "policy_digest": doc.get("policy", {}).get("digest"),
        "reasons": list(doc.get("reasons", [])),
        "failing_segments": list(doc.get("failing_segments", [])),
        # waivers are matched against the failures of the look that was acted on
        "failing_checks": [
            {"check": c["check"], "segment": c["segment"]} for c in doc.get("checks", []) if c.get("status") == "fail"
        ],
    }


def latch(previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, Any]:
    """The document to publish after `previous` (None: nothing published yet). A terminal verdict
    published under the same policy stays the verdict; a policy change (only a labelled judgment
    or `--publish` can bring one) starts afresh, since its tests are other tests."""
    first = (previous or {}).get("terminal")
    same_policy = first is not None and first.get("policy_digest") == current.get("policy", {}).get("digest")
    latest = {
        "verdict": current["verdict"],
        "reasons": list(current["reasons"]),
        "failing_segments": list(current["failing_segments"]),
    }
    if first is None or not same_policy:
        if current["verdict"] not in TERMINAL:
            return current
        return {**current, "terminal": terminal_record(current), "latest": latest}
    shown = f"{first['verdict'].upper().replace('_', '-')}"
    note = (
        f"final: {shown} was first published at {first['published_at']} with {first['pairs']} pairs; "
        f"a terminal verdict is never changed (this look alone: {current['verdict'].upper().replace('_', '-')})"
    )
    return {
        **current,
        "verdict": first["verdict"],
        "reasons": [note, *first["reasons"]],
        "failing_segments": first["failing_segments"],
        "terminal": first,
        "latest": latest,
    }


__all__ = ["TERMINAL", "latch", "terminal_record"]
