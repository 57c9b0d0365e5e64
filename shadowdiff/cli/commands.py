"""Subcommands beyond `replay`: judge, gate, report, serve, evidence, demo."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from shadowdiff.schemas.errors import ConfigError, JudgeCacheBusy, StoreError
from shadowdiff.schemas.layout import RunLayout
from shadowdiff.schemas.verdict import Verdict, verdict_bytes


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home)


def policy_in_force(home: Path, run_id: str, path: str | None) -> tuple[Any, bool]:
    """The policy to judge by, and whether it is the run's own: the run's stored policy (the
    built-in one for a run that stored none) unless `path` names another."""
    from shadowdiff.cli.wiring import run_policy
    from shadowdiff.diff.judge import policy_digest
    from shadowdiff.schemas.layout import RunLayout
    from shadowdiff.schemas.policy import Policy, load_policy

    RunLayout.existing(home, run_id)  # RunNotFound first
    own = run_policy(home, run_id) or Policy()
    if not path:
        return own, True
    given = load_policy(Path(path))
    return given, policy_digest(given) == policy_digest(own)


def judge_stored(home: Path, run_id: str, policy: Any, label: str | None = None) -> list[Verdict]:
    """Judge from the stores (read-only) and publish the verdicts (labelled: kept, not served)."""
    from shadowdiff.cli.wiring import judge_and_publish
    from shadowdiff.diff.load import open_run

    con = open_run(home, run_id)
    try:
        return judge_and_publish(con, home, run_id, policy, final=True, label=label)
    finally:
        con.close()


def _shared(args: argparse.Namespace) -> Any:
    """The object store the workers push their exports to (`--shared s3://bucket/prefix`)."""
    if not args.shared:
        return None
    from pydantic import ValidationError

    from shadowdiff.replay.objectstore import SharedRun
    from shadowdiff.schemas.config import SharedSpec
    from shadowdiff.schemas.layout import RUN_ID

    if not RUN_ID.fullmatch(args.run):
        raise ConfigError("--run", [f"{args.run[:80]!r} is not a valid run id"])
    try:
        spec = SharedSpec(url=args.shared, endpoint_url=args.shared_endpoint)
    except ValidationError as err:
        raise ConfigError("--shared", [e["msg"] for e in err.errors()]) from err
    return SharedRun(spec, args.run)


def _wait_for_run(home: Path, run_id: str, every_s: float, shared: Any = None) -> None:
    """A judge started before its workers waits for the run's first store or export."""
    from shadowdiff.schemas.errors import RunNotFound
    from shadowdiff.schemas.layout import RUN_ID

    while True:
        if shared is not None and RUN_ID.fullmatch(run_id):
            shared.pull(RunLayout(home, run_id))
        try:
            RunLayout.existing(home, run_id)
            return
        except RunNotFound:
            if not RUN_ID.fullmatch(run_id):
                raise
        time.sleep(every_s)  # polling for the workers' first files: nothing to wake us sooner


