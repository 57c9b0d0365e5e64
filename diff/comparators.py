"""Model-aware comparisons of one baseline/candidate output pair: structured JSON field diffs
(the Diffy way), top-k overlap and rank correlation for rankings, probability distances."""

from __future__ import annotations

import math
from typing import Any

from scipy.spatial.distance import jensenshannon
from scipy.stats import kendalltau


def json_diff(a: Any, b: Any, path: str = "", tol: float = 1e-9, limit: int = 50) -> list[dict[str, Any]]:
    """Field-level differences: `missing` (in a, not b), `extra` (in b, not a), `changed`,
    `type_changed`. Numbers equal within `tol` are equal."""
    out: list[dict[str, Any]] = []

    def walk(x: Any, y: Any, p: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for k in x.keys() | y.keys():
                q = f"{p}.{k}" if p else str(k)
                if k not in y:
                    out.append({"path": q, "kind": "missing", "baseline": x[k], "candidate": None})
                elif k not in x:
                    out.append({"path": q, "kind": "extra", "baseline": None, "candidate": y[k]})
                else:
                    walk(x[k], y[k], q)
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                out.append(
                    {
                        "path": p or "<root>",
                        "kind": "changed",
                        "baseline": f"{len(x)} items",
                        "candidate": f"{len(y)} items",
                    }
                )
            for i, (u, v) in enumerate(zip(x, y, strict=False)):
                walk(u, v, f"{p}[{i}]")
        elif _kind(x) != _kind(y):
            out.append({"path": p or "<root>", "kind": "type_changed", "baseline": x, "candidate": y})
        elif isinstance(x, int | float) and not isinstance(x, bool):
            if not math.isclose(float(x), float(y), rel_tol=0, abs_tol=tol):
                out.append({"path": p or "<root>", "kind": "changed", "baseline": x, "candidate": y})
        elif x != y:
            out.append({"path": p or "<root>", "kind": "changed", "baseline": x, "candidate": y})

    walk(a, b, path)
    return out


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if v is None:
        return "null"
    return type(v).__name__


def overlap_at_k(a: list[Any], b: list[Any], k: int) -> float:
    """Share of the baseline's top-k that the candidate's top-k also holds."""
    if k <= 0:
        return 1.0
    sa, sb = set(map(str, a[:k])), set(map(str, b[:k]))
    return len(sa & sb) / max(1, min(k, len(sa)))


def rank_correlation(a: list[Any], b: list[Any]) -> float:
    """Kendall's tau over the items both rankings hold (1 = same order)."""
    pos_b = {str(x): i for i, x in enumerate(b)}
    shared = [(i, pos_b[str(x)]) for i, x in enumerate(a) if str(x) in pos_b]
    if len(shared) < 2:
        return float("nan")
    tau = kendalltau([s[0] for s in shared], [s[1] for s in shared]).statistic
    return float(tau)


def probability_distance(p: list[float], q: list[float]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two class-probability vectors."""
    if len(p) != len(q) or not p:
        return float("nan")
    return float(jensenshannon(p, q, base=2))
