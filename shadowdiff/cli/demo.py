"""`shadowdiff demo`: the whole job on generated traffic, no Kafka or Docker needed.

Generates realistic traffic, trains a baseline and candidates (scikit-learn), serves each model
from a real HTTP server on loopback (MLflow /invocations format, with production-like latency),
records the traffic to a JSONL file, and runs the real pipeline three times: file source (or a
Kafka topic with --kafka) → sampling → baseline, repeat and candidate calls → DuckDB → diff,
drift and quality → verdict → HTML report. Then the rest of the rollout on the same servers: two
canaries of served traffic and a rollback's verification (shadowdiff/cli/demo_rollout.py)."""

from __future__ import annotations

import contextlib
import multiprocessing
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from shadowdiff.cli import demo_traffic as traffic
from shadowdiff.replay.testing import ModelServer, ServerBehaviour
from shadowdiff.schemas.errors import ConfigError

N_REQUESTS = 20_000
LATENCY_MS = 30.0  # a typical online model: sleep dominates the loopback overhead
# each call's service time varies (lognormal) as a steady online model's does. The demo's P95
# interval comes from ~10 stretches of ~60 calls: with a wider spread (0.35) the sound
# candidate's interval around a ratio of 1.0 reached past the policy's +30% in about a third of
# the demo's runs, and the demo would have to replay several times longer to show it within
LATENCY_SIGMA = 0.2


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    expect: str  # go | no_go
    expect_in_reasons: str  # a fragment the reasons must contain


SCENARIOS = [
    Scenario("night-encoder", "candidate v5 whose feature encoder changed for night traffic", "no_go", "daypart=night"),
    Scenario("slow", "retrained candidate on a slower server", "no_go", "latency_p95"),
    Scenario("retrained", "sound retrained candidate", "go", "checks passed"),
]

POLICY = """# Demo gate policy: the built-in checks (the runbook's triggers), changed where a
# churn-scoring model needs it. Each [[checks]] entry names a built-in check by id and changes
# only what it says; `enabled = false` removes one.
[policy]
min_samples = 300
alpha = 0.01
correction = "holm"
anytime_horizon = 3000    # the tests are tightest near the size of the demo's segments
latency_min_span_minutes = 0  # the demo's replay lasts seconds on one machine; a real run keeps
                              # the default 10 minutes, longer than a server's bursts of load
reference = { file = "reference.jsonl" }

[[checks]]
id = "label_flip"
threshold = 0.03          # flip rate may exceed the noise floor by at most 3 points

[[checks]]
id = "score_diff"
tolerance = 0.1           # a pair differs when the scores are > 0.1 apart ...
threshold = 0.05          # ... and at most 5% more pairs may differ than the noise floor

[[checks]]
id = "score_shift"
enabled = false           # a retrained model may move its mean score; flips and score_diff judge it

[[checks]]
id = "latency_p95"
threshold = 1.3           # P95 latency +30% ...
for_minutes = 5           # ... over a 5-minute window

# The truth arrives later (whether the customer churned): each model's errors on the same
# requests, compared pairwise. Warnings here: the demo's 48 hours resolve a few thousand
# requests a segment, fewer than a critical check needs to show a segment within 1 point
[[checks]]
id = "accuracy"
kind = "outcome_error"
severity = "warning"
threshold = 0.01          # the candidate's error rate at most 1 point above the baseline's

[[checks]]
id = "brier"
kind = "outcome_brier"
severity = "warning"
threshold = 0.005
"""


def _config(s: Scenario, home: Path, source: str, baseline_url: str, cand_url: str, rows_per_call: int = 25) -> str:
    return f"""# shadowdiff run config: scenario '{s.name}' ({s.title})
[run]
id = "demo-{s.name}"
home = "{home.as_posix()}"
batch_size = 16   # latency is judged over the times calls were sent: small batches give the
                  # demo's seconds of replay enough of them (a real run keeps 2000)

{source}

[envelope]   # where each field sits in the recorded messages (these are the defaults)
request_id = "request_id"
event_time = "event_time"
segments = "segments"
input = "input"
feature_version = "feature_version"

[features]
numeric = {traffic.NUMERIC!r}
categorical = {traffic.CATEGORICAL!r}

[segments]
fields = ["region", "device"]
hour_buckets = {{ name = "daypart" }}   # night = 00-05 UTC, morning, afternoon, evening

[sampling]
rate = 0.5
key = "request_id"
quotas = {{ "region=apac" = 400, "daypart=night" = 900 }}

[baseline]
kind = "model"
repeat = true          # a second baseline call per request measures the noise floor
model = {{ name = "baseline", kind = "mlflow", url = "{baseline_url}/invocations", model_version = "churn-v4", \
batch_size = {rows_per_call}, concurrency = 8 }}

[output]
kind = "score"
score_path = "score"
label_path = "label"

[outcomes]   # whether each customer churned, known hours after the request (outcomes.jsonl)
source = {{ kind = "file", path = "outcomes.jsonl" }}
request_id = "request_id"
label = "churned"
observed_at = "observed_at"

[[candidates]]
name = "{s.name}"
kind = "mlflow"
url = "{cand_url}/invocations"
model_version = "churn-{s.name}"
batch_size = {rows_per_call}        # rows per call: MLflow's server scores a batch in about the time of one row
concurrency = 8
timeout_s = 2.0
"""


