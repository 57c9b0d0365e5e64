"""One gate answer: every gate state driven through the Argo endpoint, the Flagger endpoint
and `shadowdiff gate`, which must agree; reads never write; a run keeps its policy, and a
verdict judged under another one is served only when asked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest
from helpers import make_run, serving

from shadowdiff.diff.testing import Scenario
from shadowdiff.reports.service import GateSettings, create_app
from shadowdiff.schemas.gate import EXIT_UNKNOWN, FLAGGER_STATUS, Waiver, WaiverFile

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FLAGGER = {"name": "podinfo", "namespace": "test", "phase": "Progressing", "checksum": "abc", "metadata": {}}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shadowdiff.cli.main", *args], env=ENV, capture_output=True, text=True, timeout=120
    )


def waiver(hours: float, check: str = "latency_p95") -> Waiver:
    now = datetime.now(UTC)
    return Waiver(check=check, reason="accepted warm-up", by="oncall", expires_at=now + timedelta(hours=hours), created_at=now)


def write_waivers(run_dir: Path, *items: Waiver) -> None:
    (run_dir / "waivers.json").write_text(WaiverFile(waivers=list(items)).model_dump_json(), encoding="utf-8")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    h = tmp_path_factory.mktemp("contract")
    make_run(h, "good", Scenario(n=20_000, segments=3, seed=1))
    make_run(h, "bad", Scenario(n=20_000, segments=3, latency_factor_all=1.6, seed=2))
    make_run(h, "short", Scenario(n=8_000, segments=3, weights=[0.04, 1, 1], seed=3))
    make_run(h, "unjudged", Scenario(n=10, segments=1, seed=4), publish_it=False)
    for name, items in (("waived", [waiver(2)]), ("expired", [waiver(-1)]), ("waived-other-check", [waiver(2, "label_flip")])):
        shutil.copytree(h / "bad", h / name)
        write_waivers(h / name, *items)
    shutil.copytree(h / "bad", h / "broken-waivers")
    (h / "broken-waivers" / "waivers.json").write_text('{"waivers": [{"check": ["x"]}]}', encoding="utf-8")
    # a replay that stopped publishing an hour ago without finishing
    make_run(h, "stale", Scenario(n=20_000, segments=3, seed=5), active=True)
    hour_ago = time.time() - 3600
    os.utime(h / "stale" / "verdict-cand.json", (hour_ago, hour_ago))
    return h


@pytest.fixture(scope="module")
def gate(home) -> Iterator[str]:
    with serving(create_app(GateSettings(home=home, token="s3cret"))) as url:
        yield url


STATES = [
    # run, candidate, the answer every client must give
    ("good", None, "go"),
    ("bad", None, "no_go"),
    ("short", None, "pending"),
    ("unjudged", None, "pending"),
    ("waived", None, "go"),
    ("expired", None, "no_go"),
    ("waived-other-check", None, "no_go"),
    ("broken-waivers", None, "no_go"),
    ("stale", None, "pending"),
    ("good", "cand", "go"),
    ("nope", None, "unknown"),
    ("good", "nope", "unknown"),
    ("x" * 300, None, "unknown"),
    ("good", "a\x00b", "unknown"),
]


@pytest.mark.parametrize(("run", "candidate", "expected"), STATES)
def test_argo_flagger_and_the_cli_give_one_answer(home, gate, run, candidate, expected):
    query = {"candidate": candidate} if candidate is not None else {}
    argo = httpx.get(f"{gate}/runs/{run}/verdict", params=query)
    flagger = httpx.post(f"{gate}/runs/{run}/flagger", json={**FLAGGER, "metadata": query})
    args = ["gate", "--home", str(home), "--run", run] + (["--candidate", candidate] if candidate is not None else [])
    exit_code = cli(*args).returncode if "\x00" not in (candidate or "") else EXIT_UNKNOWN  # argv cannot carry NUL
    if expected == "unknown":
        assert argo.status_code == 404
        assert argo.json()["error"]
        assert flagger.status_code == 404
        assert exit_code == EXIT_UNKNOWN
        return
    assert argo.status_code == 200
    assert argo.json()["verdict"] == expected
    assert flagger.status_code == FLAGGER_STATUS[expected]
    assert flagger.json()["verdict"] == expected
    assert exit_code == {"go": 0, "no_go": 1, "pending": 2}[expected]
    assert argo.json()["reasons"] == flagger.json()["reasons"]


def test_waivers_applied_are_named_and_expired_ones_say_nothing(gate):
    waived = httpx.get(f"{gate}/runs/waived/verdict").json()
    assert [w["by"] for w in waived["waivers_applied"]] == ["oncall"]
    assert waived["reasons"][0].startswith("waived by oncall until")
    expired = httpx.get(f"{gate}/runs/expired/verdict").json()
    assert expired["waivers_applied"] == []
    assert not any("waived" in r for r in expired["reasons"])
    broken = httpx.get(f"{gate}/runs/broken-waivers/verdict").json()
    assert "waivers.json of run broken-waivers is invalid" in broken["reasons"][0]
    stale = httpx.get(f"{gate}/runs/stale/verdict").json()
    assert stale["stale"] is True
    assert stale["reasons"][0].startswith("stale:")


def test_reading_the_gate_writes_nothing(home, gate):
    def snapshot() -> dict[str, int]:
        return {str(p.relative_to(home)): p.stat().st_mtime_ns for p in home.rglob("*")}

    before = snapshot()
    for run in ("unjudged", "good", "bad", "stale"):
        assert cli("gate", "--home", str(home), "--run", run).returncode in (0, 1, 2)
        httpx.get(f"{gate}/runs/{run}/verdict")
        httpx.post(f"{gate}/runs/{run}/flagger", json=FLAGGER)
    httpx.get(f"{gate}/runs")
    httpx.get(f"{gate}/metrics")
    assert snapshot() == before
    assert not (home / "unjudged" / "verdict-cand.json").exists()


def test_a_verdict_under_another_policy_is_kept_apart_and_served_only_when_asked(home, tmp_path):
    shutil.copytree(home / "bad", home / "relabel")
    lenient = tmp_path / "lenient.toml"
    lenient.write_text('[[checks]]\nid = "latency_p95"\nenabled = false\n', encoding="utf-8")
    gate_of = lambda: cli("gate", "--home", str(home), "--run", "relabel").returncode  # noqa: E731
    other = cli("judge", "--home", str(home), "--run", "relabel", "--policy", str(lenient))
    assert other.returncode == 0, other.stderr  # GO under the lenient policy ...
    assert "not served by the gate" in other.stderr
    kept = orjson.loads((home / "relabel" / "verdicts" / "lenient" / "verdict-cand.json").read_bytes())
    assert (kept["verdict"], kept["policy"]["label"]) == ("go", "lenient")
    assert gate_of() == 1  # ... but the gate still serves the run's own NO_GO
    # judging without --policy uses the run's own policy and leaves the answer as it was
    assert cli("judge", "--home", str(home), "--run", "relabel").returncode == 1
    assert gate_of() == 1
    published = cli("judge", "--home", str(home), "--run", "relabel", "--policy", str(lenient), "--publish")
    assert published.returncode == 0
    assert gate_of() == 0
    served = orjson.loads((home / "relabel" / "verdict-cand.json").read_bytes())
    assert served["policy"]["published_over_the_run_policy"] is True
    assert served["policy"]["label"] == "lenient"


NASTY_IDS = [
    "x" * 300,
    "a\x00b",
    "..",
    "../good",
    "%2e%2e",
    "good%00",
    "ünï",
    " good",
    "good/verdict",
    "-",
    ".hidden",
    "<script>",
]
NASTY_VALUES = ["x" * 5000, "a\x00b", "", "../../etc/passwd", "<script>alert(1)</script>", "\ud7ff", "cand\n"]
NASTY_BODIES: list[object] = [
    None,
    [],
    [1, 2],
    "text",
    7,
    {"name": ["x"], "namespace": "n", "phase": "p"},
    {**FLAGGER, "metadata": []},
    {**FLAGGER, "metadata": {"candidate": ["cand"]}},
    {**FLAGGER, "metadata": {"candidate": {"a": 1}}},
    {**FLAGGER, "metadata": {"candidate": 5}},
    {**FLAGGER, "metadata": {"candidate": "x" * 5000}},
    {"check": "latency_p95", "reason": "r", "by": "b", "segment": ["a"], "expires_at": "2030-01-01T00:00:00Z"},
    {"check": "latency_p95", "reason": "r", "by": "b", "expires_at": "tomorrow"},
    {"check": "latency_p95", "reason": "r", "by": "b", "expires_at": "2030-01-01T00:00:00"},  # no timezone
    {"check": "LATENCY", "reason": "r", "by": "b", "expires_at": "2030-01-01T00:00:00Z"},
    {"check": "latency_p95", "reason": "", "by": "b", "expires_at": "2030-01-01T00:00:00Z", "extra": 1},
    {"check": "latency_p95", "reason": "r" * 100_000, "by": "b", "expires_at": "2030-01-01T00:00:00Z"},
]


def test_no_request_makes_the_gate_answer_5xx_and_it_still_answers_right_after(gate):
    codes: list[tuple[str, int]] = []
    auth = {"authorization": "Bearer s3cret"}
    with httpx.Client(base_url=gate, timeout=10) as http:
        for run in [*NASTY_IDS, "good"]:
            codes.append((f"GET verdict {run!r}", http.get(f"/runs/{quote(run, safe='')}/verdict").status_code))
            codes.append((f"GET report {run!r}", http.get(f"/runs/{quote(run, safe='')}/report").status_code))
            r = http.post(f"/runs/{quote(run, safe='')}/flagger", json=FLAGGER)
            codes.append((f"POST flagger {run!r}", r.status_code))
        for value in NASTY_VALUES:
            for path in ("/runs/good/verdict", "/runs/good/report"):
                codes.append((f"GET {path} candidate={value[:20]!r}", http.get(path, params={"candidate": value}).status_code))
            codes.append((f"GET full={value[:20]!r}", http.get("/runs/good/verdict", params={"full": value}).status_code))
            codes.append((f"GET page {value[:20]!r}", http.get(f"/runs/good/{quote(value, safe='')}").status_code))
        codes.append(("GET repeated candidate", http.get("/runs/good/verdict?candidate=cand&candidate=nope").status_code))
        for body in NASTY_BODIES:
            data = orjson.dumps(body)
            for route in ("flagger", "waivers"):
                r = http.post(f"/runs/bad/{route}", content=data, headers={**auth, "content-type": "application/json"})
                codes.append((f"POST {route} {data[:60]!r}", r.status_code))
        for raw in (b"{oops", b"\xff\xfe", b"", b"[" * 10_000 + b"]" * 10_000):
            for route in ("flagger", "waivers"):
                codes.append(
                    (f"POST {route} raw {raw[:10]!r}", http.post(f"/runs/bad/{route}", content=raw, headers=auth).status_code)
                )
        server_errors = [(what, code) for what, code in codes if code >= 500]
        assert server_errors == []
        # no garbage was recorded as a waiver, and every reader still answers, and rightly
        assert not (Path(http.get("/healthz").json()["home"]) / "bad" / "waivers.json").exists()
        assert http.get("/runs/good/verdict").json()["verdict"] == "go"
        assert http.get("/runs/bad/verdict").json()["verdict"] == "no_go"
        assert http.post("/runs/bad/flagger", json=FLAGGER).status_code == 412
        assert http.get("/runs").status_code == 200
        assert http.get("/metrics").status_code == 200


def test_the_report_shows_the_waivers_and_whether_each_still_applies(home, tmp_path):
    from shadowdiff.reports.html import write_report
    from shadowdiff.schemas.verdict import read_verdict

    shutil.copytree(home / "bad", home / "both-waivers")
    write_waivers(home / "both-waivers", waiver(2), waiver(-1, "label_flip"))
    doc = read_verdict((home / "both-waivers" / "verdict-cand.json").read_bytes())
    doc.run_id = "both-waivers"  # the verdict was copied from run "bad"
    html = write_report(home, doc, tmp_path / "r.html", with_evidently=False).read_text(encoding="utf-8")
    table = html[html.index('id="waivers"') : html.index("</table>", html.index('id="waivers"'))]
    assert table.count("<tr>") == 3  # a header and the two waivers
    assert "<td>latency_p95</td><td>*</td><td>oncall</td><td>accepted warm-up</td>" in table
    assert 'class="warn">yes</td>' in table
    assert 'class="na">expired</td>' in table
