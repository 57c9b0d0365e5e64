"""Inference-log records of simulated served traffic (schemas/served.py), for the demo, the tests
and the canary bench: a service answering `rate_per_s` requests a second for `minutes`, split
between versions by weight, each version's latency lognormal times its own server's bursts of
load (AR(1) on 3-second slices, as bench/burst_noise.py measured here), its errors Bernoulli,
its scores from the request's features. A `Version` describes how one version behaves, and may
behave differently in one segment (a stale feature encoder for one region)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

REGIONS = ("eu", "us", "apac")
REGION_SHARE = (0.45, 0.4, 0.15)
PLANS = ("basic", "pro", "team")
SLICE_S = 3.0
BURSTS = (0.085, 0.6)  # sd and lag-1 correlation of a server's load per slice


@dataclass(frozen=True)
class Version:
    name: str
    latency_factor: float = 1.0
    log_sd_factor: float = 1.0
    error_rate: float = 0.01
    score_shift: float = 0.0
    # segment "field=value" -> a version that behaves differently there (its name is ignored)
    in_segment: dict[str, Version] = field(default_factory=dict)


def _ar1(rng: np.random.Generator, n: int, sd: float, phi: float) -> np.ndarray:
    out = np.empty(n)
    x = rng.normal(0, sd)
    for i in range(n):
        out[i] = x
        x = phi * x + rng.normal(0, sd * math.sqrt(1 - phi * phi))
    return out


def served_records(
    versions: list[tuple[Version, float]],
    minutes: float,
    rate_per_s: float = 100.0,
    start: datetime = datetime(2026, 12, 7, 10, tzinfo=UTC),
    seed: int = 0,
    region_share: tuple[float, ...] = REGION_SHARE,
) -> Iterator[dict[str, Any]]:
    """Records in time order; `versions`: (version, weight of the traffic) pairs."""
    rng = np.random.default_rng(seed)
    slices = max(1, int(minutes * 60 / SLICE_S))
    loads = {v.name: _ar1(rng, slices, *BURSTS) for v, _ in versions}
    weights = np.array([w for _, w in versions], float)
    weights /= weights.sum()
    share = np.array(region_share, float) / sum(region_share)
    n_total = 0
    for t in range(slices):
        n = int(rng.poisson(rate_per_s * SLICE_S))
        which = rng.choice(len(versions), size=n, p=weights)
        regions = rng.choice(len(REGIONS), size=n, p=share)
        offsets = np.sort(rng.uniform(0, SLICE_S, n))
        for i in range(n):
            base, _ = versions[which[i]]
            region = REGIONS[regions[i]]
            v = base.in_segment.get(f"region={region}", base)
            tenure = float(rng.gamma(2.0, 12.0))
            plan = PLANS[int(rng.integers(0, 3))]
            logit = -1.0 + 0.9 * (plan == "basic") - 0.03 * tenure + rng.normal(0, 0.8)
            score = 1 / (1 + math.exp(-logit)) + v.score_shift
            score = min(max(score, 0.0), 1.0)
            latency = 50.0 * v.latency_factor * math.exp(loads[base.name][t] + rng.normal(0, 0.4 * v.log_sd_factor))
            ok = rng.random() >= v.error_rate
            n_total += 1
            yield {
                "request_id": f"r-{seed}-{n_total}",
                "model_version": base.name,
                "event_time": (start + timedelta(seconds=t * SLICE_S + offsets[i])).isoformat().replace("+00:00", "Z"),
                "latency_ms": round(latency, 3),
                "status": "ok" if ok else "error",
                "segments": {"region": region},
                "input": {"tenure": round(tenure, 2), "plan": plan},
                "output": {"score": round(score, 5), "label": "churn" if score >= 0.5 else "stay"} if ok else None,
            }
