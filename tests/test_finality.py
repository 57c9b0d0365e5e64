"""The first terminal verdict a run publishes is the one the gate answers from then on, whatever
later looks say; a usage error never exits with a verdict's code."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
from helpers import serving

from shadowdiff.cli.wiring import judge_and_publish
from shadowdiff.diff.testing import Scenario, write_synthetic_store
from shadowdiff.reports.service import GateSettings, create_app
from shadowdiff.reports.verdicts import VerdictStore
from shadowdiff.schemas.gate import Waiver, WaiverFile
from shadowdiff.schemas.layout import RunLayout
from shadowdiff.schemas.policy import Policy
from shadowdiff.schemas.verdict import verdict_dict

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def look(home: Path, run: str, scenario: Scenario, final: bool = False) -> dict:
    """Judge the run's store as the replay's checkpoint hook does, and publish."""
    store = home / run / "store-w0.duckdb"
    store.unlink(missing_ok=True)
    write_synthetic_store(store, scenario, run)
    with duckdb.connect(str(store)) as con:
        return verdict_dict(judge_and_publish(con, home, run, Policy(), final=final)[0])


def test_a_go_stays_go_when_a_later_look_is_worse_and_the_report_shows_the_later_look(tmp_path):
    first = look(tmp_path, "r", Scenario(n=20_000, segments=3, seed=1))
    assert first["verdict"] == "go"
    assert first["terminal"]["verdict"] == "go"
    later = look(tmp_path, "r", Scenario(n=20_000, segments=3, latency_factor_all=1.6, seed=2))
    assert later["latest"]["verdict"] == "no_go"
    assert later["verdict"] == "go"
    assert later["reasons"][0].startswith("final: GO was first published")
    answer, _ = VerdictStore(tmp_path, refresh_s=0).answer("r")
    assert answer.verdict == "go"
    # an idle writer after a terminal verdict: the decision stands, it does not turn stale
    path = RunLayout(tmp_path, "r").verdict("cand")
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    answer, _ = VerdictStore(tmp_path, refresh_s=0, stale_after_s=60).answer("r")
    assert (answer.verdict, answer.stale) == ("go", False)


def test_a_no_go_stays_no_go_and_waivers_match_the_failures_that_made_it(tmp_path):
    first = look(tmp_path, "r", Scenario(n=20_000, segments=3, latency_factor_all=1.6, seed=2))
    assert first["verdict"] == "no_go"
    later = look(tmp_path, "r", Scenario(n=20_000, segments=3, seed=1))
    assert (later["verdict"], later["latest"]["verdict"]) == ("no_go", "go")
    assert later["failing_segments"] == first["failing_segments"]
    now = datetime.now(UTC)
    waiver = Waiver(check="latency_p95", reason="known warm-up", by="oncall", expires_at=now + timedelta(hours=1), created_at=now)
    (tmp_path / "r" / "waivers.json").write_text(WaiverFile(waivers=[waiver]).model_dump_json(), encoding="utf-8")
    with serving(create_app(GateSettings(home=tmp_path, token="t"))) as url:
        got = httpx.get(f"{url}/runs/r/verdict").json()
    assert got["verdict"] == "go"
    assert [w["by"] for w in got["waivers_applied"]] == ["oncall"]


def test_pending_looks_do_not_latch(tmp_path):
    first = look(tmp_path, "r", Scenario(n=300, segments=3, seed=1))
    assert first["verdict"] == "pending"
    assert "terminal" not in first
    later = look(tmp_path, "r", Scenario(n=20_000, segments=3, latency_factor_all=1.6, seed=2))
    assert later["verdict"] == "no_go"
    assert "latest" in later


def test_a_usage_error_exits_with_no_verdicts_code():
    def run(*args: str) -> int:
        return subprocess.run(
            [sys.executable, "-m", "shadowdiff.cli.main", *args], env=ENV, capture_output=True, timeout=60
        ).returncode

    assert run("gate", "--run", "x", "--bogus") == 64
    assert run("no-such-command") == 64
    assert run("--help") == 0
