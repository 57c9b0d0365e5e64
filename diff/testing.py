"""Synthetic run stores, written straight from numpy through the store DDL, for the judge's
tests, the A/A and power validation script and the judge benchmark (millions of pairs in
seconds, which the replay path would take minutes to produce)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow as pa

from shadowdiff.schemas import STORE_SCHEMA_VERSION, store_ddl
from shadowdiff.schemas.records import BASELINE, BASELINE_REPEAT, candidate_variant
from shadowdiff.schemas.rows import EVENT_TIME, requests_arrow

T0 = datetime(2026, 11, 25, tzinfo=UTC)


@dataclass
class Scenario:
    n: int = 50_000
    segments: int = 30  # values of the one segment field `seg`
    weights: list[float] | None = None  # traffic share per segment value (default: equal)
    noise_flip: float = 0.01  # chance the same model flips its label between two calls
    flip_extra: dict[int, float] = field(default_factory=dict)  # segment index -> extra flip rate
    repeat: bool = True  # store a second baseline call (noise floor)
    latency_factor: dict[int, float] = field(default_factory=dict)  # segment -> candidate latency ×
    latency_factor_all: float = 1.0
    # load that comes in stretches: each of `latency_blocks` consecutive stretches of time
    # multiplies each side's latencies by its own lognormal factor of this sigma (0 = none)
    latency_block_sigma: float = 0.0
    latency_blocks: int = 100
    score_noise: dict[int, float] = field(default_factory=dict)  # segment -> extra zero-mean noise (sd) on candidate scores
    baseline_latency: bool = True  # False: the baseline's latencies are missing (a live envelope without them)
    null_spike: dict[str, float] = field(default_factory=dict)  # feature -> null share in current
    null_spike_after: float = 0.0  # the nulls start this far into the event-time span (0..1)
    features: int = 3
    span_minutes: float = 120.0
    traffic_feature_version: str | None = None  # feature pipeline that built the stored inputs
    candidate_feature_version: str | None = None  # the one the candidate declares it was built for
    mismatch_segment: int | None = None  # only this segment's traffic comes from another pipeline
    quota_segment: int | None = None  # this segment's rows beyond its rate share were sampled by quota
    quota_share: float = 0.0  # share of that segment's rows whose sampled_reason is 'quota'
    # False: the calls were made in another order than event time (a replay reading partitions
    # side by side): event times are shuffled against the call clock, which load follows
    calls_in_event_order: bool = True
    seed: int = 0


def config_for(s: Scenario, run_id: str) -> dict[str, object]:
    feats = [f"f{i}" for i in range(s.features)]
    return {
        "run": {"id": run_id, "home": "x", "worker": "w0", "batch_size": 2000, "batch_timeout_ms": 500},
        "source": {"kind": "file", "path": "synthetic", "max_message_bytes": 1 << 20},
        "envelope": {},
        "features": {"numeric": feats, "categorical": []},
        "segments": {"fields": ["seg"], "allowed": {}, "hour_buckets": None, "combinations": []},
        "sampling": {"rate": 1.0, "quotas": {} if s.quota_segment is None else {f"seg=s{s.quota_segment:02d}": 1}},
        "baseline": {"kind": "model", "model": {"name": "base", "kind": "python", "target": "m:f"}, "repeat": s.repeat},
        "candidates": [{"name": "cand", "kind": "python", "target": "m:f", "feature_version": s.candidate_feature_version}],
        "output": {"kind": "label"},
    }


def write_run_meta(con: duckdb.DuckDBPyConnection, cfg: dict[str, object], run_id: str) -> None:
    """The run_meta rows a judge needs: the config it reads segments and features from."""
    meta: dict[str, object] = {
        "config": orjson.dumps(cfg).decode(),
        "run_id": run_id,
        "store_schema_version": STORE_SCHEMA_VERSION,
        "config_digest": "synthetic",
        "versions": {},
    }
    for key, value in meta.items():
        con.execute("INSERT OR REPLACE INTO run_meta VALUES (?, ?)", [key, orjson.dumps(value).decode()])


def _reasons(s: Scenario, seg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.full(len(seg), "rate", dtype=object)
    if s.quota_segment is not None:
        out[(seg == s.quota_segment) & (rng.random(len(seg)) < s.quota_share)] = "quota"
    return out


def _feature_versions(s: Scenario, seg: np.ndarray) -> list[str | None]:
    if s.traffic_feature_version is None:
        return [None] * len(seg)
    if s.mismatch_segment is None:
        return [s.traffic_feature_version] * len(seg)
    return [s.traffic_feature_version if g == s.mismatch_segment else s.candidate_feature_version for g in seg]


def write_synthetic_store(path: Path, s: Scenario, run_id: str = "sim") -> Path:
    rng = np.random.default_rng(s.seed)
    n = s.n
    w = np.asarray(s.weights if s.weights else [1.0] * s.segments, float)
    seg = rng.choice(len(w), size=n, p=w / w.sum())
    feats = [f"f{i}" for i in range(s.features)]
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    seg_t = 'STRUCT("seg" VARCHAR)'
    feat_t = "STRUCT(" + ", ".join(f'"{f}" DOUBLE' for f in feats) + ")"
    con.execute(store_ddl(seg_t, feat_t))
    offsets = np.arange(n, dtype=np.int64)
    times = np.datetime64(T0.replace(tzinfo=None), "us") + (np.sort(rng.uniform(0, s.span_minutes * 60e6, n))).astype(
        "timedelta64[us]"
    )
    called = times  # rows are in call order: load stretches are runs of consecutive rows
    if not s.calls_in_event_order:
        times = rng.permutation(times)
    seg_str = np.array([f"s{i:02d}" for i in range(len(w))])[seg]
    fvals = []
    for f in feats:
        v = rng.normal(0, 1, n)
        arr = pa.array(v, pa.float64())
        if f in s.null_spike:
            # times are sorted, so rows past this index are the later part of the span
            mask = (rng.random(n) < s.null_spike[f]) & (np.arange(n) >= int(s.null_spike_after * n))
            arr = pa.array(np.where(mask, np.nan, v), pa.float64(), from_pandas=True)
        fvals.append(arr)
    req = requests_arrow(
        source=pa.array(np.full(n, "sim"), pa.string()),
        part=pa.array(np.zeros(n, np.int32)),
        offset=pa.array(offsets),
        request_id=[f"r{i}" for i in range(n)],
        event_time=pa.array(times, EVENT_TIME),
        sampled_reason=_reasons(s, seg, rng),
        segments=pa.StructArray.from_arrays([pa.array(seg_str, pa.string())], names=["seg"]),
        features=pa.StructArray.from_arrays(fvals, names=feats),
        model_input=pa.array(np.full(n, "{}"), pa.string()),
        feature_version=_feature_versions(s, seg),
    )
    con.register("req", req)
    con.execute("INSERT INTO requests BY NAME SELECT * FROM req")
    base_label = rng.random(n) < 0.3
    score = rng.beta(2, 5, n)

    def flip(labels: np.ndarray, rate: np.ndarray) -> np.ndarray:
        return np.where(rng.random(n) < rate, ~labels, labels)

    extra = np.zeros(n)
    for i, r in s.flip_extra.items():
        extra[seg == i] = r
    # rows are in time order: a stretch is a run of consecutive rows
    b_load = c_load = np.ones(n)
    if s.latency_block_sigma > 0:  # drawn only when asked: other scenarios keep their random streams
        stretch = np.arange(n) * s.latency_blocks // n
        b_load = np.exp(rng.normal(0, s.latency_block_sigma, s.latency_blocks))[stretch]
        c_load = np.exp(rng.normal(0, s.latency_block_sigma, s.latency_blocks))[stretch]
    c_noise = np.zeros(n)
    for i, sd in s.score_noise.items():
        c_noise[seg == i] = sd
    b_lat = rng.lognormal(np.log(20), 0.4, n) * b_load
    lat_f = np.full(n, s.latency_factor_all)
    for i, factor in s.latency_factor.items():
        lat_f[seg == i] = factor
    variants = {
        BASELINE: (flip(base_label, np.full(n, s.noise_flip / 2)), score + rng.normal(0, 0.01, n), b_lat),
        candidate_variant("cand"): (
            flip(base_label, np.full(n, s.noise_flip / 2) + extra),
            score + rng.normal(0, 0.01, n) + rng.normal(0, 1, n) * c_noise,
            rng.lognormal(np.log(20), 0.4, n) * lat_f * c_load,
        ),
    }
    if s.repeat:
        variants[BASELINE_REPEAT] = (
            flip(base_label, np.full(n, s.noise_flip / 2)),
            score + rng.normal(0, 0.01, n),
            rng.lognormal(np.log(20), 0.4, n),
        )
    for variant, (labels, scores, lat) in variants.items():
        if variant != candidate_variant("cand") and not s.baseline_latency:
            lat = np.full(n, np.nan)
        out = pa.table(
            {
                "source": req["source"],
                "part": req["part"],
                "offset": req["offset"],
                "variant": pa.array(np.full(n, variant), pa.string()),
                "model_version": pa.array(np.full(n, "v"), pa.string()),
                "score": pa.array(scores),
                "label": pa.array(labels.astype(np.int8).astype(str), pa.string()),
                "output": pa.nulls(n, pa.string()),
                "latency_ms": pa.array(lat, pa.float64(), from_pandas=True),  # NaN: not measured
                "error_class": pa.nulls(n, pa.string()),
                "error_detail": pa.nulls(n, pa.string()),
                "attempts": pa.array(np.ones(n, np.int32)),
                "called_at": pa.array(called, pa.timestamp("us", tz="UTC")),
            }
        )
        con.register("out", out)
        con.execute("INSERT INTO outputs BY NAME SELECT * FROM out")
        con.unregister("out")
    con.execute("INSERT INTO checkpoints VALUES ('sim', 0, ?, ?, ?)", [n, n, n])
    write_run_meta(con, config_for(s, run_id), run_id)
    con.close()
    return path
