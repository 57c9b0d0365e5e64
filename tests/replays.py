"""`shadowdiff replay` (and other commands) in child processes for the drills, their stderr lines
collected as they come; tests/conftest.py kills any a failed test left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
PYTHONPATH = f"{ROOT}{os.pathsep}{ROOT / 'tests'}"

STARTED: list[subprocess.Popen[str]] = []


class Replay:
    """`shadowdiff replay` in a child process, its stderr lines collected as they come."""

    def __init__(self, cfg: Path | None = None, args: list[str] | None = None) -> None:
        """`shadowdiff replay --config cfg --no-judge`, or `shadowdiff <args>`."""
        argv = args if args is not None else ["replay", "--config", str(cfg), "--no-judge"]
        cmd = [sys.executable, "-m", "shadowdiff.cli.main", *argv]
        env = {**os.environ, "PYTHONPATH": PYTHONPATH}  # read now: a fixture may have set credentials
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        STARTED.append(self.proc)
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")), daemon=True).start()

    def until(self, condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
        """wait_until, failing at once if the replay exits, and showing its last lines."""

        def check() -> Any:
            if self.proc.poll() is not None:
                raise AssertionError(f"the replay exited ({self.proc.returncode}) before {what}:\n" + "".join(self.lines[-30:]))
            return condition()

        try:
            return wait_until(check, timeout_s, what)
        except AssertionError as err:
            raise AssertionError(f"{err}\nreplay's last lines:\n" + "".join(self.lines[-30:])) from None

    def line(self, text: str, timeout_s: float) -> str:
        return self.until(lambda: next((x for x in self.lines if text in x), None), timeout_s, repr(text))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(120) == 0, "".join(self.lines[-40:])
