"""The outcome worker: reads outcome records (a Kafka topic or window, or a recording) into the
run's outcome store, `outcomes-<worker>.duckdb`, and publishes what it stored as checkpoint
exports under `<run>/outcome-exports/<worker>/` for the judge, which joins them to the pairs by
request id (diff/outcomes.py).

Exactly-once effect, as the replay: each batch's rows, dead letters and partition checkpoints
are committed in one DuckDB transaction, and the source's offsets are committed only after it;
rows are keyed by source coordinates (INSERT OR IGNORE), so a crash between the two commits
re-reads a batch that then adds nothing. A restart resumes from the store's checkpoints.
Outcomes need no pair to be stored: one that arrives before its request's pair is joined once
the pair is there, one for a request the run never stored is reported by the judge. The worker
itself is replay/records.py's, given the outcome store's kind."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import pyarrow as pa

from shadowdiff.replay.formats import payload_reader
from shadowdiff.replay.records import RecordKind, RecordStats, keyed_columns, run_records
from shadowdiff.schemas import OUTCOME_STORE_SCHEMA_VERSION, outcome_store_ddl
from shadowdiff.schemas.config import OutcomeSpec, RunConfig
from shadowdiff.schemas.errors import ConfigError
from shadowdiff.schemas.layout import OUTCOME_EXPORT_TABLES, RunLayout
from shadowdiff.schemas.outcomes import OutcomeCodec

OUTCOME_EXPORTS = "outcome-exports"  # the folder under the run (schemas/layout.py)
OUTCOMES_COMPLETE = "outcomes_complete"  # run_meta: the worker read its whole source


def _outcome_table(rows: list[tuple[Any, ...]], now: datetime) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {
            **keyed_columns(cols),
            "request_id": pa.array(cols[3], pa.string()),
            "label": pa.array(cols[4], pa.string()),
            "value": pa.array(cols[5], pa.float64()),
            "observed_at": pa.array(cols[6], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "received_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
        }
    )


OUTCOME_KIND = RecordKind(
    what="outcome",
    store=lambda run: RunLayout(run.home, run.id).outcome_store(run.worker),
    ddl=outcome_store_ddl(),
    schema_version=OUTCOME_STORE_SCHEMA_VERSION,
    table="outcomes",
    arrow=_outcome_table,
    export_tables=OUTCOME_EXPORT_TABLES,
    export_folder=OUTCOME_EXPORTS,
    complete_key=OUTCOMES_COMPLETE,
)


def outcome_spec(cfg: RunConfig) -> OutcomeSpec:
    if cfg.outcomes is None:
        raise ConfigError("outcomes", ["the run config has no [outcomes] section: where do the outcome records come from?"])
    return cfg.outcomes


def run_outcomes(
    cfg: RunConfig, stop: threading.Event | None = None, checkpoint_every_s: float = 15.0, max_batches: int | None = None
) -> RecordStats:
    """Read the run's outcome source into its outcome store until the source ends (a recording
    or a window) or `stop` is set; exports what it stored every `checkpoint_every_s` and at the
    end."""
    spec = outcome_spec(cfg)
    codec = OutcomeCodec(spec, payload_reader(spec))
    return run_records(cfg.run, spec.source, codec, OUTCOME_KIND, stop, checkpoint_every_s, max_batches)