def _outcome_lines(doc: Any) -> list[str]:
    """What the outcomes say: the accuracy of both models on the same requests, and where the
    candidate was shown worse."""
    if doc.outcomes is None:
        return []
    o = doc.outcomes
    lines = [f"outcomes: {o.with_outcome} of {o.pairs} pairs resolved (median delay {(o.delay.p50_s or 0) / 3600:.1f} h)"]
    for c in doc.checks:
        if c.kind == "outcome_error" and c.segment == "all":
            # the check's difference is in error rate; said here in accuracy (the other sign)
            ci = f", interval [{-c.ci[1] * 100:+.1f}, {-c.ci[0] * 100:+.1f}] points" if c.ci else ""
            lines.append(
                f"  accuracy: candidate {c.extra['candidate_accuracy']:.1%} vs baseline {c.extra['baseline_accuracy']:.1%} "
                f"on the same requests (difference {-(c.value or 0) * 100:+.1f} points{ci})"
            )
    worse = sorted({c.segment for c in doc.checks if c.kind.startswith("outcome_") and c.status in ("fail", "warn")})
    lines.append(f"  shown worse on outcomes in: {', '.join(worse)}" if worse else "  not shown worse on outcomes anywhere")
    return lines


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("wb") as fh:
        for r in rows:
            fh.write(orjson.dumps(r) + b"\n")


def _produce(bootstrap: str, topic: str, rows: list[dict[str, Any]]) -> None:
    from datetime import datetime

    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 3, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, batch_size=256 * 1024, acks="all")
    for r in rows:
        ts = int(datetime.fromisoformat(r["event_time"]).timestamp() * 1000)
        producer.send(topic, key=r["request_id"].encode(), value=orjson.dumps(r), timestamp_ms=ts)
    producer.flush()
    producer.close()


def _serve_models(baseline: Any, retrained: Any, conn: Any, slow_factor: float = 3.0) -> None:
    """Child process: the four model servers on loopback until the parent says stop."""
    servers = {
        "baseline": ModelServer(
            traffic.scorer(baseline, seed=11), ServerBehaviour(latency_ms=LATENCY_MS, latency_sigma=LATENCY_SIGMA)
        ),
        "night-encoder": ModelServer(
            traffic.scorer(baseline, night_bug=True, seed=12), ServerBehaviour(latency_ms=LATENCY_MS, latency_sigma=LATENCY_SIGMA)
        ),
        "slow": ModelServer(
            traffic.scorer(retrained, seed=13), ServerBehaviour(latency_ms=LATENCY_MS * slow_factor, latency_sigma=LATENCY_SIGMA)
        ),
        "retrained": ModelServer(
            traffic.scorer(retrained, seed=14), ServerBehaviour(latency_ms=LATENCY_MS, latency_sigma=LATENCY_SIGMA)
        ),
    }
    conn.send({k: s.start() for k, s in servers.items()})
    with contextlib.suppress(EOFError):
        conn.recv()
    for s in servers.values():
        s.stop()


