"""`shadowdiff demo` end to end, as a newcomer runs it: a subprocess in a fresh directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent


SCENARIOS = ("night-encoder", "slow", "retrained")


def run_demo(tmp_path: Path, timeout_s: float, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, dict]]:
    """`shadowdiff demo` in a fresh directory: its output, and each scenario's verdict."""
    out = subprocess.run(
        [sys.executable, "-m", "shadowdiff.cli.main", "demo", "--dir", "demo", *extra],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    runs = tmp_path / "demo" / "runs"
    return out, {n: orjson.loads((runs / f"demo-{n}" / f"verdict-{n}.json").read_bytes()) for n in SCENARIOS}


@pytest.mark.slow
def test_demo_gives_the_three_verdicts_and_reports(tmp_path):
    out, verdicts = run_demo(tmp_path, 900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "[night-encoder]" in text
    runs = tmp_path / "demo" / "runs"
    night = verdicts["night-encoder"]
    assert night["verdict"] == "no_go"
    assert "daypart=night" in night["failing_segments"]
    assert night["reasons"][0].startswith("label_flip is concentrated in daypart=night")
    slow = verdicts["slow"]
    assert slow["verdict"] == "no_go"
    assert any(r.startswith("latency_p95 failed") for r in slow["reasons"])
    assert {c["check"] for c in slow["checks"] if c["status"] == "fail"} == {"latency_p95"}
    assert verdicts["retrained"]["verdict"] == "go"
    # the truth that arrived: the night encoder shown worse on outcomes at night, the retrained
    # candidate nowhere
    worse = {
        n: {c["segment"] for c in v["checks"] if c["kind"].startswith("outcome_") and c["status"] == "warn"}
        for n, v in verdicts.items()
    }
    assert "daypart=night" in worse["night-encoder"]
    assert worse["retrained"] == set()
    assert verdicts["retrained"]["outcomes"]["with_outcome"] > 0
    assert "shown worse on outcomes in: " in text
    for n in verdicts:
        report = runs / f"demo-{n}" / f"report-{n}.html"
        html = report.read_text(encoding="utf-8")
        assert html.startswith("<!doctype html>")
        assert html.rstrip().endswith("</html>")
        assert f"report: {report}" in text
    assert (runs / "demo-night-encoder" / "report-night-encoder-evidently.html").exists()
    # then the rest of the rollout on served traffic: the sound canary GO, the night encoder's
    # canary NO_GO in its segment, the rollback shown restored; each served by the gate
    served = {
        n: orjson.loads((runs / f"demo-{n}" / f"verdict-{c}.json").read_bytes())
        for n, c in (
            ("canary-retrained", "churn-retrained"),
            ("canary-night-encoder", "churn-night-encoder"),
            ("rollback", "restored-churn-v4"),
        )
    }
    assert served["canary-retrained"]["verdict"] == "go", served["canary-retrained"]["reasons"]
    assert served["canary-night-encoder"]["verdict"] == "no_go"
    assert "daypart=night" in served["canary-night-encoder"]["failing_segments"]
    assert any(r.startswith("score_shift failed in daypart=night") for r in served["canary-night-encoder"]["reasons"])
    assert served["rollback"]["verdict"] == "go"
    assert served["rollback"]["served"]["restored"] is True
    assert "[rollback]" in text


@pytest.mark.slow
def test_the_demo_under_cpu_noise_that_comes_and_goes(tmp_path):
    # the short version of bench/noise_bench.py: the demo's real loopback servers and pipeline
    # while busy processes switch on and off at random. The sound candidate is never NO_GO and
    # its latency intervals (an A/A: the same server latency) hold 1.0; the regressions are
    # still caught.
    from helpers import CpuBurners

    with CpuBurners(2, seed=3, every=(0.5, 4.0)) as burners:
        _, verdicts = run_demo(tmp_path, 600, "--no-rollout")
    assert burners.switches > 0
    assert verdicts["retrained"]["verdict"] != "no_go", verdicts["retrained"]["reasons"]
    assert verdicts["slow"]["verdict"] == "no_go"
    assert verdicts["night-encoder"]["verdict"] == "no_go"
    latency = [c for c in verdicts["retrained"]["checks"] if c["check"] == "latency_p95" and c["ci"] and None not in c["ci"]]
    holding = [c for c in latency if c["ci"][0] <= 1.0 <= c["ci"][1]]
    assert latency
    assert len(holding) >= len(latency) - 1, [(c["segment"], c["ci"]) for c in latency]
