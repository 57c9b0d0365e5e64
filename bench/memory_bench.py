"""Peak memory of a replay at the batch sizes users pick, with an in-process model and with an
HTTP candidate (MLflow's /invocations format, batched) on a loopback server:

    python bench/memory_bench.py [--messages 200000] [--batch-sizes 2000,20000]

Each replay runs in a child process of its own; printed: the replay process's peak RSS
(VmHWM), and the call process's (HTTP candidates call from a child with its own GIL). The
reference in the same run is a child that only imports the replay and opens a store: what the
interpreter and the libraries cost before any message is read. Target: the replay's peak
< 500 MB at every batch size up to 20k.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from replay_bench import PY_TABLE_CAND, bootstrap, config, produce  # noqa: E402


def serve(conn, latency_ms: float) -> None:  # type: ignore[no-untyped-def]
    """The bench model behind MLflow's /invocations; `latency_ms` per call emulates a real
    model server (MLflow's answers a 2,000-row batch in ~80 ms here)."""
    from bench_models import score_batch

    from shadowdiff.replay.testing import ModelServer, ServerBehaviour

    srv = ModelServer(score_batch, ServerBehaviour(latency_ms=latency_ms, latency_sigma=0.1))
    conn.send(srv.start())
    conn.recv()
    srv.stop()


def mlflow_candidate(url: str, rows_per_call: int) -> str:
    return f"""[[candidates]]
name = "mlflow"
kind = "mlflow"
url = "{url}/invocations"
batch_size = {rows_per_call}
concurrency = 8
"""


def child(cfg_path: str, baseline_only: bool) -> None:
    """Run one replay (or only open its store, for the reference) and print its figures."""
    import threading

    from measure import peak_rss_mb

    from shadowdiff.replay.job import run_replay
    from shadowdiff.replay.store import StoreWriter
    from shadowdiff.schemas.config import load_config

    cfg = load_config(Path(cfg_path))
    if baseline_only:
        import kafka  # noqa: F401  the libraries a replay loads before reading
        import pyarrow  # noqa: F401

        StoreWriter(cfg).close()
        print(f"0 {peak_rss_mb():.0f} 0")
        return
    peak_child = [0.0]
    stop_watch = threading.Event()

    def watch_children() -> None:
        # the call process's own VmHWM, read while it lives (it ends with the replay)
        me = os.getpid()
        while not stop_watch.is_set():
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    text = status.read_text()
                except OSError:
                    continue
                if f"\nPPid:\t{me}\n" in text:
                    for line in text.splitlines():
                        if line.startswith("VmHWM:"):
                            peak_child[0] = max(peak_child[0], int(line.split()[1]) / 1024)
            stop_watch.wait(0.5)

    watcher = threading.Thread(target=watch_children, daemon=True)
    watcher.start()
    stats = run_replay(cfg)
    stop_watch.set()
    watcher.join(5)
    print(f"{stats.consumed} {peak_rss_mb():.0f} {peak_child[0]:.0f}")


def run_child(cfg: Path, baseline_only: bool = False) -> tuple[int, int, int]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'bench'}"}
    cmd = [sys.executable, __file__, "--child", str(cfg)] + (["--baseline-only"] if baseline_only else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child failed: {out.stderr[-3000:]}")
    consumed, rss, call_rss = out.stdout.split()[-3:]
    return int(consumed), int(rss), int(call_rss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--batch-sizes", default="2000,20000")
    ap.add_argument("--rows-per-call", type=int, default=2000, help="rows per MLflow call")
    ap.add_argument("--latency-ms", type=float, default=80.0, help="the model server's time per call")
    args = ap.parse_args()
    bs = bootstrap()
    home = Path(tempfile.mkdtemp(prefix="shadowdiff-memory-bench-"))
    topic = f"bench-mem-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    produce(bs, topic, args.messages)
    print(f"produced {args.messages:,} messages in {time.perf_counter() - t0:.1f} s")
    parent, conn = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(conn, args.latency_ms), daemon=True)
    server.start()
    url = parent.recv()
    try:
        _, ref, _ = run_child(config(bs, topic, home, "ref", 1.0, PY_TABLE_CAND, args.messages), baseline_only=True)
        print(f"reference: a process that imports the replay and opens a store: {ref} MB")
        for size in (int(x) for x in args.batch_sizes.split(",")):
            for name, cand in (
                ("in-process table model", PY_TABLE_CAND),
                ("MLflow HTTP candidate", mlflow_candidate(url, args.rows_per_call)),
            ):
                cfg = config(bs, topic, home, f"mem-{size}-{uuid.uuid4().hex[:4]}", 1.0, cand, args.messages, batch_size=size)
                consumed, rss, call_rss = run_child(cfg)
                extra = f"; call process {call_rss} MB" if call_rss else ""
                print(
                    f"batch_size {size:>6,}, {name}: {consumed:,} messages, replay peak RSS {rss} MB "
                    f"({rss / ref:.1f}x the reference; target < 500 MB){extra}"
                )
    finally:
        parent.send("stop")
        server.join(10)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        child(sys.argv[2], baseline_only="--baseline-only" in sys.argv)
    else:
        main()