def watch_run(
    home: Path, run_id: str, policy: Any, every_s: float, silent_after_s: float, shared: Any = None, nice: int = 10
) -> list[Verdict]:
    """The run's one judge: at every new export of any worker, judge the run from all of them and
    publish its verdicts; return the last ones once every worker has published its final export
    (or at SIGTERM / Ctrl-C). Workers run with `replay --no-judge` or judge nothing themselves
    once they see another worker in the run."""
    import signal
    import threading

    import duckdb

    from shadowdiff.cli.wiring import judge_and_publish
    from shadowdiff.diff.exports import open_cache

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # beside the workers on a shared machine, the judge takes the CPU they leave: a verdict a
    # few seconds later costs nothing, a slower replay costs the whole run
    os.nice(nice)
    layout = RunLayout(home, run_id)
    seen: tuple[Any, ...] | None = None
    docs: list[Verdict] = []
    last_look, failures = 0.0, 0
    while True:
        if shared is not None:
            try:
                shared.pull(layout)
            except OSError as err:  # judged from what is here; the silence shows in the verdict
                print(f"shadowdiff: {err}", file=sys.stderr, flush=True)
        folders = layout.export_folders()
        beats = [orjson.loads(b.read_bytes()) for b in layout.heartbeats()]
        done = bool(beats) and all(b.get("final") for b in beats)
        now = (len(folders), folders[-1].name if folders else None, tuple(sorted((b["worker"], b["final"]) for b in beats)))
        # a look reads the exports published since the last one into the judge's cache (and
        # judges the whole run): taken when something new was published, and at least every
        # few intervals so a worker's silence shows in the verdict
        if folders and (now != seen or not docs or time.monotonic() - last_look >= 4 * every_s):
            try:
                t0 = time.monotonic()
                con = open_cache(home, run_id)
                t1 = time.monotonic()
                try:
                    docs = judge_and_publish(con, home, run_id, policy, final=done, silent_after_s=silent_after_s)
                finally:
                    con.close()
                # what a look costs, for whoever sizes the judge's machine or --every
                cost = f"read new exports {t1 - t0:.1f} s, judged {time.monotonic() - t1:.1f} s"
            except (duckdb.Error, StoreError, OSError) as err:
                # a failed look (out of memory, a full disk, a damaged export) publishes
                # nothing: the served verdict ages into PENDING at the gate, and the next look
                # tries again; once every worker has finished, a few failures end the watch
                last_look, failures = time.monotonic(), failures + 1
                if (done and failures >= 3) or isinstance(err, JudgeCacheBusy):
                    raise  # a second watch of the run stops at once
                print(f"shadowdiff: run {run_id}: this look failed, trying again: {err}", file=sys.stderr, flush=True)
                if stop.wait(every_s):
                    return docs
                continue
            last_look, failures = time.monotonic(), 0
            for doc in docs:
                workers = len(doc.coverage.workers) if doc.coverage else 0
                silent = (doc.coverage.silent_workers if doc.coverage else None) or "none"
                print(f"{doc.candidate}: {doc.verdict.upper()} ({doc.data.pairs} pairs, {workers} workers, ", end="")
                print(f"silent: {silent}; {cost})", flush=True)
            seen = now
        if done and now == seen:
            return docs
        if stop.wait(every_s):
            return docs


def judge_served_run(
    cfg: Any, policy: Any, label: str | None, watch: bool, every_s: float, shared: Any = None, silent_after_s: float = 120.0
) -> list[Verdict]:
    """Judge a canary analysis or rollback verification from its workers' exports and publish;
    with `watch`, at every new export until every worker has published its final one."""
    import duckdb

    from shadowdiff.cli.wiring import judge_served_and_publish

    layout = RunLayout(cfg.run.home, cfg.run.id)
    seen: tuple[Any, ...] | None = None
    while True:
        if shared is not None:
            shared.pull(layout)
        folders = layout.served_export_folders()
        beats = [orjson.loads(b.read_bytes()) for b in sorted(layout.served_exports.glob("*/heartbeat.json"))]
        done = bool(beats) and all(b.get("final") for b in beats)
        now = (len(folders), tuple(sorted((b["worker"], b["final"]) for b in beats)))
        if now != seen:
            con = duckdb.connect()
            try:
                final = done or not watch
                doc = judge_served_and_publish(con, cfg, policy, True, final, label, silent_after_s)
            finally:
                con.close()
            seen = now
            if watch:
                print(
                    f"{doc.candidate}: {doc.verdict.upper()} ({doc.data.pairs} records of {cfg.compare.subject.version})",
                    flush=True,
                )
        if not watch or done:
            return [doc]
        time.sleep(every_s)  # polling the workers' export folders: nothing to wake us sooner


def summary(doc: Verdict) -> str:
    """One screen: verdict, reasons, segments, the deciding checks."""
    lines = [f"run {doc.run_id} candidate {doc.candidate}: {doc.verdict.upper()}"]
    d = doc.data
    lines.append(
        f"  pairs {d.pairs}  consumed {d.consumed}  dead letters {d.dead_letters}  "
        f"window {d.window.first_event} .. {d.window.last_event}"
    )
    lines += [f"  - {r}" for r in doc.reasons[:12]]
    if len(doc.reasons) > 12:
        lines.append(f"  ... {len(doc.reasons) - 12} more reasons")
    for w in doc.warnings[:5]:
        lines.append(f"  warning: {w}")
    st = doc.statistics
    lines.append(f"  statistics: {st.correction}, alpha {st.alpha}, {st.tests_in_family} tests")
    if doc.report_url:
        lines.append(f"  report: {doc.report_url}")
    return "\n".join(lines)


