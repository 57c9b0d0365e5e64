"""Build a replay from a validated config and run it: the one entry point the CLI calls."""

from __future__ import annotations

import logging
import platform
import threading
from importlib import metadata

from shadowdiff.replay.exports import Exporter
from shadowdiff.replay.models.base import ModelClient
from shadowdiff.replay.models.call_process import ProcessHttpModel
from shadowdiff.replay.models.http import HttpModel
from shadowdiff.replay.models.inprocess import PythonModel, load_callable
from shadowdiff.replay.preflight import preflight
from shadowdiff.replay.runner import CheckpointHook, Replayer, RunStats
from shadowdiff.replay.sources import WindowSource, open_source
from shadowdiff.replay.store import StoreWriter
from shadowdiff.schemas.config import ModelSpec, RunConfig
from shadowdiff.schemas.records import source_complete_key

log = logging.getLogger(__name__)


def make_client(spec: ModelSpec, cfg: RunConfig | None = None) -> ModelClient:
    if spec.kind == "python":
        return PythonModel(spec)
    if cfg is not None:
        # the client reads its answers as the pipeline will, so answers that cannot be read
        # count as failures for its circuit breaker
        spec = spec.model_copy(update={"output": cfg.output_of(spec)})
    if spec.call_process:
        return ProcessHttpModel(spec)
    return HttpModel(spec)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("shadowdiff", "kafka-python", "duckdb", "polars", "pyarrow", "aiohttp"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def validate_targets(cfg: RunConfig) -> None:
    """Import every python model before anything is consumed (a bad target is a config error)."""
    specs = list(cfg.candidates) + ([cfg.baseline.model] if cfg.baseline.model else [])
    for spec in specs:
        if spec.kind == "python" and spec.target:
            load_callable(spec.target)


def run_replay(
    cfg: RunConfig,
    stop: threading.Event | None = None,
    on_checkpoint: CheckpointHook | None = None,
    checkpoint_every_s: float = 15.0,
    max_batches: int | None = None,
    checked: bool = False,
) -> RunStats:
    """Replay the configured source into the run's store until it ends or `stop` is set.
    Raises ConfigError before anything is consumed when a model target cannot be imported or
    the source or a model cannot be reached (`checked`: the caller already made sure)."""
    if not checked:
        validate_targets(cfg)
        preflight(cfg)
    writer = StoreWriter(cfg)
    try:
        writer.start_meta(_versions())
        source = open_source(cfg.source, writer.checkpoints(), member=f"{cfg.run.id}.{cfg.run.worker}")
        try:
            if isinstance(source, WindowSource):
                spec = source.spec
                writer.write_meta(
                    {
                        "window": {
                            "topic": spec.topic,
                            "start": spec.start,
                            "end": spec.end,
                            "start_offsets": source.window_start,
                            "end_offsets": source.window_end,
                        }
                    }
                )
            baseline = make_client(cfg.baseline.model, cfg) if cfg.baseline.model and cfg.baseline.kind == "model" else None
            candidates = {c.name: make_client(c, cfg) for c in cfg.candidates}
            exporter = Exporter(writer)

            def checkpoint(writer: StoreWriter, stats: RunStats, final: bool) -> None:
                if final:  # before the final export, so its manifest has them too
                    writer.write_meta({"last_stats": stats.summary(), source_complete_key(cfg.run.worker): True})
                exporter.export_or_record(final)
                if on_checkpoint is not None:
                    on_checkpoint(writer, stats, final)

            replayer = Replayer(cfg, writer, source, baseline, candidates, checkpoint, checkpoint_every_s)
            return replayer.run(stop, max_batches=max_batches)  # its final checkpoint stored the statistics
        finally:
            source.close()
    finally:
        writer.close()
