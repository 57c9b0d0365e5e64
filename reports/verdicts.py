"""Published verdicts as the gate sees them: read from the run folder (never from the store,
which a replay may be writing), cached by file mtime, and never more optimistic than the data:
no verdict yet → pending "no data"; a verdict from a writer that stopped publishing → pending
"stale"; a NO_GO whose every failure is waived by a person → go, saying so."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from schemas.errors import RunNotFound

RUN_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


@dataclass
class _Entry:
    mtime_ns: int
    doc: dict[str, Any]


class VerdictStore:
    def __init__(self, home: Path, stale_after_s: float = 300.0, refresh_s: float = 0.5) -> None:
        self.home = home
        self.stale_after_s = stale_after_s
        self.refresh_s = refresh_s
        self._cache: dict[Path, _Entry] = {}
        # answers are recomputed at most every `refresh_s`: a request is then a dict lookup,
        # which keeps the gate's tail latency low while a replay and its judge share the CPU
        self._answers: dict[tuple[str, str | None], tuple[float, dict[str, Any]]] = {}

    def runs(self) -> list[str]:
        if not self.home.exists():
            return []
        return sorted(p.name for p in self.home.iterdir() if p.is_dir() and any(p.glob("store-*.duckdb")))

    def run_dir(self, run_id: str) -> Path:
        d = self.home / run_id
        if "/" in run_id or run_id.startswith(".") or not d.is_dir() or not any(d.glob("store-*.duckdb")):
            raise RunNotFound(f"run {run_id!r} not found")
        return d

    def _load(self, path: Path) -> dict[str, Any] | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        hit = self._cache.get(path)
        if hit is None or hit.mtime_ns != st.st_mtime_ns:
            hit = _Entry(st.st_mtime_ns, dict(orjson.loads(path.read_bytes())))
            self._cache[path] = hit
        return hit.doc

    def candidates(self, run_id: str) -> list[str]:
        d = self.run_dir(run_id)
        return sorted(p.name[len("verdict-") : -len(".json")] for p in d.glob("verdict-*.json"))

    def waivers(self, run_id: str) -> list[dict[str, Any]]:
        doc = self._load(self.run_dir(run_id) / "waivers.json")
        return list(doc.get("waivers", [])) if doc else []

    def add_waiver(self, run_id: str, waiver: dict[str, Any]) -> list[dict[str, Any]]:
        d = self.run_dir(run_id)
        items = [*self.waivers(run_id), waiver]
        tmp = d / ".waivers.json.tmp"
        tmp.write_bytes(orjson.dumps({"waivers": items}, option=orjson.OPT_INDENT_2))
        os.replace(tmp, d / "waivers.json")
        self.forget(run_id)
        return items

    def status(self, run_id: str, candidate: str | None = None) -> dict[str, Any]:
        """The gate's answer: verdict in {go, no_go, pending}, reasons, and the document;
        at most `refresh_s` old."""
        key = (run_id, candidate)
        hit = self._answers.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.refresh_s:
            return hit[1]
        answer = self._status(run_id, candidate)
        self._answers[key] = (now, answer)
        return answer

    def forget(self, run_id: str) -> None:
        """Drop cached answers of a run (after a waiver is recorded)."""
        for key in [k for k in self._answers if k[0] == run_id]:
            del self._answers[key]

    def _status(self, run_id: str, candidate: str | None) -> dict[str, Any]:
        d = self.run_dir(run_id)
        names = self.candidates(run_id)
        name = candidate or (names[0] if names else None)
        doc = self._load(d / f"verdict-{name}.json") if name else None
        if doc is None:
            return {
                "run_id": run_id,
                "candidate": name,
                "verdict": "pending",
                "reasons": ["no data: no verdict published for this run yet"],
                "document": None,
            }
        verdict = doc["verdict"]
        reasons = list(doc["reasons"])
        age = time.time() - os.stat(d / f"verdict-{name}.json").st_mtime
        if doc.get("run_active") and age > self.stale_after_s:
            verdict = "pending"
            reasons = [f"stale: the replay last published a verdict {age:.0f} s ago and has not finished", *reasons]
        waived: list[dict[str, Any]] = []
        if verdict == "no_go":
            fails = {(c["check"], c["segment"]) for c in doc["checks"] if c["status"] == "fail"}
            ws = [w for w in self.waivers(run_id) if w.get("candidate") in (None, name)]
            covered = {(w["check"], w.get("segment", "*")) for w in ws}
            if fails and all((c, s) in covered or (c, "*") in covered for c, s in fails):
                verdict = "go"
                waived = ws
                reasons = [f"waived by {w['by']}: {w['check']} in {w.get('segment', '*')} ({w['reason']})" for w in ws] + reasons
        return {
            "run_id": run_id,
            "candidate": name,
            "verdict": verdict,
            "reasons": reasons,
            "failing_segments": doc.get("failing_segments", []),
            "waivers": waived,
            "pairs": doc["data"]["pairs"],
            "digest": doc.get("digest"),
            "generated_at": doc.get("generated_at"),
            "document": doc,
        }
