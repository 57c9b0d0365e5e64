"""Real model servers on loopback, each from its own virtualenv (scripts/model-servers.sh):
MLServer with its default scikit-learn runtime, KServe's Python model server,
`mlflow models serve` and NVIDIA Triton (the binary PyTriton ships). Each fits the tests'
pipeline itself (tests/servers/fit_pipeline.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVERS = Path(os.environ.get("SHADOWDIFF_SERVERS_HOME", ROOT / ".servers"))
SCRIPTS = ROOT / "tests" / "servers"


def venv(name: str) -> Path:
    """The server's virtualenv; skips the test when it is not installed, except in CI, where
    .ci/run installs them and a missing one is a failure."""
    home = SERVERS / name
    if not (home / ".complete").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{home} missing: run scripts/model-servers.sh install")
        pytest.skip(f"{name} not installed (scripts/model-servers.sh install)")
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _process(cmd: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 180  # a first start imports a whole web and ML stack
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ready_url} not ready in 180 s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)  # polling a condition: the server's readiness
        yield
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _fit(python: Path, out: Path, *flags: str) -> Path:
    subprocess.run([str(python), str(SCRIPTS / "fit_pipeline.py"), str(out), *flags], check=True, timeout=300)
    return out


@contextmanager
def mlserver(tmp: Path, settings: dict[str, object] | None = None) -> Iterator[str]:
    """MLServer with its default scikit-learn runtime: no content type in the model settings.
    Yields the model's infer URL."""
    home = venv("mlserver")
    root = tmp / "mlserver"
    (root / "churn").mkdir(parents=True)
    _fit(home / "bin" / "python", root / "churn" / "model.joblib")
    (root / "churn" / "model-settings.json").write_text(
        json.dumps({"name": "churn", "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib"}})
    )
    port = free_port()
    server = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "host": "127.0.0.1", **(settings or {})}
    (root / "settings.json").write_text(json.dumps(server))
    base = f"http://127.0.0.1:{port}/v2/models/churn"
    with _process([str(home / "bin" / "mlserver"), "start", str(root)], f"{base}/ready", tmp / "mlserver.log"):
        yield f"{base}/infer"


@contextmanager
def kserve(tmp: Path) -> Iterator[str]:
    """KServe's Python model server with the numeric model ([n, 2] tensor of x, y)."""
    home = venv("kserve")
    model = _fit(home / "bin" / "python", tmp / "kserve.joblib", "--numeric")
    port = free_port()
    base = f"http://127.0.0.1:{port}/v2/models/churn"
    cmd = [str(home / "bin" / "python"), str(SCRIPTS / "kserve_churn.py"), "--model", str(model), "--port", str(port)]
    with _process(cmd, f"{base}/ready", tmp / "kserve.log"):
        yield f"{base}/infer"


@contextmanager
def mlflow(tmp: Path) -> Iterator[str]:
    """`mlflow models serve` of a pyfunc model answering {"churn_probability": p}."""
    home = venv("mlflow")
    python = home / "bin" / "python"
    model = tmp / "mlflow-model"
    subprocess.run(
        [str(python), str(SCRIPTS / "mlflow_churn.py"), str(_fit(python, tmp / "mlflow.joblib")), str(model)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    port = free_port()
    # the scoring server is started as `uvicorn ...` from PATH: the venv's must come first
    env = {**os.environ, "PATH": f"{home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(home / "bin" / "mlflow"), "models", "serve", "-m", str(model), "-p", str(port), "-h", "127.0.0.1"]
    with _process([*cmd, "--env-manager", "local"], f"http://127.0.0.1:{port}/ping", tmp / "mlflow.log", env):
        yield f"http://127.0.0.1:{port}/invocations"


@contextmanager
def triton(tmp: Path) -> Iterator[str]:
    """NVIDIA Triton Inference Server with the numeric model behind its Python backend
    (tests/servers/triton_churn.py): Triton checks each request's input name and type against
    the model's configuration (`input__0`, FP32, [n, 2])."""
    home = venv("triton")
    python = home / "bin" / "python"
    model = _fit(python, tmp / "triton.joblib", "--numeric")
    port = free_port()
    base = f"http://127.0.0.1:{port}/v2/models/churn"
    ports = ["--port", str(port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
    # Triton's Python-backend stub links libpython3.11 from the system's library path; it must be
    # the library of the interpreter whose standard library the virtualenv uses
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))}
    cmd = [str(python), str(SCRIPTS / "triton_churn.py"), "--model", str(model), *ports]
    with _process(cmd, f"{base}/ready", tmp / "triton.log", env):
        yield f"{base}/infer"
