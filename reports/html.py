"""The HTML diff report: one self-contained, autoescaped file (inline CSS and SVG, no script,
no network), plus evidently's drift page beside it for drill-down when a reference exists."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from shadowdiff.diff.load import open_run, run_info
from shadowdiff.reports import svg
from shadowdiff.reports.charts import ChartData, collect
from shadowdiff.schemas.errors import ShadowdiffError
from shadowdiff.schemas.gate import Waiver
from shadowdiff.schemas.verdict import CheckResult, Verdict

log = logging.getLogger(__name__)

_env = Environment(
    loader=PackageLoader("shadowdiff.reports", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["json"] = lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2, default=str).decode()
_env.filters["pct"] = lambda v: "–" if v is None else f"{v:.2%}"
_env.filters["num"] = lambda v: "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def _charts_markup(cd: ChartData) -> dict[str, Markup]:
    return {
        "diff": svg.histogram("Candidate − baseline score (share of pairs)", cd.diff_edges, cd.diff_hist),
        "scatter": svg.scatter("Baseline vs candidate score", cd.scatter_x, cd.scatter_y),
        "latency": svg.histogram("Latency, ms (log bins)", cd.latency_edges, cd.latency_hist),
        "errors": svg.lines("Error rate over event time", cd.time_labels, cd.error_series),
    }


def drift_matrix(doc: Verdict) -> tuple[list[str], list[str], dict[tuple[str, str], CheckResult]]:
    rows = [c for c in doc.checks if c.kind == "feature_drift" and c.feature]
    feats = sorted({c.feature for c in rows if c.feature})
    segs = sorted({c.segment for c in rows}, key=lambda s: (s != "all", s))
    return feats, segs, {(c.feature or "", c.segment): c for c in rows}


_STATUS_RANK = {"fail": 0, "warn": 1, "undecided": 2, "pending": 3, "n/a": 4, "pass": 5}


def segment_matrix(doc: Verdict) -> tuple[list[str], dict[tuple[str, str], CheckResult]]:
    """The segment table's columns, one per check of the policy in force (in its order), and the
    cell of each check and segment: the worst result there (a feature check has one per
    feature; the failing feature is the one to show)."""
    declared = [c.id for c in doc.policy.checks]
    seen = list(dict.fromkeys(c.check for c in doc.checks))
    columns = declared or seen
    columns += [c for c in seen if c not in columns]
    cells: dict[tuple[str, str], CheckResult] = {}
    for c in doc.checks:
        key = (c.check, c.segment)
        have = cells.get(key)
        if have is None or _STATUS_RANK.get(c.status, 5) < _STATUS_RANK.get(have.status, 5):
            cells[key] = c
    return columns, cells


def render(doc: Verdict, charts: ChartData | None, evidently_href: str | None = None, waivers: list[Waiver] | None = None) -> str:
    """The report as one HTML string; `waivers`: those recorded for the run (shown with whether
    each still applies)."""
    now = datetime.now(UTC)
    feats, segs, cells = drift_matrix(doc)
    columns, seg_cells = segment_matrix(doc)
    return _env.get_template("report.html.j2").render(
        doc=doc,
        charts=_charts_markup(charts or ChartData()),
        dead_letters=(charts.dead_letters if charts else []),
        drift_features=feats,
        drift_segments=segs,
        drift_cells=cells,
        seg_columns=columns,
        seg_cells=seg_cells,
        evidently_href=evidently_href,
        waivers=[(w, w.active(now)) for w in waivers or [] if w.candidate in (None, doc.candidate)],
        failing={(c.check, c.segment) for c in doc.checks if c.status == "fail"},
        reliability=_reliability(doc),
    )


def _reliability(doc: Verdict) -> dict[str, Markup]:
    """A reliability plot of both models per segment whose probability scores have outcomes."""
    if doc.outcomes is None:
        return {}
    return {seg: svg.reliability(f"Calibration in {seg}", sides) for seg, sides in doc.outcomes.calibration.items()}


def write_report(
    home: Path, doc: Verdict, out: Path, with_evidently: bool = True, con: duckdb.DuckDBPyConnection | None = None
) -> Path:
    """Render the report of a judged run to `out`. Charts read the stores read-only, through
    `con` when the caller still has the judge's connection (its pairs are then reused)."""
    charts: ChartData | None = None
    href = None
    own = con is None
    if con is None and doc.served is None:  # a served-traffic run has no pairs to chart
        try:
            con = open_run(home, doc.run_id)
        except Exception as err:  # a writer holds the store: report the verdict without charts
            log.warning("report without charts: %s", err)
    if con is not None:
        try:
            info = run_info(con)
            charts = collect(con, doc.candidate, info.segment_fields)
            if with_evidently:
                from shadowdiff.reports.drilldown import evidently_drift

                page = evidently_drift(con, info, out.with_name(out.stem + "-evidently.html"))
                href = page.name if page else None
        finally:
            if own:
                con.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(doc, charts, href, _waivers(home, doc.run_id)), encoding="utf-8")
    return out


def _waivers(home: Path, run_id: str) -> list[Waiver]:
    from shadowdiff.reports.verdicts import VerdictStore

    try:
        return VerdictStore(home, refresh_s=0.0).waivers(run_id)
    except ShadowdiffError as err:  # a report is written all the same; the gate says the same
        log.warning("report without waivers: %s", err)
        return []
