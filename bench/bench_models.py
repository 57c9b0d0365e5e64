"""Models the benchmarks call in-process (`bench_models:score_batch`)."""

from __future__ import annotations

import math
from typing import Any

WEIGHTS = [0.3, -0.2, 0.1, 0.05, -0.15, 0.25, -0.05, 0.12, -0.3, 0.02, 0.07, -0.11]


def score_batch(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """A batched linear scorer over the 12 numeric features (vectorisable, like a real model)."""
    out = []
    for r in rows:
        z = sum(w * float(r.get(f"n{i}", 0.0)) for i, w in enumerate(WEIGHTS))
        out.append({"score": 1.0 / (1.0 + math.exp(-z))})
    return out


def score_table(features: Any) -> Any:
    """The same scorer for `input = "table"`: the declared features arrive as a pyarrow Table
    and are scored with one matrix product, as a numpy or scikit-learn model would."""
    import numpy as np

    cols = [np.nan_to_num(features.column(f"n{i}").to_numpy(zero_copy_only=False)) for i in range(len(WEIGHTS))]
    z = np.column_stack(cols) @ np.asarray(WEIGHTS)
    return 1.0 / (1.0 + np.exp(-z))