def cmd_judge(args: argparse.Namespace) -> int:
    """Judge under the run's own policy and publish; under another policy (`--policy`), keep
    the verdict beside the served one under a label, and serve it only with `--publish`."""
    from shadowdiff.schemas.gate import EXIT_CODES
    from shadowdiff.schemas.layout import valid_name

    home = _home(args)
    shared = _shared(args)
    if args.watch:
        _wait_for_run(home, args.run, args.every, shared)
    elif shared is not None:
        shared.pull(RunLayout(home, args.run))
    policy, own = policy_in_force(home, args.run, args.policy)
    label = None
    if not own:
        label = args.label or Path(args.policy).stem
        if not valid_name(label):
            raise ConfigError("--label", [f"{label!r}: use letters, digits, '.', '_' or '-'"])
    from shadowdiff.cli.wiring import served_config

    if args.watch and label is not None:
        raise ConfigError("--watch", ["the run's one judge judges under the run's own policy: drop --policy"])
    served_run = served_config(home, args.run)
    if served_run is not None:
        docs = judge_served_run(served_run, policy, label, args.watch, args.every, shared, parse_duration(args.silent_after))
    elif args.watch:
        docs = watch_run(home, args.run, policy, args.every, parse_duration(args.silent_after), shared, args.nice)
        return max(EXIT_CODES[d.verdict] for d in docs) if docs else EXIT_CODES["pending"]
    else:
        docs = judge_stored(home, args.run, policy, label=label)
    if label is not None and args.publish:
        from shadowdiff.cli.wiring import publish

        for doc in docs:
            doc.policy.published_over_the_run_policy = True
            publish(home, args.run, doc)
    docs = [d for d in docs if not args.candidate or d.candidate == args.candidate]
    for doc in docs:
        print(verdict_bytes(doc).decode() if args.json else summary(doc))
        if label is not None:
            served = "now served by the gate" if args.publish else "not served by the gate (add --publish to serve it)"
            print(f"  judged under policy {args.policy} (label {label}): {served}", file=sys.stderr)
    return max(EXIT_CODES[d.verdict] for d in docs) if docs else EXIT_CODES["pending"]


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not m:
        raise ConfigError("--timeout", [f"{text!r}: expected e.g. 90s, 30m, 1h, 7d"])
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def cmd_gate(args: argparse.Namespace) -> int:
    """The gate's answer as an exit code: the same answer the Argo and Flagger endpoints give
    (waivers, staleness, pending, unknown). Reads published verdicts only; never writes."""
    from shadowdiff.reports.verdicts import VerdictStore

    store = VerdictStore(_home(args), stale_after_s=parse_duration(args.stale_after), refresh_s=0.0)
    deadline = time.monotonic() + parse_duration(args.timeout)
    while True:
        answer, doc = store.answer(args.run, args.candidate)
        if answer.verdict != "pending" or not args.wait or time.monotonic() >= deadline:
            break
        time.sleep(min(args.interval, max(0.1, deadline - time.monotonic())))
    print(f"run {answer.run_id} candidate {answer.candidate}: {answer.verdict.upper()}")
    for reason in answer.reasons[:12]:
        print(f"  - {reason}")
    if doc is not None and answer.verdict == doc.verdict:
        print("\n".join(summary(doc).splitlines()[1:2]))
    if args.wait and answer.verdict == "pending":
        print("  timed out waiting for a decision", file=sys.stderr)
    return answer.exit_code


