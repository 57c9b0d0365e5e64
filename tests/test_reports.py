"""Report, gate service, gate CLI and evidence bundle on real stores and a real HTTP server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from helpers import chromium_page, make_run, serving

from shadowdiff.diff.judge import judge
from shadowdiff.diff.load import open_run
from shadowdiff.diff.testing import Scenario, write_synthetic_store
from shadowdiff.reports.evidence import verify_bundle, write_bundle
from shadowdiff.reports.html import render, write_report
from shadowdiff.reports.service import GateSettings, create_app
from shadowdiff.schemas import verdict_schema
from shadowdiff.schemas.policy import Policy, parse_policy
from shadowdiff.schemas.verdict import Verdict, read_verdict, verdict_dict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    h = tmp_path_factory.mktemp("runs")
    make_run(h, "good", Scenario(n=20_000, segments=3, seed=1))
    make_run(h, "bad", Scenario(n=20_000, segments=3, latency_factor_all=1.6, seed=2))
    make_run(h, "short", Scenario(n=8_000, segments=3, weights=[0.02, 1, 1], seed=3))
    make_run(h, "empty", Scenario(n=10, segments=1, seed=4), publish_it=False)
    return h


@pytest.fixture(scope="module")
def gate(home) -> Iterator[str]:
    with serving(create_app(GateSettings(home=home, token="s3cret"))) as url:
        yield url


def json_path(doc: dict, path: str):
    """Argo's `jsonPath: "{$.verdict}"` on the response body."""
    cur = doc
    for step in path.removeprefix("{$.").removesuffix("}").split("."):
        cur = cur[step]
    return cur


def argo_measure(url: str) -> str:
    """What an Argo AnalysisTemplate with a web provider does: a non-2xx is an *error*; else the
    JSON is matched with successCondition / failureCondition."""
    r = httpx.get(url, timeout=5)
    if not r.is_success:
        return "Error"
    result = json_path(r.json(), "{$.verdict}")
    if result == "go":  # successCondition: result == "go"
        return "Successful"
    if result == "no_go":  # failureCondition: result == "no_go"
        return "Failed"
    return "Inconclusive"


def test_argo_web_metric_evaluates_like_argo(gate):
    assert argo_measure(f"{gate}/runs/good/verdict") == "Successful"
    assert argo_measure(f"{gate}/runs/bad/verdict") == "Failed"
    assert argo_measure(f"{gate}/runs/short/verdict") == "Inconclusive"
    assert argo_measure(f"{gate}/runs/empty/verdict") == "Inconclusive"
    r = httpx.get(f"{gate}/runs/empty/verdict")
    assert r.status_code == 200
    assert r.json()["verdict"] == "pending"
    assert "no data" in r.json()["reasons"][0]
    body = httpx.get(f"{gate}/runs/bad/verdict").json()
    assert body["report_url"].endswith("/runs/bad/report")
    assert any("latency_p95" in x for x in body["reasons"])
    missing = httpx.get(f"{gate}/runs/nope/verdict")
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"]


def flagger_go(status: int) -> bool:
    """Flagger: a webhook answering with a status above 202 (or 204) halts/fails the step."""
    return status <= 202 and status != 204


def test_flagger_webhook_status_codes(gate):
    payload = {"name": "podinfo", "namespace": "test", "phase": "Progressing", "checksum": "abc", "metadata": {}}
    good = httpx.post(f"{gate}/runs/good/flagger", json=payload)
    assert flagger_go(good.status_code)
    bad = httpx.post(f"{gate}/runs/bad/flagger", json=payload)
    assert not flagger_go(bad.status_code)
    assert bad.json()["verdict"] == "no_go"
    assert bad.json()["reasons"]
    pending = httpx.post(f"{gate}/runs/empty/flagger", json=payload)
    assert not flagger_go(pending.status_code)
    assert httpx.post(f"{gate}/runs/good/flagger", content=b"{oops").status_code == 400
    assert httpx.post(f"{gate}/runs/good/flagger", json={"name": 1}).status_code == 400
    assert httpx.post(f"{gate}/runs/nope/flagger", json=payload).status_code == 404


