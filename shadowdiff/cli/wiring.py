"""Glue between packages that must not import each other: the run folder's shared files (the
run's candidates and the policy it owns), the replay's checkpoint hook that runs the judge on
the writer's own connection (DuckDB's one-writer rule), and publishing verdicts as JSON files
that the gate service and `shadowdiff gate` read without touching the store."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from shadowdiff.replay.store import WRITER_MEMORY
from shadowdiff.schemas.config import RunConfig, ServedRunConfig
from shadowdiff.schemas.errors import ConfigError
from shadowdiff.schemas.layout import RunLayout
from shadowdiff.schemas.policy import Policy, parse_policy
from shadowdiff.schemas.verdict import Verdict, read_verdict, verdict_bytes

log = logging.getLogger(__name__)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write by rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def publish(home: Path, run_id: str, verdict: Verdict, label: str | None = None) -> Path:
    """The verdict the gate serves; with `label`, one kept beside it that the gate does not serve."""
    path = RunLayout(home, run_id).verdict(verdict.candidate, label)
    _write_atomic(path, verdict_bytes(verdict))
    return path


def run_policy(home: Path, run_id: str) -> Policy | None:
    """The policy the run was started with, if it stored one."""
    path = RunLayout(home, run_id).policy
    if not path.exists():
        return None
    return parse_policy(orjson.loads(path.read_bytes()), origin=str(path))


def start_run(cfg: RunConfig, policy: Policy | None) -> tuple[RunConfig, Policy]:
    """Record the run's candidates and the policy it owns before anything is consumed, and
    return the config to replay (`sampling.min_per_segment = "policy"` resolved to the policy's
    min_samples) and the policy in force. A restarted run keeps its policy: a different one
    given again is refused (re-judge under it with `shadowdiff judge --policy` instead)."""
    layout = RunLayout(cfg.run.home, cfg.run.id)
    in_force = _own_policy(cfg.run.home, cfg.run.id, policy)
    _write_atomic(layout.run_file, orjson.dumps({"run_id": cfg.run.id, "candidates": [c.name for c in cfg.candidates]}))
    if cfg.sampling.min_per_segment == "policy":
        sampling = cfg.sampling.model_copy(update={"min_per_segment": in_force.min_samples})
        cfg = cfg.model_copy(update={"sampling": sampling})
    return cfg, in_force


def _own_policy(home: Path, run_id: str, policy: Policy | None) -> Policy:
    """The policy a starting run keeps: the one it stored, else the one given (stored now)."""
    from shadowdiff.diff.judge import policy_digest

    stored = run_policy(home, run_id)
    if stored is not None and policy is not None and policy_digest(policy) != policy_digest(stored):
        raise ConfigError(
            "--policy",
            [
                f"run {run_id} was started with another policy (digest {policy_digest(stored)[:12]}); "
                "a run keeps its policy: judge it under this one with `shadowdiff judge --policy ... --label ...`"
            ],
        )
    in_force = stored or policy or Policy()
    if stored is None:
        _write_atomic(RunLayout(home, run_id).policy, in_force.model_dump_json(indent=2).encode())
    return in_force


def start_served_run(cfg: ServedRunConfig, policy: Policy | None) -> Policy:
    """A canary analysis or rollback verification starting: its policy, its one answer's name
    (run.json) and its config (what any later judge of its exports compares)."""
    layout = RunLayout(cfg.run.home, cfg.run.id)
    in_force = _own_policy(cfg.run.home, cfg.run.id, policy)
    _write_atomic(layout.run_file, orjson.dumps({"run_id": cfg.run.id, "candidates": [cfg.compare.answer_name()]}))
    _write_atomic(layout.served_config, cfg.model_dump_json(indent=2).encode())
    return in_force


def served_config(home: Path, run_id: str) -> ServedRunConfig | None:
    """The config a served-traffic run was started with; None for a shadow run."""
    path = RunLayout(home, run_id).served_config
    if not path.exists():
        return None
    try:
        cfg = ServedRunConfig.model_validate_json(path.read_bytes())
    except ValidationError as err:
        raise ConfigError(str(path), [e["msg"] for e in err.errors()]) from err
    # judged where the run folder is now (another machine's copy, a moved home)
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"home": home})})


def judge_served_and_publish(
    con: Any,
    cfg: ServedRunConfig,
    policy: Policy,
    from_exports: bool,
    final: bool = False,
    label: str | None = None,
    silent_after_s: float = 120.0,
) -> Verdict:
    """Judge a served-traffic run (from the workers' exports, or the writer's own `served`
    table) and publish: the served verdict latched at its first GO or NO_GO."""
    from shadowdiff.diff.finality import latch
    from shadowdiff.diff.served import judge_served
    from shadowdiff.diff.served_evidence import load_served, served_coverage

    home, run_id = cfg.run.home, cfg.run.id
    layout = RunLayout(home, run_id)
    manifests = load_served(con, layout if from_exports else None)
    verdict = judge_served(con, cfg, policy, manifests)
    verdict.run_active = not final
    covered = served_coverage(layout, manifests, silent_after_s) if from_exports else None
    if covered is not None:
        add_coverage(verdict, covered)
    if label is not None:
        verdict.policy.label = label
    else:
        verdict = latch(published(home, run_id, verdict.candidate), verdict)
    publish(home, run_id, verdict, label)
    return verdict


def step_config(
    cfg: ServedRunConfig,
    run_id: str | None = None,
    since: str | None = None,
    lkg_offset_s: float | None = None,
    lkg_length_s: float | None = None,
) -> ServedRunConfig:
    """The config of one rollout step or one rollback from a shared one: its own run id, the
    subject's traffic since `since` (a canary's stable side over the same time), and for a
    rollback the last-known-good window `lkg_offset_s` before it, `lkg_length_s` long."""
    from datetime import UTC, datetime, timedelta

    data = cfg.model_dump()
    if run_id is not None:
        data["run"]["id"] = run_id
    if since is not None:
        try:
            start = datetime.now(UTC) if since == "now" else datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError as err:
            raise ConfigError("--since", [f"{since!r}: expected an RFC 3339 time or 'now'"]) from err
        data["compare"]["subject"]["start"] = start
        if cfg.compare.mode == "canary":
            data["compare"]["reference"]["start"] = start
        elif lkg_offset_s is not None:
            lkg = start - timedelta(seconds=lkg_offset_s)
            length = timedelta(seconds=lkg_length_s or lkg_offset_s)
            data["compare"]["reference"]["start"], data["compare"]["reference"]["end"] = lkg, min(lkg + length, start)
    try:
        return ServedRunConfig.model_validate(data)
    except ValidationError as err:
        from shadowdiff.schemas.config import format_validation_error

        raise ConfigError("canary", format_validation_error(err)) from err


def served_judge_hook(cfg: ServedRunConfig, policy: Policy, stop_when_decided: Any = None):  # type: ignore[no-untyped-def]
    """After each checkpoint of a served worker: judge on its own connection (DuckDB's one
    writer) and publish, unless other workers write the run (then `shadowdiff judge --watch`).
    `stop_when_decided`: an Event set once the published verdict is terminal."""
    warned: list[str] = []

    def hook(writer: Any, stats: Any, final: bool) -> None:
        others = sorted({p.name for p in RunLayout(cfg.run.home, cfg.run.id).served_exports.glob("*")} - {cfg.run.worker})
        if others:
            if not warned:
                log.warning("run %s is also written by %s: this worker does not judge it", cfg.run.id, ", ".join(others))
                warned.append(cfg.run.id)
            return
        writer.con.execute("SET memory_limit = '2GB'")
        try:
            doc = judge_served_and_publish(writer.con, cfg, policy, from_exports=False, final=final)
            if stop_when_decided is not None and doc.terminal is not None:
                stop_when_decided.set()
        except Exception:  # the verdict is advisory while writing; never kill the worker for it
            log.exception("judging run %s failed; the worker goes on", cfg.run.id)
        finally:
            writer.con.execute(f"SET memory_limit = '{WRITER_MEMORY}'")

    return hook


def judge_and_publish(
    con: Any,
    home: Path,
    run_id: str,
    policy: Policy,
    final: bool = False,
    label: str | None = None,
    silent_after_s: float = 120.0,
) -> list[Verdict]:
    from shadowdiff.diff.exports import coverage
    from shadowdiff.diff.finality import latch
    from shadowdiff.diff.judge import judge_all
    from shadowdiff.diff.outcomes import load_outcomes

    load_outcomes(con, RunLayout(home, run_id))  # the truth that arrived so far, from the outcome workers' exports
    covered = coverage(con, silent_after_s)
    out: list[Verdict] = []
    for verdict in judge_all(con, policy):
        verdict.run_active = not final
        if covered is not None:
            add_coverage(verdict, covered)
        if label is not None:
            verdict.policy.label = label
        else:
            # the served verdict: its first GO or NO_GO is the one a pipeline acted on
            verdict = latch(published(home, run_id, verdict.candidate), verdict)
        publish(home, run_id, verdict, label)
        out.append(verdict)
    return out


def add_coverage(verdict: Verdict, covered: Any) -> None:
    """The workers and exports a verdict read, and the reasons a silent or failing one gives;
    outside the digest: which exports a look read is not what was judged."""
    verdict.coverage = covered
    for w in covered.workers:
        if w.silent:
            last = f"last export {w.exports} at {w.last_export_at}" if w.exports else "no export yet"
            verdict.reasons.append(
                f"worker {w.worker} has not reported for {w.silent_for_s or 0:.0f} s ({last}): "
                "its later data is not in this verdict"
            )
        elif w.failing_exports:
            verdict.reasons.append(
                f"worker {w.worker}: its last {w.failing_exports} checkpoint exports failed ({w.last_export_failure}): "
                f"its rows since its export {w.exports} are not in this verdict yet"
            )


def published(home: Path, run_id: str, candidate: str) -> Verdict | None:
    """The verdict the gate serves now for a candidate, if any (None for a file that is not one)."""
    path = RunLayout(home, run_id).verdict(candidate)
    try:
        return read_verdict(path.read_bytes())
    except (FileNotFoundError, ValidationError):
        return None


def other_writers(home: Path, run_id: str, worker: str) -> list[str]:
    """Workers other than `worker` that have written this run (a store or exports of their own)."""
    layout = RunLayout(home, run_id)
    names = {p.name[len("store-") : -len(".duckdb")] for p in layout.stores()}
    names |= {p.name for p in layout.exports.glob("*") if p.is_dir()} if layout.exports.is_dir() else set()
    return sorted(names - {worker})


def judge_hook(home: Path, run_id: str, policy: Policy, worker: str = "w0"):  # type: ignore[no-untyped-def]
    warned: list[str] = []

    def hook(writer: Any, stats: Any, final: bool) -> None:
        others = other_writers(home, run_id, worker)
        if others:
            # judging its own store would publish a verdict on part of the run's data
            if not warned:
                log.warning(
                    "run %s is also written by %s: this worker does not judge it; run `shadowdiff judge --run %s --watch`",
                    run_id,
                    ", ".join(others),
                    run_id,
                )
                warned.append(run_id)
            return
        # the writer runs on a small buffer budget (flat memory); judging wants more, briefly
        writer.con.execute("SET memory_limit = '2GB'")
        writer.con.execute("SET threads = 2")
        try:
            judge_and_publish(writer.con, home, run_id, policy, final)
        except Exception:  # the verdict is advisory while writing; never kill the replay for it
            log.exception("judging run %s failed; the replay goes on", run_id)
        finally:
            writer.con.execute(f"SET memory_limit = '{WRITER_MEMORY}'")
            writer.con.execute("SET threads = 1")

    return hook