def cmd_report(args: argparse.Namespace) -> int:
    from shadowdiff.reports.html import write_report
    from shadowdiff.reports.verdicts import VerdictStore

    home = _home(args)
    if args.rejudge:
        policy, own = policy_in_force(home, args.run, args.policy)
        docs = judge_stored(home, args.run, policy, label=None if own else (args.label or Path(args.policy).stem))
    else:
        _, doc = VerdictStore(home, refresh_s=0.0).answer(args.run, args.candidate)
        if doc is None:
            raise ConfigError("report", [f"no verdict published for run {args.run} yet: add --rejudge"])
        docs = [doc]
    for doc in docs:
        out = Path(args.output) if args.output else home / args.run / f"report-{doc.candidate}.html"
        write_report(home, doc, out)
        print(out)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from shadowdiff.reports.service import GateSettings, create_app

    settings = GateSettings(
        home=_home(args),
        token=args.token,
        public_reads=not args.private_reads,
        base_url=args.base_url or f"http://{args.host}:{args.port}",
        stale_after_s=parse_duration(args.stale_after),
        max_waiver=timedelta(hours=parse_duration(args.max_waiver) / 3600),
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def cmd_evidence(args: argparse.Namespace) -> int:
    """`evidence --run R -o bundle.zip` writes a bundle; `evidence verify bundle.zip` checks one
    (exit 0 intact, 1 tampered)."""
    from shadowdiff.reports.evidence import verify_bundle, write_bundle

    if args.action == "verify":
        if not args.bundle:
            raise ConfigError("evidence verify", ["BUNDLE: the bundle to verify is required"])
        bad = verify_bundle(Path(args.bundle))
        for problem in bad:
            print(f"{args.bundle}: {problem}: does not match the manifest" if ":" not in problem else f"{args.bundle}: {problem}")
        if not bad:
            print(f"{args.bundle}: intact")
        return 1 if bad else 0
    missing = [f"--{k}: required to write a bundle" for k in ("run", "output") if not getattr(args, k)]
    if missing:
        raise ConfigError("evidence", missing)
    policy, _ = policy_in_force(_home(args), args.run, args.policy)
    path = write_bundle(_home(args), args.run, Path(args.output), policy, args.candidate)
    print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        import sklearn  # noqa: F401
    except ImportError as err:
        raise ConfigError("demo", ['the demo trains its models with scikit-learn: pip install "shadowdiff[demo]"']) from err
    from shadowdiff.cli.demo import run_demo

    return run_demo(
        Path(args.dir),
        kafka=args.kafka,
        slow_factor=args.slow_factor,
        requests=args.requests,
        rows_per_call=args.rows_per_call,
        scenarios=args.scenarios,
        rollout=not args.no_rollout,
    )


def cmd_produce(args: argparse.Namespace) -> int:
    """Send a recording to a topic (`--file`), or generated demo traffic at a steady rate."""
    if args.file:
        from shadowdiff.replay.produce import produce_recording

        stats = produce_recording(Path(args.file), args.bootstrap, args.topic, args.key_field, args.time_field, args.rate)
        print(orjson.dumps({"topic": args.topic, **stats.summary()}, option=orjson.OPT_INDENT_2).decode())
        return 0
    return _produce_generated(args)


def _produce_generated(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from kafka import KafkaProducer

    from shadowdiff.cli.demo_traffic import generate

    rate = args.rate or 200.0
    producer = KafkaProducer(bootstrap_servers=args.bootstrap.split(","), linger_ms=20, acks="all")
    sent, seed = 0, 0
    t0 = time.monotonic()
    try:
        while args.count <= 0 or sent < args.count:
            seed += 1
            for env in generate(1000, seed, t0=datetime.now(UTC), hours=1000 / max(rate, 1) / 3600):
                producer.send(args.topic, key=env["request_id"].encode(), value=orjson.dumps(env))
                sent += 1
                # pace to the requested rate; a live topic, not a bulk load
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
                if 0 < args.count <= sent:
                    break
    finally:
        producer.flush()
        producer.close()
    print(f"produced {sent} requests to {args.topic}")
    return 0


def register(sub: Any) -> None:
    def common(p: argparse.ArgumentParser, policy: bool = True) -> None:
        p.add_argument("--run", required=True, help="run id")
        p.add_argument("--home", default="shadowdiff-runs", help="folder holding the runs")
        p.add_argument("--candidate", help="candidate name (default: every / the first)")
        if policy:
            p.add_argument("--policy", help="judge under this policy instead of the run's own (TOML)")

    j = sub.add_parser("judge", help="judge stored pairs; exit 0 GO, 1 NO_GO, 2 PENDING, 3 error")
    common(j)
    j.add_argument("--json", action="store_true", help="print the verdict document")
    j.add_argument("--label", help="name of a verdict judged under another policy (default: the policy file's name)")
    j.add_argument("--publish", action="store_true", help="serve the verdict judged under --policy (recorded in it)")
    j.add_argument(
        "--watch", action="store_true", help="the run's one judge: judge every worker's exports as they come, until all finish"
    )
    j.add_argument("--every", type=float, default=5.0, help="--watch: seconds between looks for new exports")
    j.add_argument("--silent-after", default="120s", help="--watch: a worker without a heartbeat this long is named silent")
    j.add_argument("--nice", type=int, default=10, help="--watch: CPU priority below the workers' (0: the same)")
    j.add_argument("--shared", help="the workers' exports on an object store (s3://bucket/prefix); --home caches them")
    j.add_argument("--shared-endpoint", help="an S3-compatible server's URL (default: AWS, or AWS_ENDPOINT_URL)")
    j.set_defaults(func=cmd_judge)

    g = sub.add_parser("gate", help="CI gate: exit 0 GO, 1 NO_GO, 2 PENDING or timed out, 3 unknown run/candidate or error")
    common(g, policy=False)
    g.add_argument("--wait", action="store_true", help="poll until GO or NO_GO")
    g.add_argument("--timeout", default="30m", help="how long --wait waits (90s, 30m, 1h)")
    g.add_argument("--interval", type=float, default=5.0)
    g.add_argument("--stale-after", default="300s", help="a running replay's verdict older than this is PENDING")
    g.set_defaults(func=cmd_gate)

    r = sub.add_parser("report", help="write the self-contained HTML report")
    common(r)
    r.add_argument("-o", "--output")
    r.add_argument("--rejudge", action="store_true")
    r.add_argument("--label", help="with --rejudge --policy: the label of that verdict")
    r.set_defaults(func=cmd_report)

    s = sub.add_parser("serve", help="gate status service (Argo Rollouts, Flagger, /runs, /metrics)")
    s.add_argument("--home", default="shadowdiff-runs")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8787)
    s.add_argument("--token", help="bearer token for state-changing endpoints (waivers)")
    s.add_argument("--private-reads", action="store_true", help="reads need the token too")
    s.add_argument("--base-url", help="public URL for report links")
    s.add_argument("--stale-after", default="300s", help="a running replay's verdict older than this is PENDING")
    s.add_argument("--max-waiver", default="168h", help="the longest a waiver may last (e.g. 24h)")
    s.set_defaults(func=cmd_serve)

    e = sub.add_parser("evidence", help="write a checksummed evidence bundle (zip), or verify one")
    e.add_argument("action", nargs="?", choices=["write", "verify"], default="write")
    e.add_argument("bundle", nargs="?", help="verify: the bundle to check")
    e.add_argument("--run", help="run id")
    e.add_argument("--home", default="shadowdiff-runs", help="folder holding the runs")
    e.add_argument("--candidate", help="candidate name (default: the first)")
    e.add_argument("--policy", help="gate policy (TOML)")
    e.add_argument("-o", "--output")
    e.set_defaults(func=cmd_evidence)

    pr = sub.add_parser("produce", help="send a recording (or generated demo traffic) to a Kafka topic")
    pr.add_argument("--bootstrap", required=True)
    pr.add_argument("--topic", required=True)
    pr.add_argument("--file", help="a JSONL or Parquet recording of envelopes; without it, generated demo traffic")
    pr.add_argument("--key-field", default="request_id", help="dotted path of the message key in each envelope")
    pr.add_argument("--time-field", default="event_time", help="dotted path of the event time (the message timestamp)")
    pr.add_argument("--rate", type=float, default=0.0, help="messages per second (0: as fast as the broker takes them)")
    pr.add_argument("--count", type=int, default=0, help="generated traffic: stop after this many (0 = until stopped)")
    pr.set_defaults(func=cmd_produce)

    d = sub.add_parser("demo", help="the whole job on generated traffic: three scenarios, three verdicts")
    d.add_argument("--dir", default="shadowdiff-demo")
    d.add_argument("--kafka", help="HOST:PORT: run the traffic through a real Kafka topic")
    d.add_argument("--slow-factor", type=float, default=3.0, help="the slow candidate's server latency, x the baseline's")
    d.add_argument("--requests", type=int, default=20_000, help="requests in the generated traffic")
    d.add_argument("--rows-per-call", type=int, default=25, help="rows per model call (latency is measured per call)")
    d.add_argument("--no-rollout", action="store_true", help="the shadow runs only, without the canary and rollback steps")
    d.add_argument(
        "--scenarios",
        type=lambda v: [x for x in v.split(",") if x],
        default=None,
        help="comma-separated: run only these of night-encoder, slow, retrained (default: all three)",
    )
    d.set_defaults(func=cmd_demo)
