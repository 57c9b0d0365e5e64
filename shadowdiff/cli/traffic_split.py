"""A traffic split in front of real model servers, as a mesh or ingress does during a canary
(Argo Rollouts `setWeight`, Flagger `stepWeight`): each request goes to the stable or the canary
server by a hash of its id, the answer is timed, and each serving side writes its inference-log
record (replay/served_log.py) with its own version. For the demo and the tests: production has
its own router and servers, which log the same records."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from shadowdiff.replay.served_log import InferenceLog


@dataclass(frozen=True)
class Backend:
    url: str  # the model server's MLflow /invocations endpoint
    log: InferenceLog


def canary_share(request_id: str) -> float:
    """Where a request falls in [0, 1): requests below the canary's weight go to it (stable
    across retries, as a mesh's consistent hashing is)."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big") / 2**64


async def _call(
    session: aiohttp.ClientSession, backend: Backend, row: dict[str, Any], segments: dict[str, Any], at: datetime | None
) -> None:
    t0 = time.perf_counter()
    status, output = "ok", None
    try:
        async with session.post(backend.url, json={"dataframe_records": [row["input"]]}) as resp:
            body = await resp.json()
            if resp.status != 200:
                status = f"http_{resp.status}"
            else:
                output = body["predictions"][0]
    except TimeoutError:
        status = "timeout"
    except (aiohttp.ClientError, ValueError, KeyError, IndexError):
        status = "error"
    backend.log.answered(row["request_id"], row["input"], output, (time.perf_counter() - t0) * 1000, status, segments, at)


async def split_traffic(
    rows: list[dict[str, Any]],
    stable: Backend,
    canary: Backend,
    weight: float,
    segments_of: Callable[[dict[str, Any]], dict[str, Any]],
    concurrency: int = 24,
    keep_event_time: bool = True,
) -> dict[str, int]:
    """Send `rows` (request envelopes) through the split; each answer is logged by the side that
    gave it, at the envelope's event time (a replayed recording) or now. Returns the requests
    each side answered."""
    sent = {"stable": 0, "canary": 0}
    # calls in flight per side, as each version's pods take their share: one gate for both would
    # queue the larger share on one server and time the queue, not the model
    gates = {"stable": asyncio.Semaphore(concurrency), "canary": asyncio.Semaphore(concurrency)}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(row: dict[str, Any]) -> None:
            side = "canary" if canary_share(row["request_id"]) < weight else "stable"
            sent[side] += 1
            at = datetime.fromisoformat(row["event_time"].replace("Z", "+00:00")) if keep_event_time else None
            async with gates[side]:
                await _call(session, canary if side == "canary" else stable, row, segments_of(row), at)

        await asyncio.gather(*(one(r) for r in rows))
    return sent
