"""HTTP model calls made from a child process, which has a GIL of its own.

Why: each call costs Python time (`transport.py`), one call per row. On the replay's event loop
those calls share one GIL with the Kafka reads, the batch glue and the DuckDB hand-offs; in a
child process they get a core of their own (`bench/replay_bench.py --sections http` compares
both). The measured latencies are truer too: a call's answer is not left waiting while the
replay's thread parses Kafka records.

The child runs the unchanged `HttpModel` (retries, backoff, circuit breaker, latency measured
around each call). Over a socket pair, the parent sends `(batch id, JSON texts of the inputs)`
and gets back `(batch id, one CallResult per input)`; `None` from the parent means close.

If the child is lost (killed, crashed), the batches it held and every later one are called
from the replay's own event loop instead: a lost worker is shadowdiff's failure, not the
candidate's, so it must not show up as the candidate's errors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from shadowdiff.replay.models.base import CallResult
from shadowdiff.replay.models.http import HttpModel
from shadowdiff.schemas.config import REVEAL_SECRETS, ModelSpec

log = logging.getLogger(__name__)

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # where `replay` and `schemas` live
_CLOSE_TIMEOUT_S = 30.0
_START_TIMEOUT_S = 60.0
_READY = b"ready"

_Pending = tuple[asyncio.AbstractEventLoop, "asyncio.Future[list[CallResult] | None]"]


class ProcessHttpModel:
    """An HTTP model client whose calls run in a child process (`call_process = true`)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.model_version = spec.model_version
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._lost: str | None = None
        self._fallback: HttpModel | None = None
        self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"shadowdiff-send-{spec.name}")
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", "shadowdiff.replay.models.call_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except OSError as err:
            self._proc = None
            self._lost = f"could not start the call process: {err}"
            log.warning("model %s: %s; calling from the replay's event loop", spec.name, self._lost)
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self._reader: threading.Thread | None = None
        if self._proc is not None:
            try:
                # wait until the child has imported its client and built it:
                # setup, so a run's first batch does not wait for it, and a child that cannot
                # start is known before anything is consumed
                # the child needs the real headers and URL: the one place a spec leaves unredacted
                self._conn.send_bytes(spec.model_dump_json(context={REVEAL_SECRETS: True}).encode())
                if not self._conn.poll(_START_TIMEOUT_S) or self._conn.recv_bytes() != _READY:
                    raise OSError(f"no answer in {_START_TIMEOUT_S:.0f} s")
            except (OSError, EOFError) as err:
                self._proc.kill()
                self._lose(f"the call process did not start: {err}")
            self._reader = threading.Thread(target=self._read, name=f"shadowdiff-recv-{spec.name}", daemon=True)
            self._reader.start()

    async def predict(self, inputs: list[dict[str, Any]]) -> list[CallResult]:
        return await self.predict_json([orjson.dumps(x) for x in inputs])

    async def predict_json(self, texts: Sequence[str | bytes]) -> list[CallResult]:
        """One result per input (each the JSON text of one input object), in order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[CallResult] | None] = loop.create_future()
        with self._lock:
            sent = self._lost is None
            if sent:
                batch_id = self._next_id
                self._next_id += 1
                self._pending[batch_id] = (loop, future)
        if sent:
            try:
                # pickling and writing a batch (~6 MB for 20k inputs) would stall the calls of
                # this event loop; the sender thread does it
                await loop.run_in_executor(self._sender, self._conn.send, (batch_id, list(texts)))
            except OSError as err:
                self._lose(f"sending a batch failed: {err}")
            results = await future
            if results is not None:
                return results
        return await self._in_process().predict([orjson.loads(t) for t in texts])

    def _in_process(self) -> HttpModel:
        if self._fallback is None:
            self._fallback = HttpModel(self.spec)
        return self._fallback

    def _read(self) -> None:
        """Reader thread: hand each batch's results to the loop that waits for them."""
        try:
            while True:
                batch_id, results = self._conn.recv()
                with self._lock:
                    loop, future = self._pending.pop(batch_id)
                loop.call_soon_threadsafe(_resolve, future, results)
        except (EOFError, OSError) as err:
            code = self._proc.poll() if self._proc is not None else None
            self._lose(f"the call process ended (exit code {code}): {type(err).__name__}")
        except Exception as err:  # a garbled message: the child cannot be trusted with more
            if self._proc is not None:
                self._proc.kill()
            self._lose(f"unreadable answer from the call process: {type(err).__name__}: {err}")

    def _lose(self, why: str) -> None:
        """From now on every batch, including those in the child, is called in-process."""
        with self._lock:
            first = self._lost is None
            self._lost = self._lost or why
            pending, self._pending = self._pending, {}
        if first:
            log.warning("model %s: %s; calling from the replay's event loop", self.name, why)
        for loop, future in pending.values():
            loop.call_soon_threadsafe(_resolve, future, None)

    async def close(self) -> None:
        if self._fallback is not None:
            await self._fallback.close()
        with self._lock:
            closing = self._lost is None
            self._lost = self._lost or "closed"
        if closing:
            with contextlib.suppress(OSError):  # via the sender thread: never inside a batch's bytes
                await asyncio.get_running_loop().run_in_executor(self._sender, self._conn.send, None)
        if self._proc is not None:
            try:
                await asyncio.to_thread(self._proc.wait, _CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                await asyncio.to_thread(self._proc.wait)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, _CLOSE_TIMEOUT_S)  # ends on the child's EOF
        self._conn.close()
        self._sender.shutdown()


def _resolve(future: asyncio.Future[list[CallResult] | None], results: list[CallResult] | None) -> None:
    if not future.done():
        future.set_result(results)


# -- the child process ---------------------------------------------------------------------------


async def _serve(conn: Connection, spec: ModelSpec) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def receive() -> None:
        try:
            while True:
                loop.call_soon_threadsafe(inbox.put_nowait, conn.recv())
        except Exception:  # the parent is gone (EOF) or garbled a message: finish and exit
            loop.call_soon_threadsafe(inbox.put_nowait, None)

    def send() -> None:
        try:
            while (item := outbox.get()) is not None:
                conn.send(item)
        except OSError:
            pass

    threading.Thread(target=receive, name="shadowdiff-calls-recv", daemon=True).start()
    sender = threading.Thread(target=send, name="shadowdiff-calls-send")
    sender.start()
    model = HttpModel(spec)
    conn.send_bytes(_READY)

    async def call(batch_id: int, texts: list[str | bytes]) -> None:
        results: list[CallResult] | None
        try:
            inputs: list[Any] = []
            for i in range(0, len(texts), 1000):  # parsed in slices: calls in flight keep being served
                inputs += [orjson.loads(t) for t in texts[i : i + 1000]]
                await asyncio.sleep(0)
            results = await model.predict(inputs)
        except Exception:  # never leave the parent waiting: it calls this batch itself
            log.exception("model %s: a batch failed in the call process", spec.name)
            results = None
        outbox.put((batch_id, results))

    tasks: set[asyncio.Task[None]] = set()
    while (message := await inbox.get()) is not None:
        task = loop.create_task(call(*message))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    await model.close()
    outbox.put(None)
    await asyncio.to_thread(sender.join)


def main(fd: int) -> None:
    # Ctrl-C and SIGTERM reach the whole process group; the replay finishes its batch on them,
    # so this process keeps calling until the replay closes the connection
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # the replay's format, on the stderr both share: a model's outage reads the same from either
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conn = Connection(fd)
    spec = ModelSpec.model_validate_json(conn.recv_bytes())
    asyncio.run(_serve(conn, spec))


if __name__ == "__main__":
    main(int(sys.argv[1]))
