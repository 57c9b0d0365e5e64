"""Nothing from traffic executes in any page a run writes or the gate serves: a run whose
request ids, segment values, features and model outputs carry script payloads, opened in
headless Chromium — the report, evidently's drift page, and both as the gate serves them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import chromium_page, envelope, jsonl, serving, write_config

from shadowdiff.cli.wiring import publish
from shadowdiff.diff.judge import judge
from shadowdiff.diff.load import open_run
from shadowdiff.replay.job import run_replay
from shadowdiff.reports.html import write_report
from shadowdiff.reports.service import GateSettings, create_app
from shadowdiff.schemas.config import load_config

PAYLOADS = [
    "</script><script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    '"><svg onload=alert(5)>',
    "<script src=http://127.0.0.9/x.js></script>",
    "javascript:alert(6)",
]


def hostile_run(tmp: Path) -> Path:
    rng = random.Random(13)
    envs = []
    for i in range(1200):
        env = envelope(i, rng)
        payload = PAYLOADS[i % len(PAYLOADS)]
        if i % 7 == 0:
            env["request_id"] = f"{payload}-{i}"
        if i % 5 == 0:
            env["segments"]["region"] = payload
        # the second half of the traffic brings the payloads into the features (drift to show)
        if i >= 600:
            env["input"]["plan"] = payload
        envs.append(env)
    recording = jsonl(tmp / "traffic.jsonl", envs)
    cfg = write_config(
        tmp / "run.toml",
        f"""
[run]
id = "hostile"
home = "{tmp / "runs"}"
[source]
kind = "file"
path = "{recording}"
[features]
numeric = ["x", "y"]
categorical = ["plan"]
[segments]
fields = ["region", "device"]
[output]
kind = "json"
score_path = "score"
label_path = "label"
[[candidates]]
name = "evil"
kind = "python"
target = "models_for_tests:hostile"
""",
    )
    run_replay(load_config(cfg))
    home = tmp / "runs"
    con = open_run(home, "hostile")
    try:
        doc = judge(con, _policy())
        publish(home, "hostile", doc)
        write_report(home, doc, home / "hostile" / "report-evil.html", con=con)
    finally:
        con.close()
    return home


def _policy():  # type: ignore[no-untyped-def]
    from shadowdiff.schemas.policy import Policy

    return Policy(min_samples=50)


@pytest.mark.browser
def test_no_page_of_a_hostile_run_runs_script_or_reaches_the_network(tmp_path):
    home = hostile_run(tmp_path)
    pages = sorted((home / "hostile").glob("*.html"))
    assert {p.name for p in pages} == {"report-evil.html", "report-evil-evidently.html"}
    # the payloads did reach the pages, as text
    assert "alert(1)" in (home / "hostile" / "report-evil.html").read_text(encoding="utf-8")
    errors: list[str] = []
    requests: list[str] = []
    dialogs: list[str] = []
    with serving(create_app(GateSettings(home=home))) as gate, chromium_page(errors, requests, dialogs) as page:
        urls = [f.as_uri() for f in pages] + [
            f"{gate}/runs/hostile/report",
            f"{gate}/runs/hostile/report-evil-evidently.html",
            f"{gate}/runs/hostile/verdict?full=1",
        ]
        for url in urls:
            page.goto(url, wait_until="load")
            assert page.evaluate("() => document.readyState") == "complete"
    assert dialogs == []
    assert [u for u in requests if u not in urls and not u.startswith(("file://", "data:"))] == []
