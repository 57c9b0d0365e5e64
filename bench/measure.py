"""Measurement helpers shared by the benchmarks."""

from __future__ import annotations

import math
from pathlib import Path


def share(hits: int, runs: int) -> str:
    """A share of simulated runs with its binomial standard error (never shown as exactly 0)."""
    p = hits / runs
    return f"{p:6.2%} ± {math.sqrt(max(p * (1 - p), 1 / runs) / runs):.2%}"


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's RSS at
    fork time across execve into a child's ru_maxrss, which inflates a subprocess's figure."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
