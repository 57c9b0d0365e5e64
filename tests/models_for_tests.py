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
