"""A canary as it runs: two real HTTP model servers behind a traffic split, each answer logged to a
live Kafka topic by the version that gave it (replay/served_log.py), `shadowdiff canary` reading
the topic and judging as it goes, and the gate answering during the run: PENDING while the
evidence is short, then the first terminal verdict, which the worker exits with."""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import serving
from replays import Replay

from shadowdiff.cli.traffic_split import Backend, split_traffic
from shadowdiff.replay.served_log import InferenceLog
from shadowdiff.replay.testing import ModelServer, ServerBehaviour
from shadowdiff.reports.service import GateSettings, create_app

pytestmark = [pytest.mark.kafka]

POLICY = """[policy]
inherit_defaults = false
min_samples = 300
latency_min_span_minutes = 0

[[checks]]
id = "error_rate"
kind = "error_rate"
threshold = 0.01

[[checks]]
id = "latency_p95"
kind = "latency"
threshold = 1.5

[[checks]]
id = "score_shift"
kind = "score_shift"
threshold = 0.05
"""


def score(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"score": min(1.0, r["x"] / 10), "label": int(r["x"] > 5)} for r in rows]


class Traffic:
    """Requests sent through the split until stopped, as a steady stream of small bursts."""

    def __init__(self, stable: Backend, canary: Backend, weight: float) -> None:
        self.stop = threading.Event()
        self.sent = {"stable": 0, "canary": 0}
        self.ids = itertools.count()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run(stable, canary, weight)), daemon=True)

    async def _run(self, stable: Backend, canary: Backend, weight: float) -> None:
        while not self.stop.is_set():
            rows = []
            for _ in range(100):
                i = next(self.ids)
                region = "eu" if i % 3 else "us"
                rows.append({"request_id": f"q-{i}", "input": {"x": i % 11}, "segments": {"region": region}, "event_time": ""})
            sent = await split_traffic(
                rows, stable, canary, weight, lambda r: r["segments"], concurrency=16, keep_event_time=False
            )
            for k, v in sent.items():
                self.sent[k] += v
            await asyncio.sleep(0.05)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def test_a_live_canary_behind_a_traffic_split_is_judged_while_it_runs(tmp_path: Path, kafka_bootstrap: str, make_topic) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic(3)
    stable_server = ModelServer(score, ServerBehaviour(latency_ms=3))
    canary_server = ModelServer(score, ServerBehaviour(latency_ms=3, flaky_every=12))  # 1 call in 12 answers 503
    stable_url, canary_url = stable_server.start(), canary_server.start()
    home = tmp_path / "runs"
    cfg = tmp_path / "canary.toml"
    cfg.write_text(
        f"""[run]
id = "live-canary"
home = "{home}"
batch_size = 500
batch_timeout_ms = 200

[served]
source = {{ kind = "kafka-live", bootstrap = "{kafka_bootstrap}", topic = "{topic}", group = "g-{topic}", progress = false }}

[compare]
mode = "canary"
reference = {{ version = "v1" }}
subject = {{ version = "v2" }}

[segments]
fields = ["region"]

[output]
score_path = "score"
label_path = "label"
""",
        encoding="utf-8",
    )
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    stable = Backend(f"{stable_url}/invocations", InferenceLog.to_kafka(kafka_bootstrap, topic, "v1"))
    canary = Backend(f"{canary_url}/invocations", InferenceLog.to_kafka(kafka_bootstrap, topic, "v2"))
    seen: list[str] = []
    try:
        with Traffic(stable, canary, weight=0.3) as traffic, serving(create_app(GateSettings(home=home))) as gate:
            worker = Replay(
                args=[
                    "canary",
                    "--config",
                    str(cfg),
                    "--policy",
                    str(tmp_path / "policy.toml"),
                    "--judge-every",
                    "1",
                    "--until-decided",
                ]
            )

            def answer() -> dict[str, Any] | None:
                r = httpx.get(f"{gate}/runs/live-canary/verdict", timeout=5)
                if r.status_code == 404:
                    return None  # the worker has not created the run yet
                body: dict[str, Any] = r.json()
                if not seen or seen[-1] != body["verdict"]:
                    seen.append(body["verdict"])
                return body if body["verdict"] != "pending" else None

            final = worker.until(answer, 300, "the gate's first terminal verdict")
            assert final["verdict"] == "no_go", final["reasons"]
            assert worker.proc.wait(60) == 1  # --until-decided: the worker exits with the gate's NO_GO code
            assert traffic.sent["canary"] > 300
    finally:
        stable.log.close()
        canary.log.close()
        stable_server.stop()
        canary_server.stop()
    assert seen[0] == "pending"  # the gate answered during the run, before the evidence sufficed
    assert final["verdict"] == "no_go"
    assert any(r.startswith("error_rate failed in all") for r in final["reasons"]), final["reasons"]
    assert final["candidate"] == "v2"
