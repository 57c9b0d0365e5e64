"""deploy/'s canary and rollback pipelines checked against the contracts the tools evaluate: each
Argo AnalysisTemplate's job runs the real `shadowdiff canary` with the arguments it gives (the
rollout step's run stops at its first GO or NO_GO and exits with the gate's code), its web metric
reads the gate's answer for that run through its jsonPath and conditions as Argo does, and the
Flagger Canary's webhooks get the status codes Flagger acts on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from helpers import serving

from shadowdiff.cli.served_traffic import Version, served_records
from shadowdiff.reports.service import GateSettings, create_app

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text(encoding="utf-8")) if d]


def fill(text: str, args: dict[str, str]) -> str:
    """Argo's `{{args.name}}` substitution."""
    return re.sub(r"\{\{args\.([a-z]+)\}\}", lambda m: args[m.group(1)], text)


def argo_result(url: str, metric: dict[str, Any]) -> str:
    """An Argo web metric: a non-2xx is an Error; else jsonPath's value is matched with the
    metric's successCondition / failureCondition (`result == "..."`)."""
    r = httpx.get(url, timeout=5)
    if not r.is_success:
        return "Error"
    value = r.json()
    for step in metric["provider"]["web"]["jsonPath"].removeprefix("{$.").removesuffix("}").split("."):
        value = value[step]
    ok = re.fullmatch(r'result == "(\w+)"', metric["successCondition"])
    bad = re.fullmatch(r'result == "(\w+)"', metric["failureCondition"])
    assert ok is not None
    assert bad is not None
    return "Successful" if value == ok.group(1) else "Failed" if value == bad.group(1) else "Inconclusive"


def job_args(metric: dict[str, Any], args: dict[str, str], config: Path, policy: Path) -> list[str]:
    """The job container's arguments, its ConfigMap's files replaced by this test's."""
    container = metric["provider"]["job"]["spec"]["template"]["spec"]["containers"][0]
    out = [fill(a, args) for a in container["args"]]
    out[out.index("--config") + 1] = str(config)
    out[out.index("--policy") + 1] = str(policy)
    return out


def served_config(tmp_path: Path, mode: str, log: Path) -> Path:
    """deploy/'s config with a recording as its source and the test's home."""
    text = (DEPLOY / ("canary.toml" if mode == "canary" else "rollback.toml")).read_text(encoding="utf-8")
    text = re.sub(r"source = \{[^}]*\}", f'source = {{ kind = "file", path = "{log}" }}', text)
    text = text.replace('home = "/var/lib/shadowdiff/runs"', f'home = "{tmp_path / "runs"}"')
    text = text.replace('fields = ["region", "device"]', 'fields = ["region"]')
    out = tmp_path / f"{mode}.toml"
    out.write_text(text, encoding="utf-8")
    return out


def write_log(path: Path, records: Any) -> Path:
    with path.open("wb") as fh:
        for r in records:
            fh.write(orjson.dumps(r) + b"\n")
    return path


