"""The gate's one answer: published verdicts read from the run folder (never from the store,
which a replay may be writing), cached by file mtime, and never more optimistic than the data:
no verdict yet → pending "no data"; a verdict from a writer that stopped publishing → pending
"stale"; a NO_GO whose every failure is covered by an unexpired waiver → go, naming the
waivers. The Argo and Flagger endpoints and `shadowdiff gate` all answer through `answer()`.
Reading never writes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from shadowdiff.schemas.errors import RunNotFound, ShadowdiffError, UnknownCandidate
from shadowdiff.schemas.gate import GateAnswer, Waiver, WaiverFile
from shadowdiff.schemas.layout import RunLayout, valid_name
from shadowdiff.schemas.verdict import Verdict, VerdictValue, read_verdict


@dataclass
class _Entry:
    mtime_ns: int
    doc: Any


class _NotAVerdict:
    """A verdict file that does not parse as one: the gate says so, and answers pending."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


class VerdictStore:
    def __init__(self, home: Path, stale_after_s: float = 300.0, refresh_s: float = 0.5) -> None:
        self.home = home
        self.stale_after_s = stale_after_s
        self.refresh_s = refresh_s
        self._cache: dict[Path, _Entry] = {}
        # answers are recomputed at most every `refresh_s`: a request is then a dict lookup,
        # which keeps the gate's tail latency low while a replay and its judge share the CPU
        self._answers: dict[tuple[str, str | None], tuple[float, GateAnswer, Verdict | None]] = {}

    def runs(self) -> list[str]:
        if not self.home.exists():
            return []
        out = []
        for p in sorted(self.home.iterdir()):
            try:
                out.append(RunLayout.existing(self.home, p.name).run_id)
            except RunNotFound:
                continue
        return out

    def layout(self, run_id: str) -> RunLayout:
        return RunLayout.existing(self.home, run_id)

    def _load(self, path: Path, parse: Callable[[bytes], Any] = orjson.loads) -> Any:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        hit = self._cache.get(path)
        if hit is None or hit.mtime_ns != st.st_mtime_ns:
            hit = _Entry(st.st_mtime_ns, parse(path.read_bytes()))
            self._cache[path] = hit
        return hit.doc

    def candidates(self, run_id: str) -> list[str]:
        """The run's candidates: those it was started with (run.json), then any with a
        published verdict."""
        layout = self.layout(run_id)
        run = self._load(layout.run_file) or {}
        declared = [c for c in run.get("candidates", []) if valid_name(c)] if isinstance(run, dict) else []
        return declared + [c for c in layout.published_candidates() if c not in declared]

    def waivers(self, run_id: str) -> list[Waiver]:
        doc = self._load(self.layout(run_id).waivers)
        if not doc:
            return []
        try:
            return list(WaiverFile.model_validate(doc).waivers)
        except ValidationError as err:
            # a hand-edited file must not take the gate down: no waiver applies, and it says so
            problem = err.errors()[0]["msg"]
            raise ShadowdiffError(f"waivers.json of run {run_id} is invalid, so no waiver applies: {problem}") from err

    def add_waiver(self, run_id: str, waiver: Waiver) -> list[Waiver]:
        layout = self.layout(run_id)
        try:
            items = [*self.waivers(run_id), waiver]
        except ShadowdiffError:
            items = [waiver]
        tmp = layout.dir / ".waivers.json.tmp"
        tmp.write_bytes(WaiverFile(waivers=items).model_dump_json(indent=2).encode())
        os.replace(tmp, layout.waivers)
        self.forget(run_id)
        return items

    def forget(self, run_id: str) -> None:
        """Drop cached answers of a run (after a waiver is recorded)."""
        for key in [k for k in self._answers if k[0] == run_id]:
            del self._answers[key]

    def answer(self, run_id: str, candidate: str | None = None) -> tuple[GateAnswer, Verdict | None]:
        """The gate's answer and the verdict document behind it (None before any verdict),
        at most `refresh_s` old. Raises RunNotFound / UnknownCandidate."""
        key = (run_id, candidate)
        hit = self._answers.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.refresh_s:
            return hit[1], hit[2]
        answer, doc = self._answer(run_id, candidate)
        self._answers[key] = (now, answer, doc)
        return answer, doc

    def _answer(self, run_id: str, candidate: str | None) -> tuple[GateAnswer, Verdict | None]:
        layout = self.layout(run_id)
        names = self.candidates(run_id)
        if candidate is not None and candidate not in names:
            shown = candidate[:80] if isinstance(candidate, str) else candidate
            raise UnknownCandidate(f"run {run_id!r} has no candidate {shown!r} (has {names})")
        name = candidate or (names[0] if names else None)
        path = layout.verdict(name) if name else None
        doc = self._load(path, _parse_verdict) if path else None
        if not isinstance(doc, Verdict):
            reasons = [doc.problem if isinstance(doc, _NotAVerdict) else "no data: no verdict published for this run yet"]
            return GateAnswer(run_id=run_id, candidate=name, verdict="pending", reasons=reasons), None
        verdict: VerdictValue = doc.verdict
        reasons = list(doc.reasons)
        stale = False
        age = time.time() - os.stat(path).st_mtime if path else 0.0
        if doc.run_active and age > self.stale_after_s and not doc.terminal:
            # a terminal verdict was decided and acted on; a writer gone quiet since changes nothing
            verdict, stale = "pending", True
            reasons = [f"stale: the replay last published a verdict {age:.0f} s ago and has not finished", *reasons]
        applied: list[Waiver] = []
        if verdict == "no_go":
            try:
                waivers = self.waivers(run_id)
            except ShadowdiffError as err:
                waivers, reasons = [], [str(err), *reasons]
            verdict, applied = _waive(doc, waivers, str(name), datetime.now(UTC))
            reasons = [w.describe() for w in applied] + reasons
        answer = GateAnswer(
            run_id=run_id,
            candidate=name,
            verdict=verdict,
            reasons=reasons,
            failing_segments=doc.failing_segments,
            waivers_applied=applied,
            stale=stale,
            pairs=doc.data.pairs,
            digest=doc.digest,
            generated_at=doc.generated_at,
            policy_digest=doc.policy.digest,
        )
        return answer, doc


def _parse_verdict(data: bytes) -> Verdict | _NotAVerdict:
    try:
        return read_verdict(data)
    except ValidationError as err:
        where = ".".join(str(x) for x in err.errors()[0]["loc"])
        return _NotAVerdict(f"no valid verdict: the published file is not a verdict document ({where}: {err.errors()[0]['msg']})")


def _waive(doc: Verdict, waivers: list[Waiver], candidate: str, now: datetime) -> tuple[VerdictValue, list[Waiver]]:
    """GO when every failing check and segment is covered by an unexpired waiver for this
    candidate; the waivers that did it."""
    if doc.terminal:  # the failures of the look that made the NO_GO final
        fails = {(c.check, c.segment) for c in doc.terminal.failing_checks}
    else:
        fails = {(c.check, c.segment) for c in doc.checks if c.status == "fail"}
    live = [w for w in waivers if w.active(now) and w.candidate in (None, candidate)]
    used = [w for w in live if any(w.covers(c, s, candidate) for c, s in fails)]
    if fails and all(any(w.covers(c, s, candidate) for w in live) for c, s in fails):
        return "go", used
    return "no_go", []
