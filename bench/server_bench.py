"""Default settings against a real MLServer: pairs/s of a file replay whose candidate is one
MLServer 1.7.1 process (its default scikit-learn runtime, from .servers/, see
scripts/model-servers.sh), at shadowdiff's defaults for an oip-v2 model (512 rows a call, calls in
flight adapting to the server), as a ratio to the best fixed batch_size x concurrency that a
sweep finds in the same run. Target: >= 0.8, with 0 timeouts at the defaults.

    python bench/server_bench.py [--requests 20000] [--rounds 3] [--quick]

The sweep runs each setting once and keeps the fastest; that setting and the defaults are then
measured in alternating rounds, and the ratio is of their medians (the best of many noisy runs
is biased upward; medians of interleaved rounds are not).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import real_servers  # noqa: E402
from helpers import envelope, jsonl  # noqa: E402

from shadowdiff.replay.job import run_replay  # noqa: E402
from shadowdiff.schemas.config import load_config  # noqa: E402

SWEEP_BATCH = [16, 64, 256, 1024]
SWEEP_CONCURRENCY = [1, 2, 4, 8, 16]


def replay_once(tmp: Path, recording: Path, url: str, settings: str) -> tuple[float, dict[str, int]]:
    """(pairs per second, call errors by class) of one replay of the recording."""
    run_id = f"r{time.monotonic_ns()}"
    cfg = tmp / f"{run_id}.toml"
    cfg.write_text(
        f"""
[run]
id = "{run_id}"
home = "{tmp / "runs"}"
[source]
kind = "file"
path = "{recording}"
[output]
score_path = "score"
[[candidates]]
name = "mlserver"
kind = "oip-v2"
url = "{url}"
response_path = "predict_proba"
output = {{ score_path = "1" }}
{settings}
""",
        encoding="utf-8",
    )
    stats = run_replay(load_config(cfg))
    # the replay loop's span (opening and closing the store are not the calls' work)
    return stats.sampled / max((stats.finished or time.monotonic()) - stats.started, 1e-9), dict(stats.call_errors)


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--requests", type=int, default=20_000)
    args.add_argument("--rounds", type=int, default=3)
    args.add_argument("--quick", action="store_true", help="a smaller sweep and 5k requests")
    a = args.parse_args()
    batches, concurrencies = (SWEEP_BATCH, SWEEP_CONCURRENCY) if not a.quick else ([64, 256], [2, 8])
    n = 5000 if a.quick else a.requests
    rng = random.Random(3)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        recording = jsonl(tmp / "t.jsonl", [envelope(i, rng) for i in range(n)])
        with real_servers.mlserver(tmp) as url:
            replay_once(tmp, recording, url, "")  # warm-up: the server's first calls load its worker
            sweep: dict[tuple[int, int], tuple[float, dict[str, int]]] = {}
            for b in batches:
                for c in concurrencies:
                    fixed = f"batch_size = {b}\nconcurrency = {c}\nadaptive_concurrency = false"
                    sweep[(b, c)] = replay_once(tmp, recording, url, fixed)
                    rate, errors = sweep[(b, c)]
                    print(f"sweep batch_size={b:5d} concurrency={c:3d}: {rate:8.0f} pairs/s  errors {errors or 0}", flush=True)
            best = max((k for k in sweep if not sweep[k][1]), key=lambda k: sweep[k][0])
            best_settings = f"batch_size = {best[0]}\nconcurrency = {best[1]}\nadaptive_concurrency = false"
            defaults: list[float] = []
            bests: list[float] = []
            default_errors: dict[str, int] = {}
            for r in range(a.rounds):
                rate, errors = replay_once(tmp, recording, url, "")
                defaults.append(rate)
                for k, v in errors.items():
                    default_errors[k] = default_errors.get(k, 0) + v
                bests.append(replay_once(tmp, recording, url, best_settings)[0])
                print(f"round {r}: defaults {defaults[-1]:8.0f} pairs/s, best fixed {bests[-1]:8.0f} pairs/s", flush=True)
    ratio = statistics.median(defaults) / statistics.median(bests)
    print(f"best fixed setting: batch_size={best[0]} concurrency={best[1]}")
    print(f"defaults / best fixed (medians of {a.rounds} interleaved rounds): {ratio:.2f}  (target >= 0.8)")
    print(f"call errors at the defaults over {a.rounds} rounds: {default_errors or 'none'} (target: no timeout)")


if __name__ == "__main__":
    main()