def run_demo(
    workdir: Path,
    kafka: str | None = None,
    slow_factor: float = 3.0,
    requests: int = N_REQUESTS,
    rows_per_call: int = 25,
    scenarios: list[str] | None = None,
    rollout: bool = True,
) -> int:
    """Run the three scenarios; print each verdict, its reasons and the report path. Exit 0
    when every verdict is the one the scenario should get. `slow_factor`: the slow candidate's
    server latency as a multiple of the baseline's. Latency is measured per call, so
    `rows_per_call` and `requests` set how many latency samples the run has. `scenarios`: the
    names of those to run (all three by default). `rollout`: then the canary steps and the
    rollback verification on the same servers (shadowdiff/cli/demo_rollout.py)."""
    from shadowdiff.cli.wiring import judge_and_publish, start_run
    from shadowdiff.diff.load import open_run
    from shadowdiff.replay.job import run_replay
    from shadowdiff.replay.outcomes import run_outcomes
    from shadowdiff.reports.html import write_report
    from shadowdiff.schemas.config import load_config
    from shadowdiff.schemas.policy import load_policy

    names = ", ".join(s.name for s in SCENARIOS)
    problems = [
        f"--scenarios: no scenario {name!r} (there are {names})"
        for name in sorted(set(scenarios or []) - {s.name for s in SCENARIOS})
    ]
    if scenarios == []:
        problems.append(f"--scenarios: none given (there are {names})")
    if problems:
        raise ConfigError("demo", problems)
    chosen = [s for s in SCENARIOS if scenarios is None or s.name in scenarios]
    t0 = time.monotonic()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "runs"
    print(f"shadowdiff demo in {workdir}")
    rows = traffic.generate(requests, seed=7)
    _write_jsonl(workdir / "traffic.jsonl", rows)
    _write_jsonl(workdir / "reference.jsonl", traffic.generate(4000, seed=3))
    _write_jsonl(workdir / "outcomes.jsonl", traffic.outcomes(rows, seed=9))
    (workdir / "policy.toml").write_text(POLICY, encoding="utf-8")
    print(f"  generated {len(rows)} requests over 48 h (traffic.jsonl) and a reference sample; training models ...")
    baseline, retrained = traffic.train(seed=1), traffic.train(seed=2)
    if kafka:
        topic = f"shadowdiff-demo-{uuid.uuid4().hex[:8]}"
        _produce(kafka, topic, rows)
        source = (
            f'[source]\nkind = "kafka-window"\nbootstrap = "{kafka}"\ntopic = "{topic}"\n'
            f'start = "{traffic.T0.isoformat()}"\nend = "2026-11-25T00:00:00+00:00"\nprogress = false'
        )
        print(f"  produced the traffic to Kafka topic {topic} on {kafka}")
    else:
        source = '[source]\nkind = "file"\npath = "traffic.jsonl"'
    # the model servers live in their own process, as they would in production: sharing the
    # replay's interpreter would make measured latency mostly the replay's own queueing
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_models, args=(baseline, retrained, child, slow_factor), daemon=True)
    proc.start()
    urls: dict[str, str] = parent.recv()
    policy = load_policy(workdir / "policy.toml")
    failures = 0
    try:
        for s in chosen:
            cfg_path = workdir / f"run-{s.name}.toml"
            cfg_path.write_text(_config(s, home, source, urls["baseline"], urls[s.name], rows_per_call), encoding="utf-8")
            cfg = load_config(cfg_path)
            cfg, _ = start_run(cfg, policy)  # the run owns its policy: `shadowdiff judge` and `gate` use it later
            t1 = time.monotonic()
            stats = run_replay(cfg)
            run_outcomes(cfg)  # the truth known since: joined to the pairs when judging
            t2 = time.monotonic()
            con = open_run(home, cfg.run.id)
            try:
                doc = judge_and_publish(con, home, cfg.run.id, policy, final=True)[0]
                t3 = time.monotonic()
                report = write_report(home, doc, home / cfg.run.id / f"report-{s.name}.html", con=con)
            finally:
                con.close()
            t4 = time.monotonic()
            ok = doc.verdict == s.expect and any(s.expect_in_reasons in r for r in doc.reasons)
            failures += not ok
            title = f"{s.title} ({slow_factor:g}x its latency)" if s.name == "slow" else s.title
            print(f"\n[{s.name}] {title}")
            print(
                f"  replayed {stats.consumed} requests, sampled {stats.sampled}, {doc.data.pairs} pairs "
                f"(replay {t2 - t1:.1f} s, judge {t3 - t2:.1f} s, report {t4 - t3:.1f} s)"
            )
            print(f"  verdict: {doc.verdict.upper()}{'' if ok else f'  (expected {s.expect.upper()})'}")
            for r in doc.reasons[:6]:
                print(f"    - {r}")
            if len(doc.reasons) > 6:
                print(f"    ... {len(doc.reasons) - 6} more")
            for line in _outcome_lines(doc):
                print(f"  {line}")
            print(f"  report: {report}")
        if rollout:
            from shadowdiff.cli.demo_rollout import run_rollout

            failures += run_rollout(workdir, home, rows, urls)
    finally:
        parent.send("stop")
        proc.join(10)
    print(f"\ndone in {time.monotonic() - t0:.1f} s; try: shadowdiff gate --home {home} --run demo-slow")
    return 1 if failures else 0
