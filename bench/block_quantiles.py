"""Would a better per-block quantile estimator narrow the latency interval? Measured on demo
stores (the noise bench's `--keep`): the judge's statistic is the mean over time blocks of
log(candidate P95 / baseline P95), each block's P95 interpolated between order statistics, with
a batch-means standard error widened for the blocks' lag-1 correlation
(diff.checks.batch_means_error). This bench cuts the same blocks (diff.aggregate.block_size,
last_block) in the same call order and prints that standard error beside the one of
Harrell-Davis block quantiles (a weighted mean of all order statistics, scipy's `hdquantiles`),
which uses a block's tail more fully.

    python bench/block_quantiles.py STORE.duckdb [STORE.duckdb ...] [--candidate slow] [--quantile 0.95]

A ratio of standard errors r means r^2 as many pairs for the same interval.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.stats.mstats import hdquantiles

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from burst_noise import latency_pairs

from shadowdiff.diff.aggregate import block_size, last_block
from shadowdiff.diff.checks import batch_means_error


def interpolated(x: np.ndarray, q: float) -> float:
    return float(np.quantile(x, q))  # as DuckDB's quantile_cont


def harrell_davis(x: np.ndarray, q: float) -> float:
    return float(hdquantiles(x, [q])[0])


def block_se(pairs: np.ndarray, q: float, estimator: Callable[[np.ndarray, float], float]) -> tuple[float, float]:
    n = len(pairs)
    size = block_size(n)
    block = np.minimum(np.arange(n) // size, last_block(n, size))
    logs = [math.log(estimator(pairs[block == j, 1], q) / estimator(pairs[block == j, 0], q)) for j in range(int(block[-1]) + 1)]
    return math.exp(statistics.fmean(logs)), batch_means_error(logs)[0]  # the judge's error


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("stores", nargs="+", type=Path)
    args.add_argument("--candidate", default="slow")
    args.add_argument("--quantile", type=float, default=0.95)
    a = args.parse_args()
    ratios = []
    for store in a.stores:
        pairs = latency_pairs(store, a.candidate)
        ratio, se = block_se(pairs, a.quantile, interpolated)
        hd_ratio, hd_se = block_se(pairs, a.quantile, harrell_davis)
        ratios.append(hd_se / se)
        print(
            f"{store}: {len(pairs)} pairs; interpolated ×{ratio:.3f} se {se:.4f}; "
            f"Harrell-Davis ×{hd_ratio:.3f} se {hd_se:.4f}; se ratio {hd_se / se:.2f}"
        )
    med = statistics.median(ratios)
    print(
        f"\n{len(ratios)} stores: Harrell-Davis / interpolated se, median {med:.2f} (range {min(ratios):.2f}-{max(ratios):.2f}): "
        f"Harrell-Davis needs {med**2:.2f}x the pairs for the same interval"
    )


if __name__ == "__main__":
    main()
