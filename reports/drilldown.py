"""evidently's own data-drift page for drill-down: run on a bounded sample (its preset takes
~70 s on 1M rows here; 5k rows take ~1 s), current traffic vs the reference the policy names,
or else the first vs the second half of the run by event time."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import duckdb
import pandas as pd

from shadowdiff.diff.load import RunInfo
from shadowdiff.schemas.sql import ident

log = logging.getLogger(__name__)
SAMPLE_ROWS = 5_000


def evidently_drift(con: duckdb.DuckDBPyConnection, info: RunInfo, out: Path) -> Path | None:
    cols = info.numeric + info.categorical
    if not cols:
        return None
    sel = ", ".join(f"features.{ident(c)} AS {ident(c)}" for c in cols)
    (mid,) = con.execute(
        "SELECT to_timestamp((epoch(min(event_time)) + epoch(max(event_time))) / 2) FROM requests"
    ).fetchone() or (None,)
    if mid is None:
        return None
    sample = f'ORDER BY hash(part, "offset") LIMIT {SAMPLE_ROWS}'
    ref = con.execute(f"SELECT {sel} FROM requests WHERE event_time < $m {sample}", {"m": mid}).df()
    cur = con.execute(f"SELECT {sel} FROM requests WHERE event_time >= $m {sample}", {"m": mid}).df()
    if len(ref) < 30 or len(cur) < 30:
        return None
    ref, cur = _inert(ref, info.categorical), _inert(cur, info.categorical)
    try:
        # evidently warns about numpy internals and its own divisions by zero; nothing a
        # caller can act on (and a test run's warnings-as-errors would skip the page)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from evidently import Report
            from evidently.presets import DataDriftPreset

            snapshot = Report([DataDriftPreset()]).run(reference_data=ref, current_data=cur)
            snapshot.save_html(str(out))
    except Exception as err:  # drill-down is a convenience; the report stands without it
        log.warning("evidently drill-down skipped: %s", err)
        return None
    return out


# evidently writes the values it shows into an inline <script> as JSON, without escaping "<":
# a traffic value "</script><script>alert(1)</script>" would end its script and run. Values are
# shown with look-alike angle brackets instead, which carry no meaning to HTML.
_INERT = str.maketrans({"<": "\u2039", ">": "\u203a"})


def _inert(frame: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """The frame with every categorical value made harmless inside an inline script."""
    out = frame.copy()
    for col in categorical:
        out[col] = out[col].map(lambda v: v.translate(_INERT) if isinstance(v, str) else v)
    return out
