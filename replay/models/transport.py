"""Keep-alive HTTP/1.1 POSTs to one model URL, on asyncio's transports with httptools' parser
(the C parser uvicorn is built on).

Why not aiohttp's client session: its request path runs a good deal of Python per call (URL
and header objects, cookie handling, payload and stream wrappers, a coroutine per request stage),
and a shadow run makes one call per row. On a small machine that time is taken from the model
server and from the replay; the connection pool makes the same call with well under half of it
(`bench/replay_bench.py --sections http`: shadowdiff's client alone against a bare aiohttp
client, figures in docs/performance.md). It does only what a model call needs: one POST at a
time on each connection, the response's status, body and Retry-After, keep-alive unless the
server says otherwise, TLS for https. It sends no Accept-Encoding (answers come uncompressed)
and follows no redirect itself (HttpModel follows those that keep the POST and its host).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit

import httptools

from shadowdiff.schemas.config import header_problem


class ConnectionFailed(Exception):
    """The call got no complete answer: refused, reset, closed early or answered with bytes
    that are not HTTP."""


class HttpAnswer(NamedTuple):
    status: int
    body: bytes
    retry_after: str | None
    location: str | None  # where a redirect points


class _Connection(asyncio.Protocol):
    """One connection; `post` is awaited by at most one call at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[HttpAnswer] | None = None
        self._body: list[bytes] = []
        self._retry_after: str | None = None
        self._location: str | None = None
        self._got_bytes = False
        self._headers_done = False
        self._delimited = False  # a Content-Length or chunks: else the body ends with the connection

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open = True

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._waiter is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._fail(ConnectionFailed(f"not an HTTP answer: {type(err).__name__}: {err}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and not self._delimited and self._parser.get_status_code() not in (204, 304):
            self._complete()
            return
        self._fail(ConnectionFailed(f"the server closed the connection{f': {exc}' if exc else ''}"))

    # -- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"retry-after":
            self._retry_after = value.decode("latin-1")
        elif name == b"location":
            self._location = value.decode("latin-1")
        elif name in (b"content-length", b"transfer-encoding"):
            self._delimited = True

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete()

    # -- calls -----------------------------------------------------------------------------
    def _complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        answer = HttpAnswer(self._parser.get_status_code(), b"".join(self._body), self._retry_after, self._location)
        if not self._parser.should_keep_alive():
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _fail(self, err: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(err)

    def post(self, request: bytes) -> asyncio.Future[HttpAnswer]:
        assert self.transport is not None
        assert self._waiter is None  # one call at a time on a connection
        self._waiter = asyncio.get_running_loop().create_future()
        self._body = []
        self._retry_after = self._location = None
        self._got_bytes = self._headers_done = self._delimited = False
        self._parser = httptools.HttpResponseParser(self)
        self.transport.write(request)
        return self._waiter

    @property
    def answered_nothing(self) -> bool:
        return not self._got_bytes

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()


class ConnectionPool:
    """Idle keep-alive connections to one URL, opened as calls need them. The callers bound
    how many are in use at once (HttpModel's workers), so the pool never waits for one."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"no host in the model URL {url!r}")
        self._host = parts.hostname
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._port = parts.port or (443 if self._tls is not None else 80)
        # a path or query with characters outside ASCII goes percent-encoded (escapes stay)
        target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe="!#$%&'()*+,/:;=?@[]~")
        netloc = self._host if parts.port is None else f"{self._host}:{parts.port}"
        if ":" in self._host:  # an IPv6 literal keeps its brackets in Host
            netloc = f"[{self._host}]" if parts.port is None else f"[{self._host}]:{parts.port}"
        lines = {"Host": netloc, "User-Agent": "shadowdiff", "Accept": "*/*"}
        if parts.username is not None:  # credentials in the URL: HTTP basic authentication
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            lines["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        # a header given again under another case replaces the earlier one (HTTP names are
        # case-insensitive): the config's `content-type` is sent instead of ours, not beside it
        for name, value in headers.items():
            for known in [k for k in lines if k.lower() == name.lower()]:
                del lines[known]
            lines[name] = value
        for name, value in lines.items():
            if (problem := header_problem(name, value)) is not None:
                raise ValueError(problem)
        head = f"POST {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines.items())
        # encodes: the target is percent-encoded ASCII, and every line (Host too) passed the check
        self._head = head.encode("latin-1")
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def post(self, body: bytes, timeout_s: float) -> HttpAnswer:
        """The answer to one POST of `body`; raises ConnectionFailed, or TimeoutError when no
        whole answer came within `timeout_s` (connecting included)."""
        request = b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body)
        async with asyncio.timeout(timeout_s):
            while True:
                conn = self._take()
                reused = conn is not None
                if conn is None:
                    conn = await self._connect()
                try:
                    answer = await conn.post(request)
                except ConnectionFailed:
                    conn.close()
                    # a kept-alive connection closed without a byte of answer: most likely the
                    # server's keep-alive ran out as the call went out, before the model saw it.
                    # It goes again on a fresh connection (urllib3 and browsers do the same); a
                    # fresh connection that does this is the model's failure
                    if reused and conn.answered_nothing:
                        continue
                    raise
                except BaseException:  # a timeout or a cancel: an answer may still come
                    conn.close()
                    raise
                if conn.open:
                    self._idle.append(conn)
                return answer

    def _take(self) -> _Connection | None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that opened them
            self._loop, self._idle = loop, []
        while self._idle:
            conn = self._idle.pop()  # the most recent: the least likely to have timed out
            if conn.open:
                return conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Connection, self._host, self._port, ssl=self._tls)
        except OSError as err:  # refused, unreachable, DNS, TLS handshake
            raise ConnectionFailed(f"cannot connect to {self._host}:{self._port}: {err}") from err
        return conn

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle = []
