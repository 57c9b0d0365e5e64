"""In-process models the tests' configs point at (`models_for_tests:...`)."""

from __future__ import annotations

import math
import time
from typing import Any


def logistic(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    return [{"score": 1 / (1 + math.exp(-float(r.get("x", 0))))} for r in rows]


def slow_logistic(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    time.sleep(0.1)
    return logistic(rows)


def broken(rows: list[dict[str, Any]]) -> list[Any]:
    raise RuntimeError("model bug")


def _rank(r: dict[str, Any]) -> list[str]:
    base = int(abs(float(r.get("x", 0))) * 1000)
    return [f"item{(base + i) % 50}" for i in range(10)]


def structured_baseline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        p = 1 / (1 + math.exp(-float(r.get("x", 0))))
        out.append({"score": p, "probs": [p, 1 - p], "ranking": _rank(r), "meta": {"reason": "ok", "trace": str(r.get("y"))}})
    return out


def structured_candidate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds a field in a third of the answers; reverses the ranking for `plan == "pro"`."""
    out = structured_baseline(rows)
    for r, o in zip(rows, out, strict=True):
        o["meta"]["trace"] = "changed-every-time"  # ignored by the config: must not count
        if int(abs(float(r.get("x", 0))) * 1000) % 3 == 0:
            o["meta"]["extra"] = True
        if r.get("plan") == "pro":
            o["ranking"] = [f"other{i}" for i in range(5)] + o["ranking"][5:]
    return out


SCRIPT = "</script><script>alert(3)</script><img src=x onerror=alert(4)>"


def hostile(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A candidate whose answers carry script payloads in their label and an extra field."""
    return [{"score": 1 / (1 + math.exp(-float(r.get("x", 0)))), "label": SCRIPT, "note": SCRIPT} for r in rows]


def delay_probability(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """An MLflow-style answer: a dict per row."""
    return [{"delay_probability": s["score"]} for s in logistic(rows)]


def predict_proba(rows: list[dict[str, Any]]) -> list[list[float]]:
    """The same model as a scikit-learn classifier served over OIP v2: [P(on time), P(delay)]."""
    return [[1 - s["score"], s["score"]] for s in logistic(rows)]


def logistic_of_tensor(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """A model fed one [n, 2] tensor of (x, y): the same logistic of x."""
    return logistic([{"x": r["input-0"][0]} for r in rows])


def refuses_negative(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Fails the whole call when any row has a negative x, as a strict model server does."""
    if any(float(r.get("x", 0)) < 0 for r in rows):
        raise ValueError("negative x")
    return logistic(rows)


def regresses_at_night_later(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The baseline's logistic score, except for night requests in the second half of the
    recording (input `i` >= `half`), whose score is mirrored: a regression that grows over time."""
    out = []
    for r in rows:
        p = 1 / (1 + math.exp(-float(r.get("x", 0))))
        if r.get("daypart") == "night" and int(r.get("i", 0)) >= int(r.get("half", 0)):
            p = 1 - p
        out.append({"score": p})
    return out


def shifted_logistic(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The logistic of x - 0.3: its label differs from `logistic`'s for x in [0, 0.3)."""
    return [{"score": 1 / (1 + math.exp(-(float(r.get("x", 0)) - 0.3)))} for r in rows]
