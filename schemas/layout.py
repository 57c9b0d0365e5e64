"""Where a run's files live: the one place that spells the run folder's layout, for the replay
that writes it, the judge that publishes into it and the gate that reads it.

    <home>/<run id>/
        store-<worker>.duckdb         pairs, one file per writer (replay)
        exports/<worker>/<seq>/       the rows a writer committed since its previous export, as
                                      Parquet, for readers while it writes (replay/exports.py)
        outcomes-<worker>.duckdb      outcomes joined to the pairs when judging, one file per
                                      outcome worker (replay/outcomes.py)
        outcome-exports/<worker>/<seq>/  the outcome rows a worker committed since its previous
                                      export, as Parquet (what every judge reads)
        served-<worker>.duckdb        served traffic (inference logs) of a canary analysis or a
                                      rollback verification, one file per worker (replay/served.py)
        served-exports/<worker>/<seq>/   the served rows a worker committed since its previous export
        judge-cache.duckdb            the watching judge's copy of every export it has read
        run.json                      the run's candidates, written when the replay starts
        served-run.json               a served-traffic run's config: what its judge compares
        policy.json                   the policy in force, stored with the run when it starts
        verdict-<candidate>.json      the published verdict the gate serves
        verdicts/<label>/verdict-<candidate>.json   re-judged under another policy (not served)
        waivers.json                  people's waivers (gate service)
        report-<candidate>.html       the HTML report
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from shadowdiff.schemas.errors import RunNotFound

# the store tables a writer exports at each checkpoint, with the columns that key their rows
EXPORT_TABLES = ("requests", "outputs", "dead_letters", "quota_samples")
EXPORT_KEYS = {
    "requests": 'source, part, "offset"',
    "outputs": 'source, part, "offset", variant',
    "dead_letters": 'source, part, "offset"',
    "quota_samples": 'source, part, "offset", quota',
}

# the outcome store's tables exported at each of its checkpoints, keyed as above
OUTCOME_EXPORT_TABLES = ("outcomes", "dead_letters")
OUTCOME_EXPORT_KEYS = {"outcomes": 'source, part, "offset"', "dead_letters": 'source, part, "offset"'}

# the served-traffic store's tables exported at each of its checkpoints, keyed as above
SERVED_EXPORT_TABLES = ("served", "dead_letters")
SERVED_EXPORT_KEYS = {"served": 'source, part, "offset"', "dead_letters": 'source, part, "offset"'}

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # candidate names, policy labels


@dataclass(frozen=True)
class RunLayout:
    home: Path
    run_id: str

    @classmethod
    def existing(cls, home: Path, run_id: str) -> RunLayout:
        """The layout of a run that exists; RunNotFound for an invalid id or a run with no store
        (an id is checked before it touches the file system)."""
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
            raise RunNotFound(f"run {run_id[:80]!r} not found (not a valid run id)")
        layout = cls(home, run_id)
        if not layout.dir.is_dir() or not (
            layout.stores() or layout.export_folders() or layout.served_stores() or layout.served_export_folders()
        ):
            raise RunNotFound(f"run {run_id!r} not found under {home} (no store-*.duckdb, no exports)")
        return layout

    @property
    def dir(self) -> Path:
        return self.home / self.run_id

    def stores(self) -> list[Path]:
        return sorted(self.dir.glob("store-*.duckdb"))

    def store(self, worker: str) -> Path:
        return self.dir / f"store-{worker}.duckdb"

    @property
    def exports(self) -> Path:
        return self.dir / "exports"

    def worker_exports(self, worker: str) -> Path:
        return self.exports / worker

    def export_folders(self) -> list[Path]:
        """Every published export (a folder with its manifest), in worker then number order."""
        return sorted(m.parent for m in self.exports.glob("*/[0-9]*/manifest.json"))

    def outcome_store(self, worker: str) -> Path:
        return self.dir / f"outcomes-{worker}.duckdb"

    @property
    def outcome_exports(self) -> Path:
        return self.dir / "outcome-exports"

    def outcome_export_folders(self) -> list[Path]:
        """Every published outcome export, in worker then number order."""
        return sorted(m.parent for m in self.outcome_exports.glob("*/[0-9]*/manifest.json"))

    def served_store(self, worker: str) -> Path:
        return self.dir / f"served-{worker}.duckdb"

    def served_stores(self) -> list[Path]:
        return sorted(self.dir.glob("served-*.duckdb"))

    @property
    def served_exports(self) -> Path:
        return self.dir / "served-exports"

    def served_export_folders(self) -> list[Path]:
        """Every published served-traffic export, in worker then number order."""
        return sorted(m.parent for m in self.served_exports.glob("*/[0-9]*/manifest.json"))

    @property
    def judge_cache(self) -> Path:
        return self.dir / "judge-cache.duckdb"

    def heartbeats(self) -> list[Path]:
        return sorted(self.exports.glob("*/heartbeat.json"))

    @property
    def run_file(self) -> Path:
        return self.dir / "run.json"

    @property
    def served_config(self) -> Path:
        return self.dir / "served-run.json"

    @property
    def policy(self) -> Path:
        return self.dir / "policy.json"

    @property
    def waivers(self) -> Path:
        return self.dir / "waivers.json"

    def verdict(self, candidate: str, label: str | None = None) -> Path:
        """The published verdict, or with `label` one re-judged under another policy."""
        name = f"verdict-{candidate}.json"
        return self.dir / name if label is None else self.dir / "verdicts" / label / name

    def published_candidates(self) -> list[str]:
        return sorted(p.name[len("verdict-") : -len(".json")] for p in self.dir.glob("verdict-*.json"))

    def report(self, candidate: str) -> Path:
        return self.dir / f"report-{candidate}.html"


def valid_name(name: object) -> bool:
    return isinstance(name, str) and NAME.fullmatch(name) is not None
