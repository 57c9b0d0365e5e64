"""The gate status service (Starlette). Reads published verdict files only, so it answers in
about a millisecond while a replay holds the DuckDB store for writing.

- GET  /runs/{run}/verdict     Argo Rollouts web metric: always 200 + JSON for a known run
                               (`successCondition: result.verdict == "go"`); 404 for an unknown run.
- POST /runs/{run}/flagger     Flagger webhook: 200 for go; 412 no_go / 425 pending, with reasons.
- GET  /runs, /runs/{run}/report, /healthz, /metrics (Prometheus), /openapi.json
- POST /runs/{run}/waivers     record a person's waiver: needs the bearer token.
"""

from __future__ import annotations

import hmac
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from reports.openapi import OPENAPI
from reports.verdicts import VerdictStore
from schemas.errors import RunNotFound


class FastJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str)


@dataclass(frozen=True)
class GateSettings:
    home: Path
    token: str | None = None
    public_reads: bool = True
    base_url: str = "http://127.0.0.1:8787"
    stale_after_s: float = 300.0


def create_app(settings: GateSettings) -> Any:
    """The ASGI app (Starlette routes wrapped in a request counter)."""
    store = VerdictStore(settings.home, settings.stale_after_s)
    counts: Counter[tuple[str, int]] = Counter()
    latency_sum: dict[str, float] = defaultdict(float)

    def authorized(request: Request) -> bool:
        if settings.token is None:
            return False  # state changes are off unless a token is configured
        got = request.headers.get("authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {settings.token}".encode())

    def read_guard(request: Request) -> Response | None:
        if settings.public_reads or authorized(request):
            return None
        return FastJSON({"error": "reads need the bearer token"}, status_code=401)

    def public(status: dict[str, Any], run_id: str) -> dict[str, Any]:
        out = {k: v for k, v in status.items() if k != "document"}
        out["report_url"] = f"{settings.base_url}/runs/{run_id}/report"
        return out

    async def verdict(request: Request) -> Response:
        if (denied := read_guard(request)) is not None:
            return denied
        run_id = request.path_params["run"]
        try:
            st = store.status(run_id, request.query_params.get("candidate"))
        except RunNotFound as err:
            return FastJSON({"error": str(err)}, status_code=404)
        body = public(st, run_id)
        if request.query_params.get("full") == "1":
            body["document"] = st["document"]
        return FastJSON(body)

    async def flagger(request: Request) -> Response:
        try:
            payload = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return FastJSON({"error": "body is not JSON"}, status_code=400)
        missing = [
            k for k in ("name", "namespace", "phase") if not isinstance(payload, dict) or not isinstance(payload.get(k), str)
        ]
        if missing:
            return FastJSON({"error": f"Flagger payload needs string fields {missing}"}, status_code=400)
        meta = payload.get("metadata") or {}
        if not isinstance(meta, dict):
            return FastJSON({"error": "metadata must be an object"}, status_code=400)
        run_id = request.path_params["run"]
        try:
            st = store.status(run_id, meta.get("candidate"))
        except RunNotFound as err:
            return FastJSON({"error": str(err)}, status_code=404)
        code = {"go": 200, "no_go": 412, "pending": 425}[st["verdict"]]
        return FastJSON(
            public(st, run_id) | {"flagger": {k: payload.get(k) for k in ("name", "namespace", "phase", "checksum")}},
            status_code=code,
        )

    async def runs(request: Request) -> Response:
        if (denied := read_guard(request)) is not None:
            return denied
        out = []
        for r in store.runs():
            st = store.status(r)
            out.append(
                {
                    "run_id": r,
                    "candidate": st["candidate"],
                    "verdict": st["verdict"],
                    "pairs": st.get("pairs", 0),
                    "verdict_url": f"{settings.base_url}/runs/{r}/verdict",
                    "report_url": f"{settings.base_url}/runs/{r}/report",
                }
            )
        return FastJSON({"runs": out})

    async def report(request: Request) -> Response:
        if (denied := read_guard(request)) is not None:
            return denied
        run_id = request.path_params["run"]
        try:
            d = store.run_dir(run_id)
        except RunNotFound as err:
            return FastJSON({"error": str(err)}, status_code=404)
        name = request.query_params.get("candidate") or next(iter(store.candidates(run_id)), None)
        page = request.path_params.get("page") or f"report-{name}.html"
        if not re.fullmatch(r"report-[A-Za-z0-9._-]+\.html", page):
            return FastJSON({"error": "no such page"}, status_code=404)
        path = d / page
        if not path.exists():
            return FastJSON(
                {"error": f"no report written yet for {run_id}; run `shadowdiff report --run {run_id}`"},
                status_code=404,
            )
        return FileResponse(path, media_type="text/html")

    async def waivers(request: Request) -> Response:
        if not authorized(request):
            return FastJSON({"error": "a bearer token is required to record a waiver"}, status_code=401)
        run_id = request.path_params["run"]
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return FastJSON({"error": "body is not JSON"}, status_code=400)
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) and body[k] for k in ("check", "reason", "by")):
            return FastJSON(
                {"error": "a waiver needs string fields check, reason, by (segment, candidate optional)"},
                status_code=400,
            )
        waiver = {k: body.get(k) for k in ("check", "segment", "candidate", "reason", "by")}
        waiver["segment"] = waiver["segment"] or "*"
        waiver["at"] = datetime.now(UTC).isoformat()
        try:
            items = store.add_waiver(run_id, waiver)
        except RunNotFound as err:
            return FastJSON({"error": str(err)}, status_code=404)
        return FastJSON({"waivers": items}, status_code=201)

    async def healthz(request: Request) -> Response:
        return FastJSON({"ok": True, "home": str(settings.home), "runs": len(store.runs())})

    async def metrics(request: Request) -> Response:
        lines = [
            "# HELP shadowdiff_gate_requests_total Gate requests by route and status.",
            "# TYPE shadowdiff_gate_requests_total counter",
        ]
        for (route, code), n in sorted(counts.items()):
            lines.append(f'shadowdiff_gate_requests_total{{route="{route}",code="{code}"}} {n}')
        lines += [
            "# HELP shadowdiff_gate_request_seconds_sum Time spent answering, by route.",
            "# TYPE shadowdiff_gate_request_seconds_sum counter",
        ]
        for route, s in sorted(latency_sum.items()):
            lines.append(f'shadowdiff_gate_request_seconds_sum{{route="{route}"}} {s:.6f}')
        lines += [
            "# HELP shadowdiff_run_verdict Current verdict per run (1 for the verdict it has).",
            "# TYPE shadowdiff_run_verdict gauge",
        ]
        for r in store.runs():
            st = store.status(r)
            for v in ("go", "no_go", "pending"):
                lines.append(
                    f'shadowdiff_run_verdict{{run="{r}",candidate="{st["candidate"]}",verdict="{v}"}} {int(st["verdict"] == v)}'
                )
            lines.append(f'shadowdiff_run_pairs{{run="{r}"}} {st.get("pairs", 0)}')
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def openapi(request: Request) -> Response:
        return FastJSON(OPENAPI)

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            Route("/openapi.json", openapi),
            Route("/runs", runs),
            Route("/runs/{run}/verdict", verdict),
            Route("/runs/{run}/flagger", flagger, methods=["POST"]),
            Route("/runs/{run}/waivers", waivers, methods=["POST"]),
            Route("/runs/{run}/report", report),
            Route("/runs/{run}/{page}", report),
        ]
    )

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        """Counts and times every HTTP request for /metrics (a bare ASGI wrapper: cheaper than
        BaseHTTPMiddleware on the hot path)."""
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await app(scope, receive, send_wrapper)
        route = scope.get("route")
        name = getattr(route, "path", "unmatched")
        counts[(name, status["code"])] += 1
        latency_sum[name] += time.perf_counter() - t0

    return counted
