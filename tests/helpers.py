"""Traffic and stores for tests: envelopes, producers, configs, a demo-like model."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from shadowdiff.schemas.verdict import Verdict, verdict_dict

T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)

# event times no run may store: a nanosecond epoch, beyond 64 bits, huge, before 1970, year 1
# and 9999, an offset that crosses year 9999
POISON_TIMES: list[object] = [
    1_764_460_800_000_000_000,
    2**64 - 1,
    1e300,
    -1_764_460_800_000,
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-23:59",
]


def envelope(i: int, rng: random.Random, t0: datetime = T0, step_s: float = 1.0) -> dict[str, Any]:
    x = rng.gauss(0, 1)
    return {
        "request_id": f"req-{i}",
        "event_time": (t0 + timedelta(seconds=i * step_s)).isoformat(),
        "segments": {"region": rng.choice(["eu", "us", "apac"]), "device": rng.choice(["ios", "android"])},
        "input": {"x": x, "y": rng.random(), "plan": rng.choice(["free", "pro"])},
        "output": {"score": 1 / (1 + 2.718281828 ** (-x))},
        "latency_ms": 5.0,
        "model_version": "v1",
        "feature_version": "f1",
    }


def start_s3_server() -> tuple[Any, str]:
    """moto's S3 server (from PyPI) on a free loopback port, once it answers: the process and
    its endpoint URL."""
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto's S3 server did not start") from None
            time.sleep(0.1)  # polling the server's readiness


# busy until its parent is gone: a bench or test killed before its cleanup ran (SIGTERM, SIGKILL)
# left a burner spinning for the rest of the session, a load nobody had asked for
_BURN = """
import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(200_000):
        pass
"""


class CpuBurners:
    """Up to `most` busy processes, their number changed at random every `every` seconds (a
    range): load that comes and goes, as on a shared machine. Plain child processes, so the
    test process is never forked."""

    def __init__(self, most: int, seed: int, every: tuple[float, float] = (1.0, 8.0)) -> None:
        import threading

        self.most, self.every, self.rng = most, every, random.Random(seed)
        self.running: list[Any] = []
        self.done = threading.Event()
        self.switches = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _set(self, n: int) -> None:
        import subprocess
        import sys

        while len(self.running) > n:
            proc = self.running.pop()
            proc.kill()
            proc.wait(10)
        while len(self.running) < n:
            self.running.append(subprocess.Popen([sys.executable, "-c", _BURN]))

    def _loop(self) -> None:
        while not self.done.wait(self.rng.uniform(*self.every)):
            self._set(self.rng.randint(0, self.most))
            self.switches += 1
        self._set(0)

    def __enter__(self) -> CpuBurners:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(30)


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], timestamps_ms: list[int] | None = None) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024, acks="all")
    for n, (k, v) in enumerate(messages):
        p.send(topic, key=k, value=v, timestamp_ms=timestamps_ms[n] if timestamps_ms else None)
    p.flush()
    p.close()


def sampled(key: bytes, rate: float, salt: str = "shadowdiff") -> bool:
    """An independent re-implementation of the sampling rule, to check the pipeline against."""
    if rate >= 1.0:
        return True
    h = hashlib.blake2b(key, digest_size=8, salt=salt.encode()[:16]).digest()
    return int.from_bytes(h, "big") < int(rate * float(1 << 64))


def write_config(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[Any]) -> Path:
    with path.open("wb") as fh:
        for r in rows:
            fh.write(r if isinstance(r, bytes) else orjson.dumps(r))
            fh.write(b"\n")
    return path


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout_s`
    naming what never happened. Tests synchronise on conditions, never on fixed sleeps."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """The group's committed offsets per partition (partitions with none left out)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = c.partitions_for_topic(topic) or set()
        got = {p: c.committed(TopicPartition(topic, p)) for p in parts}
    finally:
        c.close()
    return {p: o for p, o in got.items() if o is not None}


def judged(home: Path, run: str, policy: Any = None) -> Verdict:
    """The verdict of a stored run under `policy` (built-in if None), its connection closed."""
    from shadowdiff.diff.judge import judge
    from shadowdiff.diff.load import open_run
    from shadowdiff.schemas.policy import Policy

    con = open_run(home, run)
    try:
        return judge(con, policy or Policy())
    finally:
        con.close()


def judge_run(home: Path, run: str, policy: Any = None) -> dict[str, Any]:
    """The verdict document of a stored run, as it is published."""
    return verdict_dict(judged(home, run, policy))


