"""`shadowdiff` command line. Thin: parse, build settings once, call one function, and let the
exit code be the answer (gate: 0 GO, 1 NO_GO, 2 PENDING or timed out, 3 unknown run or candidate, or any error,
64 a usage error)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from shadowdiff.schemas.errors import ShadowdiffError

log = logging.getLogger("shadowdiff")

EXIT_ERROR = 3  # a bad config or policy (nothing was consumed), an unknown run or candidate, any error
# argparse exits 2 on a typo, the code of PENDING: a CI job polling the gate would wait on a
# command that can never answer. EX_USAGE (sysexits.h) is no verdict's code
EXIT_USAGE = 64


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.warning("signal %s: finishing the batch in hand, committing, exiting", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def cmd_replay(args: argparse.Namespace) -> int:
    from shadowdiff.cli.wiring import judge_hook, start_run
    from shadowdiff.replay.job import run_replay, validate_targets
    from shadowdiff.replay.preflight import preflight
    from shadowdiff.schemas.config import load_config
    from shadowdiff.schemas.policy import load_policy

    cfg = load_config(Path(args.config))
    given = load_policy(Path(args.policy)) if args.policy else None
    # a bad config, or a source or model that cannot be reached, leaves nothing behind
    validate_targets(cfg)
    preflight(cfg)
    cfg, policy = start_run(cfg, given)
    stop = _stop_on_signals()
    hook = judge_hook(cfg.run.home, cfg.run.id, policy, cfg.run.worker) if not args.no_judge else None
    stats = run_replay(cfg, stop, on_checkpoint=hook, checkpoint_every_s=args.judge_every, checked=True)
    print(_json(stats.summary()))
    return 0


def cmd_outcomes(args: argparse.Namespace) -> int:
    from shadowdiff.replay.outcomes import outcome_spec, run_outcomes
    from shadowdiff.replay.preflight import outcome_preflight
    from shadowdiff.schemas.config import load_config

    cfg = load_config(Path(args.config))
    outcome_preflight(outcome_spec(cfg))  # a bad [outcomes] section, or a source that cannot be reached, reads nothing
    stats = run_outcomes(cfg, _stop_on_signals(), checkpoint_every_s=args.export_every)
    print(_json(stats.summary()))
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    """A canary analysis or a rollback verification over the serving instances' inference logs.
    With `--until-decided` the worker stops once its published verdict is GO or NO_GO and exits
    with the gate's code (an Argo Rollouts job metric, a pipeline step)."""
    from shadowdiff.cli.commands import parse_duration
    from shadowdiff.cli.wiring import served_judge_hook, start_served_run, step_config
    from shadowdiff.replay.preflight import served_preflight
    from shadowdiff.replay.served import run_served
    from shadowdiff.schemas.config import load_served_config
    from shadowdiff.schemas.gate import EXIT_CODES
    from shadowdiff.schemas.policy import load_policy

    cfg = step_config(
        load_served_config(Path(args.config)),
        run_id=args.run_id,
        since=args.since,
        lkg_offset_s=parse_duration(args.lkg_offset) if args.lkg_offset else None,
        lkg_length_s=parse_duration(args.lkg_length) if args.lkg_length else None,
    )
    given = load_policy(Path(args.policy)) if args.policy else None
    served_preflight(cfg)  # a source that cannot be reached, or a format that cannot be read, leaves nothing behind
    policy = start_served_run(cfg, given)
    stop = _stop_on_signals()
    hook = None if args.no_judge else served_judge_hook(cfg, policy, stop if args.until_decided else None)
    stats = run_served(cfg, stop, checkpoint_every_s=args.judge_every, after_checkpoint=hook)
    print(_json(stats.summary()))
    if not args.until_decided:
        return 0
    from shadowdiff.cli.wiring import published

    doc = published(cfg.run.home, cfg.run.id, cfg.compare.answer_name())
    verdict = doc.verdict if doc is not None else "pending"
    print(f"run {cfg.run.id} {cfg.compare.answer_name()}: {verdict.upper()}")
    for reason in (doc.reasons if doc is not None else [])[:8]:
        print(f"  - {reason}")
    return EXIT_CODES[verdict]


def _json(obj: object) -> str:
    import orjson

    return orjson.dumps(obj, option=orjson.OPT_INDENT_2, default=str).decode()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shadowdiff", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("replay", help="replay a Kafka topic/window or a recording into a run store")
    r.add_argument("--config", required=True, help="run config (TOML)")
    r.add_argument("--policy", help="gate policy (TOML); default policy if omitted")
    r.add_argument("--judge-every", type=float, default=15.0, help="seconds between verdict updates")
    r.add_argument("--no-judge", action="store_true", help="store only; judge later")
    r.set_defaults(func=cmd_replay)

    o = sub.add_parser("outcomes", help="read the run's outcome records ([outcomes] of the run config) for the judge")
    o.add_argument("--config", required=True, help="run config (TOML) with an [outcomes] section")
    o.add_argument("--export-every", type=float, default=15.0, help="seconds between exports the judge reads")
    o.set_defaults(func=cmd_outcomes)

    c = sub.add_parser(
        "canary", help="compare served traffic: a canary with the stable, or the service after a rollback with last-known-good"
    )
    c.add_argument("--config", required=True, help="served-traffic run config (TOML: [run], [served], [compare])")
    c.add_argument("--policy", help="gate policy (TOML); default policy if omitted")
    c.add_argument("--judge-every", type=float, default=15.0, help="seconds between verdict updates")
    c.add_argument("--no-judge", action="store_true", help="store only; judge with `shadowdiff judge --run ... --watch`")
    c.add_argument("--run-id", help="the run's id instead of the config's (one run per rollout step)")
    c.add_argument("--since", help="the subject's traffic from this time (RFC 3339, or 'now'); a canary's stable side too")
    c.add_argument("--lkg-offset", help="rollback: the last-known-good window starts this long before --since (e.g. 7d)")
    c.add_argument("--lkg-length", help="rollback: the last-known-good window's length (e.g. 1h)")
    c.add_argument("--until-decided", action="store_true", help="stop at the first GO or NO_GO and exit with the gate's code")
    c.set_defaults(func=cmd_canary)

    from shadowdiff.cli import commands

    commands.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help exits 0; any usage error must not read as a verdict
        return 0 if exc.code in (0, None) else EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # kafka-python narrates every connection at INFO; keep the run's own messages readable
        logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except ShadowdiffError as err:
        # 3, never 1 or 2: a CI job reading the gate's exit code must not take an error for a verdict
        print(f"shadowdiff: {err}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
