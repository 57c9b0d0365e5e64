"""The rest of the rollout in `shadowdiff demo`: after the shadow verdicts, a canary split of real
served traffic (the demo's requests through a traffic split to the real model servers, each
answer logged by the version that gave it), judged unpaired against the stable, for a sound
canary (GO) and the night-encoder one (NO_GO, naming its segment and check); then the service
rolled back to the stable and its verification against the day before (restored)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from shadowdiff.cli import demo_traffic as traffic
from shadowdiff.cli.traffic_split import Backend, split_traffic
from shadowdiff.replay.served_log import InferenceLog

# half the traffic: a latency quantile is read per block of 200 canary records, and each segment
# needs 8 blocks of its own within the demo's 20,000 requests
CANARY_WEIGHT = 0.5
BUCKETS = {
    h: name
    for name, hours in (("night", range(6)), ("morning", range(6, 12)), ("afternoon", range(12, 18)), ("evening", range(18, 24)))
    for h in hours
}

POLICY = """# Demo canary policy: the runbook's triggers, asked of the canary against the stable on the
# traffic each served (unpaired). The checks that compare two answers to one request (flips,
# score differences) belong to the shadow run and are listed as not applicable here.
[policy]
min_samples = 300
alpha = 0.01
latency_min_span_minutes = 0  # the demo's traffic is replayed in seconds; a real canary keeps 10 minutes

[[checks]]
id = "error_rate"
threshold = 0.01          # the canary's error rate at most 1 point above the stable's ...
for_minutes = 3           # ... over 3-minute windows

[[checks]]
id = "latency_p95"
threshold = 1.3           # P95 latency +30 % ...
for_minutes = 5           # ... over a 5-minute window

[[checks]]
id = "score_shift"
threshold = 0.03          # the mean score within 3 points of the stable's (x3 in a segment)
"""


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    mode: str
    canary: str | None  # the model server the canary's share goes to (None: everything to the stable)
    expect: str
    expect_in_reasons: str


STEPS = [
    Step(
        "canary-retrained",
        "canary: the sound retrained model on half the traffic",
        "canary",
        "retrained",
        "go",
        "checks shown within",
    ),
    Step("canary-night-encoder", "canary: encoder v5 on half the traffic", "canary", "night-encoder", "no_go", "daypart=night"),
    Step(
        "rollback",
        "rollback to churn-v4: today's traffic against yesterday's (last-known-good)",
        "rollback",
        None,
        "go",
        "restored",
    ),
]


def _segments(row: dict[str, Any]) -> dict[str, Any]:
    hour = int(row["event_time"][11:13])
    return {**row["segments"], "daypart": BUCKETS[hour]}


def _config(step: Step, home: Path, log: Path, version: str) -> dict[str, Any]:
    if step.mode == "canary":
        compare: dict[str, Any] = {"mode": "canary", "reference": {"version": "churn-v4"}, "subject": {"version": version}}
    else:
        day = traffic.T0 + timedelta(days=1)
        compare = {
            "mode": "rollback",
            "reference": {"version": "churn-v4", "start": traffic.T0.isoformat(), "end": day.isoformat()},
            "subject": {"version": "churn-v4", "start": day.isoformat()},
        }
    return {
        "run": {"id": f"demo-{step.name}", "home": str(home)},
        "served": {"source": {"kind": "file", "path": str(log)}},
        "compare": compare,
        "segments": {"fields": ["device", "daypart"]},
        "features": {"numeric": traffic.NUMERIC, "categorical": traffic.CATEGORICAL},
        "output": {"score_path": "score", "label_path": "label"},
    }


def run_rollout(workdir: Path, home: Path, rows: list[dict[str, Any]], urls: dict[str, str]) -> int:
    """Each step's traffic through the split, its served run and verdict, printed; returns the
    number of steps whose verdict was not the expected one."""
    import duckdb

    from shadowdiff.cli.wiring import judge_served_and_publish, start_served_run
    from shadowdiff.replay.served import run_served
    from shadowdiff.reports.html import write_report
    from shadowdiff.schemas.config import ServedRunConfig
    from shadowdiff.schemas.policy import load_policy

    (workdir / "canary-policy.toml").write_text(POLICY, encoding="utf-8")
    policy = load_policy(workdir / "canary-policy.toml")
    failures = 0
    for step in STEPS:
        log = workdir / f"served-{step.name}.jsonl"
        log.unlink(missing_ok=True)
        version = f"churn-{step.canary}" if step.canary else "churn-v4"
        stable = Backend(f"{urls['baseline']}/invocations", InferenceLog.to_file(log, "churn-v4"))
        canary = Backend(f"{urls[step.canary or 'baseline']}/invocations", InferenceLog.to_file(log, version))
        try:
            sent = asyncio.run(split_traffic(rows, stable, canary, CANARY_WEIGHT if step.canary else 0.0, _segments))
        finally:
            stable.log.close()
            canary.log.close()
        cfg = ServedRunConfig.model_validate(_config(step, home, log, version))
        start_served_run(cfg, policy)
        run_served(cfg)
        con = duckdb.connect()
        try:
            doc = judge_served_and_publish(con, cfg, policy, from_exports=True, final=True)
        finally:
            con.close()
        report = write_report(home, doc, home / cfg.run.id / f"report-{doc.candidate}.html")
        ok = doc.verdict == step.expect and any(step.expect_in_reasons in r for r in doc.reasons)
        failures += not ok
        print(f"\n[{step.name}] {step.title}")
        print(f"  served {sent['stable']} requests by the stable, {sent['canary']} by {version if step.canary else 'no canary'}")
        print(f"  verdict: {doc.verdict.upper()}{'' if ok else f'  (expected {step.expect.upper()})'}")
        for r in doc.reasons[:5]:
            print(f"    - {r}")
        print(f"  report: {report}")
    return failures
