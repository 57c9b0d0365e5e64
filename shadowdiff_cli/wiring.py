"""Glue between packages that must not import each other: the replay's checkpoint hook runs the
judge on the writer's own connection (DuckDB's one-writer rule) and publishes the verdict as a
JSON file that the gate service and `shadowdiff gate` read without touching the store."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

from replay.store import WRITER_MEMORY
from schemas.policy import Policy

log = logging.getLogger(__name__)


def verdict_path(home: Path, run_id: str, candidate: str) -> Path:
    return home / run_id / f"verdict-{candidate}.json"


def publish(home: Path, run_id: str, doc: dict[str, Any]) -> Path:
    """Write atomically (rename), so a reader never sees half a verdict."""
    path = verdict_path(home, run_id, doc["candidate"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".verdict-", suffix=".json")
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str))
    os.replace(tmp, path)
    return path


def judge_and_publish(con: Any, home: Path, run_id: str, policy: Policy, final: bool = False) -> list[dict[str, Any]]:
    from diff.judge import judge_all

    docs = judge_all(con, policy)
    for doc in docs:
        doc["run_active"] = not final
        publish(home, run_id, doc)
    return docs


def judge_hook(home: Path, run_id: str, policy: Policy):  # type: ignore[no-untyped-def]
    def hook(writer: Any, stats: Any, final: bool) -> None:
        # the writer runs on a small buffer budget (flat memory); judging wants more, briefly
        writer.con.execute("SET memory_limit = '2GB'")
        writer.con.execute("SET threads = 2")
        try:
            judge_and_publish(writer.con, home, run_id, policy, final)
        except Exception:  # the verdict is advisory while writing; never kill the replay for it
            log.exception("judging run %s failed; the replay goes on", run_id)
        finally:
            writer.con.execute(f"SET memory_limit = '{WRITER_MEMORY}'")
            writer.con.execute("SET threads = 1")

    return hook
