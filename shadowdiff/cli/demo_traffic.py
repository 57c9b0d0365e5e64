"""Realistic traffic and real models for `shadowdiff demo`: a churn-style scoring model over
15 features, with region, device and hour-of-day segments, trained with scikit-learn."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the demo's models need the `demo` extra; generating traffic does not
    from sklearn.pipeline import Pipeline

NUMERIC = [
    "age",
    "tenure_days",
    "sessions_7d",
    "avg_session_min",
    "basket_value",
    "discount_pct",
    "pages_viewed",
    "days_since_last",
    "support_tickets",
    "hour",
    "cart_items",
    "returns_90d",
]
CATEGORICAL = ["plan", "channel", "payment"]
CATS = {"plan": ["free", "pro", "business"], "channel": ["web", "app", "email"], "payment": ["card", "paypal", "invoice"]}
REGIONS, REGION_P = ["eu", "us", "apac"], [0.45, 0.45, 0.10]
DEVICES, DEVICE_P = ["ios", "android", "web"], [0.35, 0.35, 0.30]
T0 = datetime(2026, 11, 23, tzinfo=UTC)


def generate(n: int, seed: int, t0: datetime = T0, hours: float = 48.0) -> list[dict[str, Any]]:
    """Envelopes in event-time order, with the feature pipeline version that built them."""
    rng = np.random.default_rng(seed)
    secs = np.sort(rng.uniform(0, hours * 3600, n))
    out = []
    for i in range(n):
        t = t0 + timedelta(seconds=float(secs[i]))
        night = t.hour < 6
        f = {
            "age": float(np.clip(rng.normal(38, 12), 18, 90)),
            "tenure_days": float(rng.gamma(2.0, 180)),
            "sessions_7d": float(rng.poisson(6 if not night else 3)),
            "avg_session_min": float(rng.lognormal(2.0, 0.5)),
            "basket_value": float(rng.lognormal(3.5, 0.7)),
            "discount_pct": float(rng.choice([0, 5, 10, 20], p=[0.6, 0.2, 0.15, 0.05])),
            "pages_viewed": float(rng.poisson(12)),
            "days_since_last": float(rng.exponential(9)),
            "support_tickets": float(rng.poisson(0.4)),
            "hour": float(t.hour),
            "cart_items": float(rng.poisson(2.5)),
            "returns_90d": float(rng.poisson(0.3)),
            "plan": str(rng.choice(CATS["plan"], p=[0.6, 0.3, 0.1])),
            "channel": str(rng.choice(CATS["channel"])),
            "payment": str(rng.choice(CATS["payment"], p=[0.7, 0.2, 0.1])),
        }
        out.append(
            {
                "request_id": f"req-{seed}-{i:06d}",
                "event_time": t.isoformat(),
                "segments": {"region": str(rng.choice(REGIONS, p=REGION_P)), "device": str(rng.choice(DEVICES, p=DEVICE_P))},
                "input": f,
                "feature_version": "enc-v4",
            }
        )
    return out


def outcomes(rows: list[dict[str, Any]], seed: int, mean_delay_h: float = 6.0) -> list[dict[str, Any]]:
    """Whether each request's customer churned, drawn from the true model the traffic follows,
    observed an exponential delay after the request (a tenth of the requests never resolve)."""
    rng = np.random.default_rng(seed)
    out = []
    for r in rows:
        if rng.random() < 0.1:
            continue
        churned = rng.random() < 1 / (1 + math.exp(-true_logit(r["input"])))
        seen = datetime.fromisoformat(r["event_time"]) + timedelta(hours=float(rng.exponential(mean_delay_h)))
        out.append({"request_id": r["request_id"], "churned": int(churned), "observed_at": seen.isoformat()})
    return out


def true_logit(f: dict[str, Any]) -> float:
    return (
        -1.0
        + 0.9 * math.log1p(f["days_since_last"])
        - 0.25 * f["sessions_7d"] / 3
        - 0.002 * f["tenure_days"]
        + 0.6 * f["support_tickets"]
        + 0.4 * (f["plan"] == "free")
        - 0.3 * (f["channel"] == "app")
        + 0.35 * f["returns_90d"]
        - 0.004 * f["basket_value"]
    )


def encode(rows: list[dict[str, Any]], night_minutes_bug: bool = False) -> np.ndarray:
    """The feature encoder. `night_minutes_bug` is encoder v5's regression: for night traffic
    it reads `days_since_last` as hours (a unit change that only a night-time code path hit)."""
    cols = []
    for r in rows:
        night = r.get("hour", 12) < 6
        dsl = float(r["days_since_last"]) * (24 if night_minutes_bug and night else 1)
        x = [float(r[k]) if k != "days_since_last" else dsl for k in NUMERIC]
        x += [1.0 if r[c] == v else 0.0 for c in CATEGORICAL for v in CATS[c][1:]]
        x[NUMERIC.index("days_since_last")] = math.log1p(x[NUMERIC.index("days_since_last")])
        cols.append(x)
    return np.asarray(cols)


def train(seed: int, n: int = 60_000) -> Pipeline:
    """A churn model fitted on `n` labelled rows: two models fitted on different draws differ
    by their sampling noise only, which shrinks as `n` grows (the demo's sound candidate must be
    within its flip margin)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    rows = [e["input"] for e in generate(n, seed + 1000)]
    y = np.array([rng.random() < 1 / (1 + math.exp(-true_logit(r))) for r in rows])
    # scaled inputs: the solver converges in far fewer iterations
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    model.fit(encode(rows), y)
    return model


def scorer(
    model: Pipeline, night_bug: bool = False, noise: float = 0.003, seed: int = 0
) -> Callable[[list[dict[str, Any]]], list[Any]]:
    """A batch predict function: rows -> [{"score", "label"}]. `noise` mimics the small
    nondeterminism of real inference, so two calls of the same model differ a little (the
    noise floor the demo measures)."""
    rng = np.random.default_rng(seed)

    def predict(rows: list[dict[str, Any]]) -> list[Any]:
        p = model.predict_proba(encode(rows, night_bug))[:, 1]
        p = np.clip(p + rng.normal(0, noise, len(p)), 0, 1)
        return [{"score": float(v), "label": int(v >= 0.5)} for v in p]

    return predict


_MODELS: dict[str, Callable[[list[dict[str, Any]]], list[Any]]] = {}
_TRAINING = threading.Lock()


def _model(name: str) -> Callable[[list[dict[str, Any]]], list[Any]]:
    # trained once per process on first use: the compose worker's in-process models. Training
    # takes about 10 s, longer than a call's timeout: the calls that timed out meanwhile wait
    # for the one training under the lock (without it each trained its own, and a stopped
    # replay waited minutes for those threads to end)
    with _TRAINING:
        if name not in _MODELS:
            _MODELS["baseline"] = scorer(train(seed=1), seed=11)
            _MODELS["candidate"] = scorer(train(seed=2), seed=14)
    return _MODELS[name]


def baseline_batch(rows: list[dict[str, Any]]) -> list[Any]:
    """`shadowdiff.cli.demo_traffic:baseline_batch`, an in-process baseline for docker compose."""
    return _model("baseline")(rows)


def candidate_batch(rows: list[dict[str, Any]]) -> list[Any]:
    """`shadowdiff.cli.demo_traffic:candidate_batch`, the retrained candidate."""
    return _model("candidate")(rows)
