"""Gate service under load while a replay writes: open-loop GETs of the Argo verdict endpoint at a
fixed rate on loopback, bounded in count and time; prints latency percentiles.

    python bench/gate_load.py [--rate 500] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def recording(path: Path, n: int) -> None:
    from shadowdiff.cli.demo_traffic import generate

    with path.open("wb") as fh:
        for i in range(0, n, 5000):
            for env in generate(min(5000, n - i), seed=i):
                fh.write(orjson.dumps(env) + b"\n")


RUN = """
[run]
id = "load"
home = "{home}"
batch_size = 1000
[source]
kind = "file"
path = "{rec}"
[features]
numeric = ["age", "tenure_days", "sessions_7d", "basket_value"]
categorical = ["plan"]
[segments]
fields = ["region", "device"]
[baseline]
kind = "model"
model = {{ name = "b", kind = "python", target = "shadowdiff.cli.demo_traffic:baseline_batch" }}
[output]
score_path = "score"
label_path = "label"
[[candidates]]
name = "c"
kind = "python"
target = "shadowdiff.cli.demo_traffic:candidate_batch"
"""


async def load(url: str, rate: float, seconds: float) -> tuple[list[float], int, int]:
    lat: list[float] = []
    errors = 0
    n = int(rate * seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as s:

        async def one() -> None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                async with s.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            lat.append((time.perf_counter() - t0) * 1000)

        start = time.perf_counter()
        tasks = []
        for i in range(n):  # open loop: requests leave on schedule whatever the answers do
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return lat, errors, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="shadowdiff-gate-load-"))
    rec = home / "traffic.jsonl"
    recording(rec, 150_000)
    (home / "run.toml").write_text(RUN.format(home=home / "runs", rec=rec))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    port = free_port()
    gate = subprocess.Popen(
        [sys.executable, "-m", "shadowdiff.cli.main", "serve", "--home", str(home / "runs"), "--port", str(port)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    writer = subprocess.Popen(
        [sys.executable, "-m", "shadowdiff.cli.main", "replay", "--config", str(home / "run.toml"), "--judge-every", "10"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        verdict = home / "runs" / "load" / "verdict-c.json"
        deadline = time.monotonic() + 120
        while not verdict.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/runs/load/verdict"
        lat, errors, n = asyncio.run(load(url, args.rate, args.seconds))
        still_writing = writer.poll() is None
        a = np.asarray(lat)
        print(
            f"gate under load: {n} GETs of the Argo verdict endpoint at {args.rate:.0f}/s for {args.seconds:.0f} s, "
            f"replay writing throughout: {still_writing}"
        )
        print(
            f"latency ms: p50 {np.percentile(a, 50):.2f}  p95 {np.percentile(a, 95):.2f}  p99 {np.percentile(a, 99):.2f}  "
            f"max {a.max():.2f} (target p99 <= 20 ms); non-200 or failed: {errors}"
        )
    finally:
        # a stopped replay stores its batch in hand, exports and judges once more before it exits
        t_stop = time.monotonic()
        writer.terminate()
        gate.terminate()
        writer.wait(120)
        gate.wait(10)
        print(f"the replay stopped {time.monotonic() - t_stop:.1f} s after SIGTERM (final store, export and verdict)")


if __name__ == "__main__":
    main()
