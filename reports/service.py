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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from shadowdiff.reports.openapi import OPENAPI
from shadowdiff.reports.verdicts import VerdictStore
from shadowdiff.schemas.errors import RunNotFound, UnknownCandidate
from shadowdiff.schemas.gate import DEFAULT_MAX_WAIVER, GateAnswer, Waiver, WaiverRequest
from shadowdiff.schemas.verdict import Verdict, verdict_dict

REPORT_PAGE = re.compile(r"report-[A-Za-z0-9._-]{1,64}(-evidently)?\.html")


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
    max_waiver: timedelta = DEFAULT_MAX_WAIVER  # the longest a waiver may last


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

    def public(answer: GateAnswer) -> dict[str, Any]:
        body = answer.model_dump(mode="json")
        body["waivers"] = body["waivers_applied"]  # the first gate API's name, kept for its clients
        body["report_url"] = f"{settings.base_url}/runs/{answer.run_id}/report"
        return body

    def not_found(err: Exception) -> Response:
        return FastJSON({"error": str(err)}, status_code=404)

    async def verdict(request: Request) -> Response:
        if (denied := read_guard(request)) is not None:
            return denied
        try:
            answer, doc = store.answer(request.path_params["run"], request.query_params.get("candidate"))
        except (RunNotFound, UnknownCandidate) as err:
            return not_found(err)
        body = public(answer)
        if request.query_params.get("full") == "1":
            body["document"] = verdict_dict(doc) if doc is not None else None
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
        if not isinstance(meta, dict) or not isinstance(meta.get("candidate", ""), str):
            return FastJSON({"error": "metadata must be an object of strings (metadata.candidate: a name)"}, status_code=400)
        try:
            answer, _ = store.answer(request.path_params["run"], meta.get("candidate"))
        except (RunNotFound, UnknownCandidate) as err:
            return not_found(err)
        return FastJSON(
            public(answer) | {"flagger": {k: payload.get(k) for k in ("name", "namespace", "phase", "checksum")}},
            status_code=answer.flagger_status,
        )

    async def runs(request: Request) -> Response:
        if (denied := read_guard(request)) is not None:
            return denied
        out = []
        for r in store.runs():
            st, _ = store.answer(r)
            out.append(
                {
                    "run_id": r,
                    "candidate": st.candidate,
                    "verdict": st.verdict,
                    "pairs": st.pairs,
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
            d = store.layout(run_id).dir
        except RunNotFound as err:
            return not_found(err)
        name = request.query_params.get("candidate") or next(iter(store.candidates(run_id)), None)
        page = request.path_params.get("page") or f"report-{name}.html"
        # a report page of this run, by the names the run can have: nothing else is served
        if not REPORT_PAGE.fullmatch(page):
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
            asked = WaiverRequest.model_validate_json(await request.body())
        except ValidationError as err:
            problems = [f"{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()]
            return FastJSON({"error": "invalid waiver", "problems": problems}, status_code=422)
        now = datetime.now(UTC)
        if not now < asked.expires_at <= now + settings.max_waiver:
            return FastJSON(
                {"error": f"expires_at must be in the future and at most {settings.max_waiver} from now"}, status_code=422
            )
        try:
            items = store.add_waiver(run_id, Waiver(**asked.model_dump(), created_at=now))
        except RunNotFound as err:
            return not_found(err)
        return FastJSON({"waivers": [w.model_dump(mode="json") for w in items]}, status_code=201)

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
        served = []
        for r in store.runs():
            st, doc = store.answer(r)
            served.append((r, doc))
            for v in ("go", "no_go", "pending"):
                lines.append(
                    f'shadowdiff_run_verdict{{run="{r}",candidate="{st.candidate}",verdict="{v}"}} {int(st.verdict == v)}'
                )
            lines.append(f'shadowdiff_run_pairs{{run="{r}"}} {st.pairs}')
        lines += _coverage_metrics(served)
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


def _label(value: str) -> str:
    """A Prometheus label value: a worker's name comes from a file a reader does not control."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _coverage_metrics(served: list[tuple[str, Verdict | None]]) -> list[str]:
    """Per worker of a run judged from exports, as its served verdict last saw them: failed
    checkpoint exports (all, and since its last published one) and whether it went silent."""
    lines = [
        "# HELP shadowdiff_worker_failed_exports Checkpoint exports that failed, per worker (their rows wait in its store).",
        "# TYPE shadowdiff_worker_failed_exports gauge",
        "# HELP shadowdiff_worker_failing_exports Failed exports since the worker's last published one.",
        "# TYPE shadowdiff_worker_failing_exports gauge",
        "# HELP shadowdiff_worker_silent 1 when the worker has not reported within --silent-after.",
        "# TYPE shadowdiff_worker_silent gauge",
    ]
    for r, doc in served:
        for w in doc.coverage.workers if doc is not None and doc.coverage is not None else []:
            labels = f'run="{_label(r)}",worker="{_label(w.worker)}"'
            lines.append(f"shadowdiff_worker_failed_exports{{{labels}}} {w.failed_exports}")
            lines.append(f"shadowdiff_worker_failing_exports{{{labels}}} {w.failing_exports}")
            lines.append(f"shadowdiff_worker_silent{{{labels}}} {int(w.silent)}")
    return lines
