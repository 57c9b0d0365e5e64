"""The model calls' connection pool against real servers on loopback that answer the way real
servers do at their edges: closing kept-alive connections, bodies without a length, chunks,
truncated answers, garbage, answers that come too late."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from shadowdiff.replay.models.transport import ConnectionFailed, ConnectionPool

# what a scripted server does with one request: the bytes it reads are the whole request (the
# pool sends head and body in one write, and the bodies here are small)
Script = Callable[[bytes, asyncio.StreamWriter, int], Awaitable[bool]]  # -> keep the connection


def ok(body: bytes, extra: str = "") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra.encode(), body)


async def serve(script: Script, tls: ssl.SSLContext | None = None) -> tuple[asyncio.Server, str, list[int]]:
    """A server running `script` for each request; the list counts the connections opened."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        n = 0
        try:
            while data := await reader.read(65536):
                n += 1
                if not await script(data, writer, n):
                    break
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    return server, f"{'https' if tls else 'http'}://127.0.0.1:{port}/predict", connections


@asynccontextmanager
async def serving(script: Script, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[ConnectionPool, str, list[int]]]:
    """`serve`, with a pool to its URL; both closed at the end, however the test ends."""
    server, url, connections = await serve(script, tls)
    pool = ConnectionPool(url, {})
    try:
        yield pool, url, connections
    finally:
        pool.close()
        server.close()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def test_a_kept_alive_connection_the_server_dropped_unanswered_is_called_again_on_a_fresh_one():
    async def main() -> None:
        # answers the first request of each connection, then drops the connection at the next
        # one without a byte (a server whose keep-alive ran out as the call went out)
        async def script(data: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
            if n > 1:
                return False
            writer.write(ok(b'{"score": 1}'))
            await writer.drain()
            return True

        async with serving(script) as (pool, _, connections):
            for _ in range(5):
                answer = await pool.post(b"{}", 5.0)
                assert (answer.status, answer.body) == (200, b'{"score": 1}')
            assert len(connections) >= 5  # each call after the first was retried on a new connection

    run(main())


def test_a_connection_that_drops_before_answering_a_first_call_is_an_error_not_a_retry():
    async def main() -> None:
        async def script(data: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
            return False

        async with serving(script) as (pool, _, connections):
            with pytest.raises(ConnectionFailed, match="closed the connection"):
                await pool.post(b"{}", 5.0)
            assert len(connections) == 1  # a fresh connection: the model may have seen the call

    run(main())


def test_answers_without_a_length_chunked_or_with_retry_after_are_read_whole():
    async def main() -> None:
        answers = [
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + b"[1, 2, 3]",  # until close
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[4, \r\n3\r\n5, \r\n2\r\n6]\r\n0\r\n\r\n",
            ok(b"busy", "Retry-After: 2\r\n").replace(b"200 OK", b"429 Too Many Requests"),
        ]

        async def script(data: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            return not answer.startswith(b"HTTP/1.0")

        async with serving(script) as (pool, _, _):
            first, second, third = [await pool.post(b"{}", 5.0) for _ in range(3)]
            assert first.body == b"[1, 2, 3]"
            assert second.body == b"[4, 5, 6]"
            assert (third.status, third.body, third.retry_after) == (429, b"busy", "2")

    run(main())


def test_a_truncated_answer_or_garbage_is_a_connection_failure_not_a_short_body():
    async def main() -> None:
        async def truncated(data: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n" + b'{"score"')
            await writer.drain()
            return False

        async def garbage(data: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
            writer.write(b"\x00\x01 not http at all\r\n\r\n")
            await writer.drain()
            return True

        for script, reason in ((truncated, "closed the connection"), (garbage, "not an HTTP answer")):
            async with serving(script) as (pool, _, _):
                with pytest.raises(ConnectionFailed, match=reason):
                    await pool.post(b"{}", 5.0)

    run(main())


def test_an_answer_that_comes_after_the_timeout_is_never_taken_for_the_next_calls():
    async def main() -> None:
        release = asyncio.Event()

        async def script(data: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
            body = data.split(b"\r\n\r\n", 1)[1]
            if body == b"slow":
                await release.wait()  # answers only once the next call went out
            writer.write(ok(body))
            await writer.drain()
            return True

        async with serving(script) as (pool, _, connections):
            with pytest.raises(TimeoutError):
                await pool.post(b"slow", 0.2)
            release.set()
            for body in (b"a", b"b", b"c"):
                assert (await pool.post(body, 5.0)).body == body
            assert len(connections) == 2  # the timed-out connection was closed, not kept

    run(main())


def test_credentials_in_the_url_are_sent_as_basic_auth_and_headers_cannot_inject_lines():
    async def main() -> None:
        seen: list[bytes] = []

        async def script(data: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
            seen.append(data)
            writer.write(ok(b"1"))
            await writer.drain()
            return True

        headers = {"Content-Type": "application/json", "X-Team": "risk", "content-type": "application/x-ndjson"}
        async with serving(script) as (_, url, _):
            pool = ConnectionPool(url.replace("http://", "http://svc:p%40ss@") + "?v=1", headers)
            await pool.post(b'{"x": 1}', 5.0)
            pool.close()
        head = seen[0].split(b"\r\n\r\n")[0].decode()
        assert head.startswith("POST /predict?v=1 HTTP/1.1\r\n")
        assert "Authorization: Basic c3ZjOnBAc3M=" in head  # svc:p@ss
        assert "X-Team: risk" in head
        assert "Content-Length: 8" in head
        # a name given again in another case replaces the first: one content type is sent
        assert head.lower().count("content-type") == 1
        assert "content-type: application/x-ndjson" in head

    run(main())
    with pytest.raises(ValueError, match="line break"):
        ConnectionPool("http://127.0.0.1:1/p", {"X-Evil": "a\r\nHost: elsewhere"})


def test_a_refused_connection_is_a_connection_failure():
    async def main() -> None:
        server, url, _ = await serve(lambda data, writer, n: asyncio.sleep(0, False))
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionFailed, match="cannot connect"):
            await ConnectionPool(url, {}).post(b"{}", 5.0)

    run(main())


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (cryptography comes with evidently and moto)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "model.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "model.pem", folder / "model.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_https_calls_check_the_servers_certificate_against_the_trusted_ones(tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def main() -> None:
        async def script(data: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
            writer.write(ok(b'{"score": 0.5}'))
            await writer.drain()
            return True

        async with serving(script, tls) as (untrusting, url, _):
            # a certificate no trusted authority signed: refused, as any TLS client refuses it
            with pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.post(b"{}", 5.0)
            # trusted the way OpenSSL is told of a private CA: SSL_CERT_FILE
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
            pool = ConnectionPool(url, {})
            for _ in range(3):  # kept alive over TLS too
                assert (await pool.post(b"{}", 5.0)).body == b'{"score": 0.5}'
            pool.close()

    run(main())
