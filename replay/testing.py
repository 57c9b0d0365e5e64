"""Test doubles for the replay's model clients: a real HTTP model server on loopback, serving a
Python batch function in the three formats shadowdiff speaks (plain JSON, Open Inference
Protocol v2, MLflow /invocations). Used by the demo, the tests and the benchmarks; its
`ServerBehaviour` makes it slow or flaky on purpose, and fixed routes answer garbage."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

BatchFn = Callable[[list[dict[str, Any]]], list[Any]]


@dataclass
class ServerBehaviour:
    latency_ms: float = 0.0  # median added latency (lognormal, sigma 0.35), 0 = none
    latency_sigma: float = 0.35
    flaky_every: int = 0  # every Nth call answers 503 (a transient failure)
    # a server with this many workers (0: unlimited): calls beyond them queue, so past the knee
    # each further call in flight adds a whole service time to the latency
    slots: int = 0
    # with slots: calls beyond slots + max_queue in the server are refused at once with 429 and
    # Retry-After (a server or gateway with admission control); -1 = queue them all
    max_queue: int = -1
    calls: int = 0
    refused: int = 0
    seen: list[int] = field(default_factory=list)
    headers_seen: dict[str, str] = field(default_factory=dict)  # the last /predict call's headers
    oip_parameters: dict[str, Any] = field(default_factory=dict)  # the last OIP request's parameters


def _tensor_rows(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows from OIP v2 input tensors: one value per row from an [n] tensor, a list of k from
    an [n, k] one."""
    tensors = body["inputs"]
    n = tensors[0]["shape"][0]
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for t in tensors:
        k = t["shape"][1] if len(t["shape"]) == 2 else 0
        for i in range(n):
            rows[i][t["name"]] = t["data"][i * k : (i + 1) * k] if k else t["data"][i]
    return rows


def build_app(fn: BatchFn, behaviour: ServerBehaviour | None = None) -> web.Application:
    b = behaviour or ServerBehaviour()

    workers = asyncio.Semaphore(b.slots) if b.slots else None
    inside = 0  # calls in the server, running or queued

    def admitted() -> bool:
        if not b.slots or b.max_queue < 0 or inside < b.slots + b.max_queue:
            return True
        b.refused += 1
        return False

    async def delay() -> None:
        if b.latency_ms > 0:
            if workers is None:
                await asyncio.sleep(random.lognormvariate(0, b.latency_sigma) * b.latency_ms / 1000)
                return
            async with workers:
                await asyncio.sleep(random.lognormvariate(0, b.latency_sigma) * b.latency_ms / 1000)

    async def predict(request: web.Request) -> web.Response:
        nonlocal inside
        b.calls += 1
        b.headers_seen = dict(request.headers)
        if not admitted():
            return web.Response(status=429, text="too many requests", headers={"Retry-After": "1"})
        inside += 1
        try:
            await delay()
        finally:
            inside -= 1
        if b.flaky_every and b.calls % b.flaky_every == 0:
            return web.Response(status=503, text="try again")
        body = orjson.loads(await request.read())
        if isinstance(body, list):
            return web.Response(body=orjson.dumps(fn(body)), content_type="application/json")
        return web.Response(body=orjson.dumps(fn([body])[0]), content_type="application/json")

    async def oip(request: web.Request) -> web.Response:
        await delay()
        body = orjson.loads(await request.read())
        b.oip_parameters = body.get("parameters") or {}
        rows = _tensor_rows(body)
        outs = fn(rows)
        if outs and all(isinstance(o, list) for o in outs):
            # a row of class probabilities each, as predict_proba answers: one [n, k] tensor
            data = [x for o in outs for x in o]
            shape = [len(rows), len(outs[0])]
        else:
            data = [o["score"] if isinstance(o, dict) else o for o in outs]
            shape = [len(rows)]
        answer = {
            "model_name": request.match_info["model"],
            "outputs": [{"name": "score", "shape": shape, "datatype": "FP64", "data": data}],
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def mlflow(request: web.Request) -> web.Response:
        b.calls += 1
        await delay()
        if b.flaky_every and b.calls % b.flaky_every == 0:
            return web.Response(status=503, text="try again")
        body = orjson.loads(await request.read())
        if not isinstance(body, dict) or not isinstance(body.get("dataframe_records"), list):
            # as MLflow's server answers a body it cannot read (a preflight probe sends {})
            return web.json_response({"error_code": "BAD_REQUEST", "message": "no dataframe_records"}, status=400)
        rows = body["dataframe_records"]
        return web.Response(body=orjson.dumps({"predictions": fn(rows)}), content_type="application/json")

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")

    async def wrong_shape(request: web.Request) -> web.Response:
        return web.json_response({"unexpected": [1, 2, 3]})

    async def error500(request: web.Request) -> web.Response:
        return web.Response(status=500, text="internal error")

    async def busy(request: web.Request) -> web.Response:
        # a gateway that admits none of the shadow's calls (its quota for them is spent)
        return web.Response(status=429, text="too many requests", headers={"Retry-After": "1"})

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({"score": 0.0})

    async def moved(request: web.Request) -> web.Response:
        # 307 keeps the POST and its body (FastAPI answers one for a missing trailing slash)
        raise web.HTTPTemporaryRedirect("/predict")

    async def elsewhere(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect("http://192.0.2.1/predict")  # another host (TEST-NET-1)

    async def found(request: web.Request) -> web.Response:
        raise web.HTTPFound("/predict")  # a 302: a client following it would GET

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/predict", predict)
    app.router.add_post("/v2/models/{model}/infer", oip)
    app.router.add_post("/invocations", mlflow)
    app.router.add_post("/html", html)
    app.router.add_post("/wrong", wrong_shape)
    app.router.add_post("/500", error500)
    app.router.add_post("/busy", busy)
    app.router.add_post("/hang", hang)
    app.router.add_post("/moved", moved)
    app.router.add_post("/elsewhere", elsewhere)
    app.router.add_post("/found", found)
    return app


class ModelServer:
    """Runs the app on 127.0.0.1 in a background thread: `with ModelServer(fn) as url: ...`."""

    def __init__(self, fn: BatchFn, behaviour: ServerBehaviour | None = None, port: int = 0) -> None:
        """`port`: 0 for a free one; a stopped server's port to bring it back where it was."""
        self.app = build_app(fn, behaviour)
        # bound here and handed to aiohttp: picking a free port and binding it later races
        # with every other process picking ports on the machine
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        site = web.SockSite(self._runner, self._sock, backlog=1024)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("model server did not start")
        return self.url

    def stop(self) -> None:
        async def _cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            # handlers still sleeping (the /hang route) are cancelled, not left for the
            # interpreter to complain about at exit
            me = asyncio.current_task()
            pending = [t for t in asyncio.all_tasks() if t is not me]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        fut = asyncio.run_coroutine_threadsafe(_cleanup(), self._loop)
        try:
            fut.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
