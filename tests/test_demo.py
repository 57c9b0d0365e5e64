"""`shadowdiff demo` end to end, as a newcomer runs it: a subprocess in a fresh directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_gives_the_three_verdicts_and_reports(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "shadowdiff_cli.main", "demo", "--dir", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "[night-encoder]" in text
    runs = tmp_path / "demo" / "runs"
    verdicts = {
        n: orjson.loads((runs / f"demo-{n}" / f"verdict-{n}.json").read_bytes()) for n in ("night-encoder", "slow", "retrained")
    }
    night = verdicts["night-encoder"]
    assert night["verdict"] == "no_go"
    assert "daypart=night" in night["failing_segments"]
    assert night["reasons"][0].startswith("label_flip is concentrated in daypart=night")
    slow = verdicts["slow"]
    assert slow["verdict"] == "no_go"
    assert any(r.startswith("latency_p95 failed") for r in slow["reasons"])
    assert {c["check"] for c in slow["checks"] if c["status"] == "fail"} == {"latency_p95"}
    assert verdicts["retrained"]["verdict"] == "go"
    for n in verdicts:
        report = runs / f"demo-{n}" / f"report-{n}.html"
        html = report.read_text(encoding="utf-8")
        assert html.startswith("<!doctype html>")
        assert html.rstrip().endswith("</html>")
        assert f"report: {report}" in text
    assert (runs / "demo-night-encoder" / "report-night-encoder-evidently.html").exists()