def verdict_of(home: Path, scenario: Any, policy: Any = None, run: str = "r") -> dict[str, Any]:
    """The verdict of a synthetic run store (diff.testing) under `policy` (built-in if None)."""
    from shadowdiff.diff.testing import write_synthetic_store

    write_synthetic_store(home / run / "store-w0.duckdb", scenario, run)
    return judge_run(home, run, policy)


def make_run(home: Path, run: str, scenario: Any, publish_it: bool = True, active: bool = False) -> Verdict:
    """A synthetic run judged under the built-in policy; its verdict published unless told."""
    from shadowdiff.cli.wiring import publish
    from shadowdiff.diff.testing import write_synthetic_store

    write_synthetic_store(home / run / "store-w0.duckdb", scenario, run)
    verdict = judged(home, run)
    verdict.run_active = active
    if publish_it:
        publish(home, run, verdict)
    return verdict


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium_page(errors: list[str], requests: list[str], dialogs: list[str] | None = None) -> Iterator[Any]:
    """A page of the Debian chromium, headless, recording console errors, every request and
    every dialog (dismissed). Skips the test when chromium is not installed."""
    import shutil

    import pytest

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1800})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.on("dialog", lambda d: (dialogs if dialogs is not None else errors).append(d.message) or d.dismiss())
            yield page
        finally:
            browser.close()


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """An ASGI app served by uvicorn on a loopback socket bound here (no pick-then-bind race);
    yields its base URL."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 60, "the service to start")
        assert server.started
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


def judged_document(con: Any, policy: Any, candidate: str | None = None) -> dict[str, Any]:
    """The judge's verdict on `con` as the document it publishes (JSON values)."""
    from shadowdiff.diff.judge import judge

    return verdict_dict(judge(con, policy, candidate))


# the features and segment fields of `envelope` traffic, as a run config names them
TRAFFIC_FIELDS = """[features]
numeric = ["x", "y"]
categorical = ["plan"]
[segments]
fields = ["region", "device"]"""


def window_config(
    tmp: Path,
    bootstrap: str,
    topic: str,
    run: str,
    candidates: str,
    rate: float = 1.0,
    extra: str = "",
    batch: int = 500,
    group: str = "",
    client: str = "kafka-python",
) -> Path:
    """A kafka-window run over the test traffic of `envelope` (a day from T0), its candidates
    and any `extra` TOML (an [envelope] table, a policy of the run)."""
    return write_config(
        tmp / f"{run}.toml",
        f"""
[run]
id = "{run}"
home = "{tmp / "runs"}"
batch_size = {batch}
batch_timeout_ms = 200
[source]
kind = "kafka-window"
bootstrap = "{bootstrap}"
topic = "{topic}"
start = "{T0.isoformat()}"
end = "{(T0 + timedelta(days=1)).isoformat()}"
progress = false
client = "{client}"
{f'group = "{group}"' if group else ""}
{TRAFFIC_FIELDS}
[sampling]
rate = {rate}
key = "kafka_key"
[output]
score_path = "score"
threshold = 0.5
{extra}
{candidates}
""",
    )


def file_config(tmp: Path, run: str, path: str, rate: float = 1.0, batch: int = 100) -> Path:
    """A replay of a recording of `envelope` traffic (relative to `tmp`) with the in-process
    logistic candidate; the run's home is `tmp / "runs"`."""
    return write_config(
        tmp / f"{run}.toml",
        f"""
[run]
id = "{run}"
home = "runs"
batch_size = {batch}
[source]
kind = "file"
path = "{path}"
{TRAFFIC_FIELDS}
[sampling]
rate = {rate}
[output]
score_path = "score"
[[candidates]]
name = "c"
kind = "python"
target = "models_for_tests:logistic"
""",
    )


def outcome_run_config(tmp: Path, outcome_source: str, model: str = "logistic", batch: int = 500) -> Path:
    """A file replay of `envelope` traffic (`t.jsonl` in `tmp`) with an in-process candidate and
    scores cut at 0.5 into labels, whose labelled outcomes come from `outcome_source` (the TOML
    lines of an [outcomes.source] table)."""
    return write_config(
        tmp / "r.toml",
        f"""
[run]
id = "r"
home = "runs"
batch_size = {batch}
batch_timeout_ms = 100
[source]
kind = "file"
path = "t.jsonl"
{TRAFFIC_FIELDS}
[output]
score_path = "score"
threshold = 0.5
[[candidates]]
name = "c"
kind = "python"
target = "models_for_tests:{model}"
[outcomes]
label = "label"
[outcomes.source]
{outcome_source}
""",
    )
