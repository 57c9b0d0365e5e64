"""HTTP JSON model clients, their calls made through `transport.ConnectionPool`. One body format
per `kind`:

- `http`: the input object as the body (or under `request_field`); the output at `response_path`.
  With rows_per_call > 1 the body is a JSON array and the answer must be one.
- `oip-v2`: Open Inference Protocol v2 (KServe, MLServer, Triton): one input tensor per feature,
  `shape [n]`, with the request-level content type "pd" (MLServer reads them as one DataFrame);
  or (`oip_request = "tensor"`) one [n, k] FP64 tensor of `oip_features`; the output tensor
  named `response_path` (asked for by name in the request; else the first), one row each, or a
  row of k values for an [n, k] one.
- `mlflow`: MLflow `/invocations` with `dataframe_records`; `predictions` back.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit

import orjson

from shadowdiff.replay.models.base import CallResult, OutputReader
from shadowdiff.replay.models.resilience import TRANSIENT, TRANSIENT_STATUS, AdaptiveLimit, CircuitBreaker, RateCap
from shadowdiff.replay.models.transport import ConnectionFailed, ConnectionPool, HttpAnswer
from shadowdiff.schemas.config import ModelSpec
from shadowdiff.schemas.paths import lookup
from shadowdiff.schemas.records import ErrorClass as E

_ABSENT = object()  # `response_path` not in an answer
# redirects that keep the method and body (a server moving `/predict` to `/predict/` answers
# 307); followed on the same scheme, host and port only, so the config's headers and
# credentials never go to another host
_KEEPS_POST = (307, 308)
_MAX_REDIRECTS = 5
_NO_ANSWER = HttpAnswer(0, b"", None, None)


class WrongShape(Exception):
    pass


# answers a single bad row can cause for its whole call: worth splitting the call to find it
_ROW_ERRORS = frozenset({E.HTTP_4XX, E.HTTP_5XX, E.UNPARSABLE, E.WRONG_SHAPE})


def _oip_datatype(values: list[Any]) -> str:
    if all(isinstance(v, bool) for v in values):
        return "BOOL"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "FP64"
    return "BYTES"


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _requested_output(spec: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
    """Asks for the output tensor the mapping reads: a server answers its default output
    otherwise (MLServer's scikit-learn runtime: `predict`, the labels, not `predict_proba`)."""
    if spec.response_path:
        body["outputs"] = [{"name": spec.response_path}]
    return body


def encode(spec: ModelSpec, inputs: list[dict[str, Any]]) -> bytes:
    """Request body for `inputs` in the client's format."""
    if spec.kind == "oip-v2":
        if spec.oip_request == "tensor":
            # one row-major [n, k] tensor; a missing or non-numeric value is sent as null
            flat = [_number(row.get(name)) for row in inputs for name in spec.oip_features]
            shape = [len(inputs), len(spec.oip_features)]
            tensor = {"name": spec.oip_tensor_name, "shape": shape, "datatype": spec.oip_tensor_datatype, "data": flat}
            body: dict[str, Any] = {"inputs": [tensor]}
            return orjson.dumps(_requested_output(spec, body))
        names = list(dict.fromkeys(k for row in inputs for k in row))
        tensors = []
        for name in names:
            col = [row.get(name) for row in inputs]
            dt = _oip_datatype(col)
            data = col if dt != "BYTES" else ["" if v is None else str(v) for v in col]
            tensors.append({"name": name, "shape": [len(inputs)], "datatype": dt, "data": data})
        # the request says how to read its tensors: as the columns of one DataFrame
        return orjson.dumps(_requested_output(spec, {"parameters": {"content_type": "pd"}, "inputs": tensors}))
    if spec.kind == "mlflow":
        return orjson.dumps({"dataframe_records": inputs})
    payload: Any = inputs[0] if spec.rows_per_call == 1 else inputs
    if spec.request_field:
        payload = {spec.request_field: payload}
    return orjson.dumps(payload)


def decode(spec: ModelSpec, answer: Any, n: int) -> list[Any]:
    """One output per row from a parsed answer; raises WrongShape."""
    if spec.kind == "oip-v2":
        outs = answer.get("outputs") if isinstance(answer, dict) else None
        if not isinstance(outs, list) or not outs:
            raise WrongShape("no `outputs` list")
        tensor = next((o for o in outs if isinstance(o, dict) and o.get("name") == spec.response_path), None)
        tensor = tensor if tensor is not None else outs[0]
        data = tensor.get("data") if isinstance(tensor, dict) else None
        if not isinstance(data, list) or not data or len(data) % n:
            raise WrongShape(f"output tensor data of length {len(data) if isinstance(data, list) else '-'} for {n} rows")
        width = len(data) // n
        return data if width == 1 else [data[i * width : (i + 1) * width] for i in range(n)]
    if spec.kind == "mlflow":
        preds = answer.get("predictions") if isinstance(answer, dict) else answer
        if not isinstance(preds, list) or len(preds) != n:
            raise WrongShape(f"expected {n} predictions")
        return preds
    out = lookup(answer, spec.response_path, _ABSENT)
    if out is _ABSENT:
        raise WrongShape(f"no `{spec.response_path}` in the answer")
    if spec.rows_per_call == 1:
        return [out]
    if not isinstance(out, list) or len(out) != n:
        raise WrongShape(f"expected a list of {n} outputs")
    return out


def _same_host(url: str, target: str) -> str | None:
    """`target` with `url`'s credentials when both are on the same scheme, host and port."""
    a, b = urlsplit(url), urlsplit(target)
    if (a.scheme, a.hostname, a.port) != (b.scheme, b.hostname, b.port):
        return None
    return SplitResult(a.scheme, a.netloc, b.path, b.query, "").geturl()


def _seconds(retry_after: str | None) -> float:
    """A Retry-After of delta-seconds, at most 5 s (an HTTP date or garbage: no wait)."""
    try:
        seconds = float(retry_after or 0)
    except ValueError:
        return 0.0
    return min(seconds, 5.0) if seconds > 0 else 0.0  # NaN is not > 0


class _Batch:
    """One predict() call's chunks, taken in turn by the workers."""

    __slots__ = ("done", "inputs", "left", "parts", "rows_per_call", "turns")

    def __init__(self, inputs: list[dict[str, Any]], rows_per_call: int, chunks: int, done: asyncio.Future[None]) -> None:
        self.inputs = inputs
        self.rows_per_call = rows_per_call
        self.parts: list[list[CallResult]] = [[] for _ in range(chunks)]
        self.turns = iter(range(chunks))
        self.left = chunks
        self.done = done


class HttpModel:
    def __init__(self, spec: ModelSpec) -> None:
        assert spec.url is not None
        self.spec = spec
        self.name = spec.name
        self.model_version = spec.model_version
        self.breaker = CircuitBreaker(spec.breaker_failures, spec.breaker_reset_s, spec.name)
        self._reader = OutputReader(spec.output) if spec.output is not None else None
        self._workers: list[asyncio.Task[None]] = []
        self._workers_loop: asyncio.AbstractEventLoop | None = None
        self._queue: collections.deque[_Batch] = collections.deque()
        self._has_work = asyncio.Event()
        self._headers = {"Content-Type": "application/json", **spec.header_values()}
        self._pools = {spec.url: ConnectionPool(spec.url, self._headers)}
        self.limit = AdaptiveLimit(spec.name, spec.concurrency) if spec.adaptive_concurrency else None
        self._rate_cap = RateCap(spec.max_rps) if spec.max_rps is not None else None

    async def predict(self, inputs: list[dict[str, Any]]) -> list[CallResult]:
        k = self.spec.rows_per_call
        n = -(-len(inputs) // k)
        if not n:
            return []
        self._start_workers()
        loop = asyncio.get_running_loop()
        batch = _Batch(inputs, k, n, loop.create_future())
        self._queue.append(batch)
        self._has_work.set()
        await batch.done
        return [r for part in batch.parts for r in part]

    def _start_workers(self) -> None:
        """`concurrency` workers per event loop take the calls of every batch, oldest batch
        first. A task per call created 20k tasks in one step of the event loop for a 20k batch
        (~0.25 s in which no answer in flight was read), and with two batches in flight a
        semaphore woke a waiting task for every call: ~10-15% of the call rate each, measured
        in the call process. A call waiting out its retry backoff keeps its worker, so a sick
        model gets fewer calls in flight, not more."""
        loop = asyncio.get_running_loop()
        if self._workers and self._workers_loop is loop:
            return
        self._workers_loop = loop
        self._queue = collections.deque()
        self._has_work = asyncio.Event()
        self._workers = [loop.create_task(self._worker()) for _ in range(self.spec.concurrency)]

    async def _worker(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._has_work.clear()
                await self._has_work.wait()
                continue
            batch = queue[0]
            c = next(batch.turns, None)
            if c is None:  # every chunk of the oldest batch is taken (maybe still in flight)
                if queue and queue[0] is batch:
                    queue.popleft()
                continue
            k = batch.rows_per_call
            try:
                batch.parts[c] = await self._chunk(batch.inputs[c * k : (c + 1) * k])
            except Exception as err:  # a bug, not a model failure (those are results): fail the batch
                batch.turns = iter(())  # and make none of its other calls
                if not batch.done.done():
                    batch.done.set_exception(err)
                continue
            batch.left -= 1
            if not batch.left and not batch.done.done():
                batch.done.set_result(None)

    async def _chunk(self, rows: list[dict[str, Any]]) -> list[CallResult]:
        """One call for `rows`; when a call of several rows is refused or answered with garbage,
        its halves are called apart, down to single rows, so one bad input costs its own
        output only, not its batch's (a server that is down opens the breaker instead)."""
        results = await self._call(rows)
        err = results[0].error_class if results else None
        if len(rows) == 1 or err not in _ROW_ERRORS:
            return results
        half = len(rows) // 2
        return [*await self._chunk(rows[:half]), *await self._chunk(rows[half:])]

    async def _call(self, rows: list[dict[str, Any]]) -> list[CallResult]:
        n = len(rows)
        body = encode(self.spec, rows)
        attempt = 0
        while True:
            err: E | None = None
            detail = ""
            outputs: list[Any] = []
            # asked when a worker takes the call, not when the batch was queued: calls
            # behind a failing one must see the breaker it opened
            if not self.breaker.allow():
                return [CallResult(None, None, E.CIRCUIT_OPEN, "breaker open after repeated failures", attempt)] * n
            attempt += 1
            if self._rate_cap is not None:
                await self._rate_cap.wait()
            if self.limit is not None:
                await self.limit.acquire()
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(self.spec.timeout_s):  # redirects included
                    status, raw, retry_after, location = await self._post(body)
            except TimeoutError:
                err, detail, (status, raw, retry_after, location) = E.TIMEOUT, f"no answer in {self.spec.timeout_s}s", _NO_ANSWER
            except ConnectionFailed as exc:
                err, detail, (status, raw, retry_after, location) = E.CONNECTION, str(exc)[:300], _NO_ANSWER
            latency = (time.perf_counter() - t0) * 1000.0
            if self.limit is not None:
                answered = err is None and status not in (429, 503)
                self.limit.release(latency if answered else None, err == E.TIMEOUT or status in (429, 503))
            if err is None:
                if status == 429 or (status == 503 and retry_after is not None):
                    err, detail = E.THROTTLED, f"HTTP {status}: too many calls (Retry-After {retry_after})"
                elif status >= 500:
                    err, detail = E.HTTP_5XX, f"HTTP {status}: {raw[:200]!r}"
                elif status >= 400:
                    err, detail = E.HTTP_4XX, f"HTTP {status}: {raw[:200]!r}"
                elif not 200 <= status < 300:  # a redirect not followed, or a status no server should send
                    err, detail = (
                        E.HTTP_4XX,
                        (
                            f"HTTP {status} to {location!r}: model calls follow only 307 and 308 redirects on the "
                            "same host; set `url` to where it points"
                        ),
                    )
                else:
                    try:
                        answer = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        err, detail = E.UNPARSABLE, f"not JSON: {raw[:120]!r}"
                    else:
                        try:
                            outputs = decode(self.spec, answer, n)
                        except WrongShape as ws:
                            err, detail = E.WRONG_SHAPE, str(ws)
            transient = err in TRANSIENT or (err is not None and status in TRANSIENT_STATUS)
            if transient and attempt <= self.spec.retries:
                # full jitter keeps retries of many rows from arriving in lockstep
                await asyncio.sleep(max(random.uniform(0, self.spec.backoff_s * 2 ** (attempt - 1)), _seconds(retry_after)))
                continue
            # an answer of the right shape whose every output is unreadable (no score where the
            # mapping says) is a failure to the breaker too
            readable = err is None and (self._reader is None or any(self._reader.read(o)[2] is None for o in outputs))
            if err is not E.THROTTLED:  # a server asking for fewer calls is not a sick one
                cause = f"{err}: {detail}" if err is not None else "answers without the mapped score or label"
                self.breaker.record(readable, cause)
            if err is not None:
                return [CallResult(None, latency, err, detail, attempt)] * n
            # tuple.__new__ directly: a NamedTuple's own __new__ and _make are Python-level calls
            new = tuple.__new__
            return [new(CallResult, (o, latency, None, None, attempt)) for o in outputs]

    async def _post(self, body: bytes) -> HttpAnswer:
        url = self.spec.url
        assert url is not None
        for _ in range(_MAX_REDIRECTS):
            answer = await self._pool(url).post(body, self.spec.timeout_s)
            if answer.status not in _KEEPS_POST or answer.location is None:
                return answer
            moved = _same_host(url, urljoin(url, answer.location))
            if moved is None or (moved not in self._pools and len(self._pools) > _MAX_REDIRECTS):
                return answer  # elsewhere, or a server sending each call somewhere new
            url = moved
        return await self._pool(url).post(body, self.spec.timeout_s)

    def _pool(self, url: str) -> ConnectionPool:
        pool = self._pools.get(url)
        if pool is None:
            pool = self._pools[url] = ConnectionPool(url, self._headers)
        return pool

    async def close(self) -> None:
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        for pool in self._pools.values():
            pool.close()
