"""The overload drill: a candidate server with four workers (calls beyond them queue, so past
the knee each further call in flight adds a whole service time), shadowed with up to 32 calls
in flight. With the adaptive limit (the default) the replay settles near the knee, no call
times out, and the verdict does not blame the candidate; with 32 fixed calls in flight the same
server times out, and those errors of our own making would be counted against it."""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from pathlib import Path

import duckdb
import orjson
from helpers import envelope, jsonl, judge_run, write_config
from models_for_tests import logistic

from shadowdiff.replay.job import run_replay
from shadowdiff.replay.models.resilience import AdaptiveLimit, RateCap
from shadowdiff.replay.testing import ModelServer, ServerBehaviour
from shadowdiff.schemas.config import load_config
from shadowdiff.schemas.policy import Policy


def run(tmp: Path, name: str, url: str, adaptive: bool, recording: Path, route: str = "/predict") -> Path:
    cfg = write_config(
        tmp / f"{name}.toml",
        f"""
[run]
id = "{name}"
home = "{tmp / "runs"}"
batch_size = 500
[source]
kind = "file"
path = "{recording}"
[output]
score_path = "score"
[[candidates]]
name = "v2"
kind = "http"
url = "{url}{route}"
concurrency = 32
timeout_s = 0.3
retries = 0
adaptive_concurrency = {"true" if adaptive else "false"}
""",
    )
    run_replay(load_config(cfg))
    return tmp / "runs" / name / "store-w0.duckdb"


def errors(store: Path) -> dict[str, int]:
    with duckdb.connect(str(store), read_only=True) as con:
        return dict(
            con.execute(
                "SELECT coalesce(error_class, 'ok'), count(*) FROM outputs WHERE variant = 'candidate:v2' GROUP BY 1"
            ).fetchall()
        )


def test_the_shadow_settles_near_the_servers_knee_instead_of_timing_it_out(tmp_path):
    rng = random.Random(5)
    recording = jsonl(tmp_path / "t.jsonl", [orjson.loads(orjson.dumps(envelope(i, rng))) for i in range(3000)])
    # four workers of 40 ms: 32 calls in flight wait ~320 ms, past the 300 ms timeout
    with ModelServer(logistic, ServerBehaviour(latency_ms=40, latency_sigma=0.1, slots=4)) as url:
        adaptive = errors(run(tmp_path, "adaptive", url, True, recording))
        fixed = errors(run(tmp_path, "fixed", url, False, recording))
    assert adaptive == {"ok": 3000}  # no error of our own making
    # the same server pushed past its knee: timeouts, then an open breaker, all counted
    # against the candidate
    assert fixed.get("timeout", 0) + fixed.get("circuit_open", 0) > 1000
    doc = judge_run(tmp_path / "runs", "adaptive", Policy(min_samples=200))
    err = next(c for c in doc["checks"] if c["check"] == "error_rate" and c["segment"] == "all")
    assert err["status"] == "pass"
    assert err["value"] == 0
    # the verdict says what load the latencies were measured at
    load = doc["load"]["candidate"]
    assert (load["rows_per_call"], load["calls_in_flight"], load["rows_sent"]) == (1, "adaptive, at most 32", 3000)
    assert load["rows_per_s_per_worker"] > 0
    assert doc["load"]["baseline"]["called"] is False


def verdict_checks(tmp: Path, name: str) -> dict[str, dict]:
    doc = judge_run(tmp / "runs", name, Policy(min_samples=200))
    return {c["check"]: c for c in doc["checks"] if c["segment"] == "all"}


def test_calls_refused_as_too_many_are_the_shadows_load_not_the_candidates_errors(tmp_path):
    rng = random.Random(6)
    recording = jsonl(tmp_path / "t.jsonl", [orjson.loads(orjson.dumps(envelope(i, rng))) for i in range(3000)])
    # admission control: four workers, four calls queued, any further call refused with 429
    server = ServerBehaviour(latency_ms=40, latency_sigma=0.1, slots=4, max_queue=4)
    with ModelServer(logistic, server) as url:
        fixed = errors(run(tmp_path, "fixed", url, False, recording))
        refused_fixed = server.refused
        adaptive = errors(run(tmp_path, "adaptive", url, True, recording))
    # 32 calls in flight against 8 places: most are refused, and stored as the shadow's load
    assert fixed.get("throttled", 0) > 1000
    assert set(fixed) <= {"ok", "throttled"}  # no breaker opened on them, nothing else failed
    assert refused_fixed >= fixed["throttled"]  # one row a call (plain http), no retry
    checks = verdict_checks(tmp_path, "fixed")
    # not blamed: no error counted (with fewer calls made, it may not yet be shown within)
    assert checks["error_rate"]["status"] in ("pass", "undecided")
    assert checks["error_rate"]["value"] == 0
    assert checks["error_rate"]["n"] == 3000 - fixed["throttled"]
    assert checks["error_rate"]["extra"]["throttled"] == fixed["throttled"]
    assert checks["shadow_load"]["status"] == "warn"
    assert checks["shadow_load"]["severity"] == "warning"
    assert checks["shadow_load"]["extra"]["throttled"] == fixed["throttled"]
    # the adaptive limit backs off at a refusal: nearly every call is answered. Each probe past
    # the server's eight places costs a refusal or two before the limit drops again, and a
    # loaded machine widens the server's latency (so the slow signal fires later): 25-162 of
    # 3,000 were seen, the most on a machine running two suites at once. A limit that did not
    # back off would lose as many as the fixed calls in flight (more than 1,000)
    assert adaptive.get("throttled", 0) < min(0.1 * 3000, fixed["throttled"] / 5), (adaptive, fixed)
    assert verdict_checks(tmp_path, "adaptive")["error_rate"]["status"] == "pass"