def run_cli(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowdiff.cli.main", *argv], env=ENV, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def canary_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The Argo canary step's job run for a sound and a slow canary, each as its own revision."""
    tmp = tmp_path_factory.mktemp("deploy")
    template = next(d for d in documents("argo-canary.yaml") if d["kind"] == "AnalysisTemplate")
    job = next(m for m in template["spec"]["metrics"] if "job" in m["provider"])
    out: dict[str, Any] = {"tmp": tmp, "template": template, "codes": {}}
    for revision, canary in (("sound", Version("churn-v7")), ("slow", Version("churn-v7", latency_factor=1.5))):
        log = write_log(tmp / f"{revision}.jsonl", served_records([(Version("churn-v6"), 0.8), (canary, 0.2)], 40, seed=3))
        argv = job_args(
            job, {"revision": revision, "weight": "20"}, served_config(tmp, "canary", log), DEPLOY / "canary-policy.toml"
        )
        # a recording ends: its records are judged as they are, not "since now"
        since = argv.index("--since")
        del argv[since : since + 2]
        out["codes"][revision] = run_cli(argv)
    return out


def test_the_argo_step_job_runs_the_real_canary_and_exits_with_the_gates_code(canary_runs: dict[str, Any]) -> None:
    sound, slow = canary_runs["codes"]["sound"], canary_runs["codes"]["slow"]
    assert sound.returncode == 0, sound.stdout + sound.stderr
    assert "GO" in sound.stdout
    assert slow.returncode == 1, slow.stdout + slow.stderr
    assert "latency_p95 failed in all" in slow.stdout


def test_the_argo_web_metric_reads_each_steps_run_as_argo_does(canary_runs: dict[str, Any]) -> None:
    tmp, template = canary_runs["tmp"], canary_runs["template"]
    web = next(m for m in template["spec"]["metrics"] if "web" in m["provider"])
    assert web["failureLimit"] == 0  # one NO_GO fails the step
    with serving(create_app(GateSettings(home=tmp / "runs"))) as gate:
        url = web["provider"]["web"]["url"].replace("http://shadowdiff-gate:8787", gate)
        assert argo_result(fill(url, {"revision": "sound", "weight": "20"}), web) == "Successful"
        assert argo_result(fill(url, {"revision": "slow", "weight": "20"}), web) == "Failed"
        # a step whose run has not published yet: Argo waits (Inconclusive), never passes
        (tmp / "runs" / "churn-later-w50").mkdir()
        (tmp / "runs" / "churn-later-w50" / "served-w0.duckdb").touch()
        assert argo_result(fill(url, {"revision": "later", "weight": "50"}), web) == "Inconclusive"


def test_every_rollout_step_is_analysed_by_its_own_run() -> None:
    docs = documents("argo-canary.yaml")
    rollout = next(d for d in docs if d["kind"] == "Rollout")
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    weights = [s["setWeight"] for s in steps if "setWeight" in s]
    analyses = [s["analysis"] for s in steps if "analysis" in s]
    assert weights == [5, 20, 50]
    assert [a["args"][1]["value"] for a in analyses] == ["5", "20", "50"]
    assert all(a["templates"][0]["templateName"] == "shadowdiff-canary" for a in analyses)
    assert all(a["args"][0]["valueFrom"] == {"podTemplateHashValue": "Latest"} for a in analyses)


def test_the_post_rollback_analysis_run_verifies_a_restore(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    run = next(d for d in documents("argo-canary.yaml") if d["kind"] == "AnalysisRun")
    job = next(m for m in run["spec"]["metrics"] if "job" in m["provider"])
    web = next(m for m in run["spec"]["metrics"] if "web" in m["provider"])
    since = datetime(2026, 12, 7, 10, tzinfo=UTC)
    before = served_records([(Version("churn-v6"), 1.0)], 60, start=since - timedelta(days=7), seed=5)
    after = served_records([(Version("churn-v6"), 1.0)], 30, start=since, seed=6)
    log = write_log(tmp_path / "log.jsonl", [*before, *after])
    argv = job_args(job, {"run": "churn-rollback"}, served_config(tmp_path, "rollback", log), DEPLOY / "canary-policy.toml")
    argv[argv.index("--since") + 1] = since.isoformat()  # the rollback's time, as the pipeline gives it
    done = run_cli(argv)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "restored" in done.stdout
    with serving(create_app(GateSettings(home=tmp_path / "runs"))) as gate:
        url = fill(web["provider"]["web"]["url"], {"run": "churn-rollback"}).replace("http://shadowdiff-gate:8787", gate)
        assert argo_result(url, web) == "Successful"


def test_the_flagger_webhooks_get_the_status_flagger_acts_on(canary_runs: dict[str, Any]) -> None:
    tmp = canary_runs["tmp"]
    canary = documents("flagger-canary.yaml")[0]
    hooks = {h["type"]: h for h in canary["spec"]["analysis"]["webhooks"]}
    gate_hook = hooks["rollout"]  # run at every iteration: a non-2xx counts as a failed check
    assert canary["spec"]["analysis"]["threshold"] >= 30  # PENDING may last that many iterations
    payload = {
        "name": "churn-scoring",
        "namespace": "scoring",
        "phase": "Progressing",
        "checksum": "x",
        "metadata": gate_hook["metadata"],
    }
    import shutil

    with serving(create_app(GateSettings(home=tmp / "runs"))) as gate:
        url = gate_hook["url"].replace("http://shadowdiff-gate.shadowdiff:8787", gate)
        for revision, status in (("sound", 200), ("slow", 412)):
            shutil.copytree(tmp / "runs" / f"churn-{revision}-w20", tmp / "runs" / f"churn-canary-{revision}", dirs_exist_ok=True)
            answer = httpx.post(url.replace("/churn-canary/", f"/churn-canary-{revision}/"), json=payload, timeout=5)
            assert answer.status_code == status, answer.text
            assert answer.json()["candidate"] == "churn-v7"