def test_waivers_need_the_token_and_turn_a_waived_no_go_into_go(home, gate, tmp_path):
    shutil.copytree(home / "bad", home / "bad-waived")
    expires = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    w = {"check": "latency_p95", "reason": "known slow warm-up, accepted", "by": "oncall", "expires_at": expires}
    assert httpx.post(f"{gate}/runs/bad-waived/waivers", json=w).status_code == 401
    assert httpx.post(f"{gate}/runs/bad-waived/waivers", json=w, headers={"authorization": "Bearer nope"}).status_code == 401
    auth = {"authorization": "Bearer s3cret"}
    # a waiver names who, why and until when; the expiry is required and bounded
    for bad in ({**w, "expires_at": None}, {**w, "segment": ["a"]}, {k: v for k, v in w.items() if k != "by"}):
        r = httpx.post(f"{gate}/runs/bad-waived/waivers", json=bad, headers=auth)
        assert r.status_code == 422, bad
        assert r.json()["problems"]
    too_long = {**w, "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat()}
    assert httpx.post(f"{gate}/runs/bad-waived/waivers", json=too_long, headers=auth).status_code == 422
    ok = httpx.post(f"{gate}/runs/bad-waived/waivers", json=w, headers=auth)
    assert ok.status_code == 201
    body = httpx.get(f"{gate}/runs/bad-waived/verdict?full=1").json()
    assert {c["check"] for c in body["document"]["checks"] if c["status"] == "fail"} == {"latency_p95"}
    assert body["verdict"] == "go"
    assert body["reasons"][0].startswith("waived by oncall until")
    assert [x["by"] for x in body["waivers_applied"]] == ["oncall"]
    assert body["document"]["verdict"] == "no_go"  # the evidence is unchanged; the waiver is on top


def test_runs_metrics_openapi(gate):
    runs = {r["run_id"]: r["verdict"] for r in httpx.get(f"{gate}/runs").json()["runs"]}
    assert runs["good"] == "go"
    assert runs["bad"] == "no_go"
    metrics = httpx.get(f"{gate}/metrics").text
    assert 'shadowdiff_run_verdict{run="bad",candidate="cand",verdict="no_go"} 1' in metrics
    assert "shadowdiff_gate_requests_total" in metrics
    spec = httpx.get(f"{gate}/openapi.json").json()
    assert "/runs/{run}/flagger" in spec["paths"]
    # the ?full=1 document's schema is the verdict model's, as the published schema file is
    assert spec["components"]["schemas"]["Verdict"]["required"] == verdict_schema()["required"]


def test_gate_cli_exit_codes(home):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def gate_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "shadowdiff.cli.main", "gate", "--home", str(home), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert gate_cli("--run", "good").returncode == 0
    bad = gate_cli("--run", "bad")
    assert bad.returncode == 1
    assert "NO_GO" in bad.stdout
    assert gate_cli("--run", "short").returncode == 2
    waited = gate_cli("--run", "short", "--wait", "--timeout", "1s", "--interval", "0.2")
    assert waited.returncode == 2
    assert "timed out" in waited.stderr
    missing = gate_cli("--run", "nope")
    assert missing.returncode == 3  # an unknown run is an error, never read as PENDING
    assert "not found" in missing.stderr


def test_report_escapes_traffic_and_is_self_contained(home, tmp_path):
    doc = orjson.loads((home / "bad" / "verdict-cand.json").read_bytes())
    evil = "<script>alert(1)</script>"
    doc["examples"][0]["input"] = {"q": evil}
    doc["examples"][0]["segments"] = {"seg": evil}
    doc["reasons"].append(f"segment {evil}")
    html = render(Verdict.model_validate(doc), None)
    assert evil not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    for banned in ("http://", "https://", "//cdn", "<link"):
        assert banned not in html.replace("http-equiv", "")


def test_report_of_a_run_renders_within_budget(home, tmp_path):
    doc = read_verdict((home / "bad" / "verdict-cand.json").read_bytes())
    out = write_report(home, doc, tmp_path / "r.html", with_evidently=False)
    size = out.stat().st_size
    assert 20_000 < size < 10_000_000
    text = out.read_text()
    assert "<svg" in text
    assert "NO-GO" in text


def test_evidence_bundle_is_checksummed(home, tmp_path):
    path = write_bundle(home, "bad", tmp_path / "bundle.zip", Policy())
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        verdict = orjson.loads(zf.read("verdict.json"))
    assert {
        "verdict.json",
        "config.json",
        "versions.json",
        "kafka_window.json",
        "most_different_pairs.json",
        "random_pairs.jsonl",
        "report.html",
        "MANIFEST.sha256",
        "BUNDLE.sha256",
    } <= names
    assert verdict["verdict"] == "no_go"
    assert verify_bundle(path) == []
    # tamper with one file: the manifest catches it
    tampered = tmp_path / "t.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for n in src.namelist():
            dst.writestr(n, b"{}" if n == "verdict.json" else src.read(n))
    assert verify_bundle(tampered) == ["verdict.json"]
    # a file slipped in beside the listed ones is named too
    padded = tmp_path / "p.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(padded, "w") as dst:
        for n in src.namelist():
            dst.writestr(n, src.read(n))
        dst.writestr("extra.json", b"{}")
    assert verify_bundle(padded) == ["unlisted: extra.json"]
    # and the CLI verb answers with its exit code
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def verify_cli(bundle: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "shadowdiff.cli.main", "evidence", "verify", str(bundle)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    intact = verify_cli(path)
    assert (intact.returncode, intact.stdout.strip()) == (0, f"{path}: intact")
    broken = verify_cli(tampered)
    assert broken.returncode == 1
    assert "verdict.json" in broken.stdout
    not_a_bundle = verify_cli(ROOT / "README.md")
    assert not_a_bundle.returncode == 3  # an error, not a tampered bundle
    assert "not a readable evidence bundle" in not_a_bundle.stderr


@pytest.mark.browser
def test_report_opens_in_headless_chromium_without_console_errors(home, tmp_path):
    doc = read_verdict((home / "bad" / "verdict-cand.json").read_bytes())
    out = write_report(home, doc, tmp_path / "report.html", with_evidently=False)
    errors: list[str] = []
    requests: list[str] = []
    with chromium_page(errors, requests) as page:
        page.goto(out.as_uri())
        assert page.locator("#verdict").inner_text().startswith("NO-GO")
        assert page.locator("svg").count() >= 3
        page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
    assert errors == []
    assert [u for u in requests if not u.startswith("file://")] == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.browser
def test_report_columns_follow_the_policy_and_the_failing_cell_is_red_with_its_value(tmp_path):
    # a policy's own check (P95 |Δ| ≤ 0.1) fails in seg=s01 only; label flips pass there
    write_synthetic_store(
        tmp_path / "own" / "store-w0.duckdb", Scenario(n=12_000, segments=3, score_noise={1: 0.1}, seed=31), "own"
    )
    policy = parse_policy(
        {
            "checks": [
                {"id": "p95_abs_diff", "kind": "abs_diff_quantile", "quantile": 0.95, "threshold": 0.1},
                {"id": "feature_drift", "enabled": False},
            ]
        }
    )
    con = open_run(tmp_path, "own")
    try:
        verdict = judge(con, policy)
        out = write_report(tmp_path, verdict, tmp_path / "own.html", with_evidently=False, con=con)
    finally:
        con.close()
    doc = verdict_dict(verdict)
    assert doc["verdict"] == "no_go"
    failed = next(c for c in doc["checks"] if c["check"] == "p95_abs_diff" and c["segment"] == "seg=s01")
    assert failed["status"] == "fail"
    errors: list[str] = []
    requests: list[str] = []
    with chromium_page(errors, requests) as page:
        page.goto(out.as_uri())
        headers = page.locator("#segments th[data-check]").all_inner_texts()
        assert headers == [c.id for c in policy.checks]
        row = page.locator('#segments tr[data-segment="seg=s01"]')
        assert row.locator("td").nth(1).inner_text() == "NO_GO"
        cell = row.locator('td[data-check="p95_abs_diff"]')
        assert cell.inner_text().startswith(f"{failed['value']:.4g}")
        red, green, blue = (int(x) for x in cell.evaluate("e => getComputedStyle(e).backgroundColor")[4:-1].split(","))
        assert min(red - green, red - blue) > 30, (red, green, blue)  # red, whatever the shade
        flips = row.locator('td[data-check="label_flip"]')
        assert "fail" not in (flips.get_attribute("class") or "")
        page.screenshot(path=str(tmp_path / "own.png"), full_page=True)
    assert errors == []
    assert [u for u in requests if not u.startswith("file://")] == []