def test_a_candidate_that_refused_every_call_is_not_assessable_not_a_pass(tmp_path):
    # a gateway that admits none of the shadow's calls: no error was counted, but nothing shows
    # how often the candidate fails either, so error_rate cannot pass (it did, with n = 0)
    rng = random.Random(7)
    recording = jsonl(tmp_path / "t.jsonl", [orjson.loads(orjson.dumps(envelope(i, rng))) for i in range(1000)])
    with ModelServer(logistic) as url:
        refused = errors(run(tmp_path, "refused", url, False, recording, route="/busy"))
    assert refused == {"throttled": 1000}
    doc = judge_run(tmp_path / "runs", "refused", Policy(min_samples=200))
    assert doc["verdict"] == "pending", doc["reasons"]
    err = [c for c in doc["checks"] if c["check"] == "error_rate"]
    assert [(c["segment"], c["status"]) for c in err] == [("all", "n/a")]
    assert any(r.startswith("error_rate not assessable in all: no candidate calls answered or failed") for r in doc["reasons"])
    load = next(c for c in doc["checks"] if c["check"] == "shadow_load" and c["segment"] == "all")
    assert load["status"] == "warn"


def test_a_rate_cap_spaces_the_calls():
    import asyncio
    import time

    async def calls() -> float:
        cap = RateCap(200.0)
        t0 = time.monotonic()
        await asyncio.gather(*(cap.wait() for _ in range(41)))
        return time.monotonic() - t0

    assert asyncio.run(calls()) >= 0.195  # 40 intervals of 5 ms after the first call


def test_the_adaptive_limit_can_be_used_from_one_event_loop_after_another():
    import asyncio

    from shadowdiff.replay.models.resilience import AdaptiveLimit

    limit = AdaptiveLimit("m", max_limit=1, initial=1)

    async def two_calls() -> None:
        await limit.acquire()
        waiter = asyncio.ensure_future(limit.acquire())  # waits: one call in flight at most
        await asyncio.sleep(0)
        assert not waiter.done()
        limit.release(5.0, overloaded=False)
        await asyncio.wait_for(waiter, 5)
        limit.release(5.0, overloaded=False)

    asyncio.run(two_calls())
    asyncio.run(two_calls())  # a new loop: the first loop's event is not awaited here


def limit_settled(latency_ms: Callable[[int], float], calls: int) -> list[int]:
    """The calls in flight an AdaptiveLimit (up to 32) allows after each of `calls` answers,
    from 32 callers, when a call takes `latency_ms(calls in flight)` (slept, so that the
    limit's once-per-round-trip rule sees time pass as it would)."""
    import asyncio

    limit = AdaptiveLimit("m", max_limit=32)
    seen: list[int] = []

    async def caller() -> None:
        while len(seen) < calls:
            await limit.acquire()
            ms = latency_ms(limit.in_flight)
            await asyncio.sleep(ms / 1000)
            limit.release(ms, overloaded=False)
            seen.append(int(limit.limit))

    async def callers() -> None:
        await asyncio.gather(*(caller() for _ in range(32)))

    asyncio.run(callers())
    return seen


def test_the_adaptive_limit_reads_a_models_own_latency_spread_as_no_load():
    # a server with room to spare whose latency varies as real models' do (lognormal sigma
    # 0.35 around 20 ms, whatever the calls in flight): single slow calls are not load
    rng = random.Random(5)
    seen = limit_settled(lambda _in_flight: 20.0 * rng.lognormvariate(0, 0.35), 3000)
    assert statistics.median(seen[-1000:]) >= 28, seen[-20:]


def test_the_adaptive_limit_settles_near_a_servers_knee():
    # four workers of 20 ms: past four calls in flight, each call waits for the ones ahead
    rng = random.Random(6)
    seen = limit_settled(lambda in_flight: 20.0 * max(1.0, in_flight / 4) * rng.lognormvariate(0, 0.1), 1500)
    settled = seen[-800:]
    assert 4 <= statistics.median(settled) <= 8, settled[-20:]
