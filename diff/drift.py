"""Distribution drift with evidently's default methods, computed at scale in DuckDB:

- reference > 1000 rows: normalised Wasserstein (numeric) / Jensen-Shannon distance
  (categorical, or numeric with <= 5 distinct values), drift when >= 0.1;
- reference <= 1000 rows: two-sample Kolmogorov-Smirnov (numeric) / chi-square (categorical),
  drift when p < 0.05;
- PSI (10 reference-quantile bins) reported beside, for those who ask for it.

Quantile grids replace full sorts: Wasserstein-1 is the mean gap between the two quantile
functions, read on a 400-point grid (within ~0.002 of the exact value on smooth data)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import chisquare, ks_2samp

SMALL = 1000  # evidently switches from tests to distances above this reference size
DISTANCE_THRESHOLD = 0.1
P_THRESHOLD = 0.05


@dataclass(frozen=True)
class DriftResult:
    method: str  # wasserstein | jensenshannon | ks | chisquare
    score: float  # the distance, or the p-value for tests
    drifted: bool
    psi: float | None
    n_ref: int
    n_cur: int

    @property
    def is_test(self) -> bool:
        return self.method in ("ks", "chisquare")


def wasserstein_normed(q_ref: Sequence[float], q_cur: Sequence[float], sd_ref: float) -> float:
    w = float(np.mean(np.abs(np.asarray(q_cur, float) - np.asarray(q_ref, float))))
    if sd_ref <= 0 or not math.isfinite(sd_ref):
        return 0.0 if w == 0 else float("inf")
    return w / sd_ref


def psi_from_grids(grid: Sequence[float], q_ref: Sequence[float], q_cur: Sequence[float], bins: int = 10) -> float:
    """PSI with `bins` reference-quantile bins, reading the current CDF off its quantile grid."""
    g = np.asarray(grid)
    qr = np.asarray(q_ref, float)
    qc = np.asarray(q_cur, float)
    edges = np.interp(np.linspace(0, 1, bins + 1)[1:-1], g, qr)
    cdf_cur = np.interp(edges, qc, g, left=0.0, right=1.0)
    cur = np.diff(np.concatenate([[0.0], cdf_cur, [1.0]]))
    ref = np.full(bins, 1.0 / bins)
    cur = np.clip(cur, 1e-4, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def numeric_drift(
    grid: Sequence[float],
    q_ref: Sequence[float],
    q_cur: Sequence[float],
    sd_ref: float,
    n_ref: int,
    n_cur: int,
    raw_ref: Sequence[float] | None = None,
    raw_cur: Sequence[float] | None = None,
) -> DriftResult:
    psi = psi_from_grids(grid, q_ref, q_cur)
    if n_ref <= SMALL and raw_ref is not None and raw_cur is not None and len(raw_ref) and len(raw_cur):
        p = float(ks_2samp(raw_ref, raw_cur).pvalue)
        return DriftResult("ks", p, p < P_THRESHOLD, psi, n_ref, n_cur)
    w = wasserstein_normed(q_ref, q_cur, sd_ref)
    return DriftResult("wasserstein", w, w >= DISTANCE_THRESHOLD, psi, n_ref, n_cur)


def categorical_drift(ref_counts: dict[str, int], cur_counts: dict[str, int]) -> DriftResult:
    keys = sorted(set(ref_counts) | set(cur_counts))
    r = np.array([ref_counts.get(k, 0) for k in keys], float)
    c = np.array([cur_counts.get(k, 0) for k in keys], float)
    n_ref, n_cur = int(r.sum()), int(c.sum())
    if n_ref == 0 or n_cur == 0:
        return DriftResult("jensenshannon", 0.0, False, None, n_ref, n_cur)
    rp, cp = r / n_ref, c / n_cur
    eps = 1e-4
    psi = float(
        np.sum((np.clip(cp, eps, None) - np.clip(rp, eps, None)) * np.log(np.clip(cp, eps, None) / np.clip(rp, eps, None)))
    )
    if n_ref <= SMALL:
        # evidently: chi-square of current counts against reference proportions
        mask = rp > 0
        if mask.sum() < 2:
            return DriftResult("chisquare", 1.0, False, psi, n_ref, n_cur)
        extra = c[~mask].sum()
        exp = rp[mask] * n_cur
        obs = c[mask] + (extra * rp[mask])  # unseen categories are a new-category finding instead
        p = float(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)
        return DriftResult("chisquare", p, p < P_THRESHOLD, psi, n_ref, n_cur)
    js = float(jensenshannon(rp, cp))
    return DriftResult("jensenshannon", js, js >= DISTANCE_THRESHOLD, psi, n_ref, n_cur)
