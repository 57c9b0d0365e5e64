"""Subcommands beyond `replay`: judge, gate, report, serve, evidence, demo."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from schemas.errors import ConfigError, StoreError

EXIT = {"go": 0, "no_go": 1, "pending": 2}


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home)


def _policy(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from schemas.policy import Policy, load_policy

    return load_policy(Path(args.policy)) if args.policy else Policy()


def judge_stored(home: Path, run_id: str, policy: Any) -> list[dict[str, Any]]:
    """Judge from the stores (read-only) and publish the verdicts."""
    from diff.load import open_run
    from shadowdiff_cli.wiring import judge_and_publish

    con = open_run(home, run_id)
    try:
        return judge_and_publish(con, home, run_id, policy, final=True)
    finally:
        con.close()


def summary(doc: dict[str, Any]) -> str:
    """One screen: verdict, reasons, segments, the deciding checks."""
    lines = [f"run {doc['run_id']} candidate {doc['candidate']}: {doc['verdict'].upper()}"]
    d = doc["data"]
    lines.append(
        f"  pairs {d['pairs']}  consumed {d['consumed']}  dead letters {d['dead_letters']}  "
        f"window {d['window']['first_event']} .. {d['window']['last_event']}"
    )
    lines += [f"  - {r}" for r in doc["reasons"][:12]]
    if len(doc["reasons"]) > 12:
        lines.append(f"  ... {len(doc['reasons']) - 12} more reasons")
    for w in doc.get("warnings", [])[:5]:
        lines.append(f"  warning: {w}")
    lines.append(
        f"  statistics: {doc['statistics']['correction']}, alpha {doc['statistics']['alpha']}, "
        f"{doc['statistics']['tests_in_family']} tests"
    )
    if doc.get("report_url"):
        lines.append(f"  report: {doc['report_url']}")
    return "\n".join(lines)


def cmd_judge(args: argparse.Namespace) -> int:
    docs = judge_stored(_home(args), args.run, _policy(args))
    docs = [d for d in docs if not args.candidate or d["candidate"] == args.candidate]
    for doc in docs:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str).decode() if args.json else summary(doc))
    return max(EXIT[d["verdict"]] for d in docs) if docs else 2


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not m:
        raise ConfigError("--timeout", [f"{text!r}: expected e.g. 90s, 30m, 1h"])
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def read_verdict(home: Path, run_id: str, candidate: str | None, policy: Any) -> dict[str, Any]:
    """The published verdict; judged from the stores when none is published and no writer runs."""
    from diff.load import store_files
    from shadowdiff_cli.wiring import verdict_path

    store_files(home, run_id)  # RunNotFound for an unknown run
    files = sorted((home / run_id).glob("verdict-*.json"))
    if candidate:
        files = [verdict_path(home, run_id, candidate)]
    if not files or not files[0].exists():
        try:
            docs = judge_stored(home, run_id, policy)
        except StoreError:
            return {"verdict": "pending", "reasons": ["no verdict published yet and the store is being written"]}
        docs = [d for d in docs if not candidate or d["candidate"] == candidate]
        return docs[0]
    return dict(orjson.loads(files[0].read_bytes()))


def cmd_gate(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + parse_duration(args.timeout)
    policy = _policy(args)
    while True:
        doc = read_verdict(_home(args), args.run, args.candidate, policy)
        if doc["verdict"] != "pending" or not args.wait or time.monotonic() >= deadline:
            break
        time.sleep(min(args.interval, max(0.1, deadline - time.monotonic())))
    if "run_id" in doc:
        print(summary(doc))
    else:
        print(f"run {args.run}: PENDING\n  - " + "\n  - ".join(doc["reasons"]))
    if args.wait and doc["verdict"] == "pending":
        print("  timed out waiting for a decision", file=sys.stderr)
    return EXIT[doc["verdict"]]


def cmd_report(args: argparse.Namespace) -> int:
    from reports.html import write_report

    home = _home(args)
    docs = (
        judge_stored(home, args.run, _policy(args))
        if args.rejudge
        else [read_verdict(home, args.run, args.candidate, _policy(args))]
    )
    for doc in docs:
        out = Path(args.output) if args.output else home / args.run / f"report-{doc['candidate']}.html"
        write_report(home, doc, out)
        print(out)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from reports.service import GateSettings, create_app

    settings = GateSettings(
        home=_home(args),
        token=args.token,
        public_reads=not args.private_reads,
        base_url=args.base_url or f"http://{args.host}:{args.port}",
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def cmd_evidence(args: argparse.Namespace) -> int:
    """`evidence --run R -o bundle.zip` writes a bundle; `evidence verify bundle.zip` checks one
    (exit 0 intact, 1 tampered)."""
    from reports.evidence import verify_bundle, write_bundle

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
    path = write_bundle(_home(args), args.run, Path(args.output), _policy(args), args.candidate)
    print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        import sklearn  # noqa: F401
    except ImportError as err:
        raise ConfigError("demo", ['the demo trains its models with scikit-learn: pip install "shadowdiff[demo]"']) from err
    from shadowdiff_cli.demo import run_demo

    return run_demo(Path(args.dir), kafka=args.kafka)


def cmd_produce(args: argparse.Namespace) -> int:
    """Send a recording to a topic (`--file`), or generated demo traffic at a steady rate."""
    if args.file:
        from replay.produce import produce_recording

        stats = produce_recording(Path(args.file), args.bootstrap, args.topic, args.key_field, args.time_field, args.rate)
        print(orjson.dumps({"topic": args.topic, **stats.summary()}, option=orjson.OPT_INDENT_2).decode())
        return 0
    return _produce_generated(args)


def _produce_generated(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from kafka import KafkaProducer

    from shadowdiff_cli.demo_traffic import generate

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
            p.add_argument("--policy", help="gate policy (TOML)")

    j = sub.add_parser("judge", help="judge stored pairs; exit 0 GO, 1 NO_GO, 2 PENDING")
    common(j)
    j.add_argument("--json", action="store_true", help="print the verdict document")
    j.set_defaults(func=cmd_judge)

    g = sub.add_parser("gate", help="CI gate: exit 0 GO, 1 NO_GO, 2 PENDING or timed out")
    common(g)
    g.add_argument("--wait", action="store_true", help="poll until GO or NO_GO")
    g.add_argument("--timeout", default="30m", help="how long --wait waits (90s, 30m, 1h)")
    g.add_argument("--interval", type=float, default=5.0)
    g.set_defaults(func=cmd_gate)

    r = sub.add_parser("report", help="write the self-contained HTML report")
    common(r)
    r.add_argument("-o", "--output")
    r.add_argument("--rejudge", action="store_true")
    r.set_defaults(func=cmd_report)

    s = sub.add_parser("serve", help="gate status service (Argo Rollouts, Flagger, /runs, /metrics)")
    s.add_argument("--home", default="shadowdiff-runs")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8787)
    s.add_argument("--token", help="bearer token for state-changing endpoints (waivers)")
    s.add_argument("--private-reads", action="store_true", help="reads need the token too")
    s.add_argument("--base-url", help="public URL for report links")
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
    d.set_defaults(func=cmd_demo)
