"""Shared fixtures: the read-only data in ../shared/data (CI lays it beside the clone)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Wait until `url` answers; fail with the server's log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server at {url} did not start: {log.read_text()[-3000:]}")
            time.sleep(0.5)


class MlflowServer:
    """`mlflow server` on a fixed loopback port, which a test can stop and start again."""

    def __init__(self, backend: str, artifacts: Path, log: Path, serve_artifacts: bool = False) -> None:
        self.port, self.log_path = free_port(), log
        self.uri = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                     "--backend-store-uri", backend, "--artifacts-destination", str(artifacts), "--workers", "1",
                     *(["--serve-artifacts"] if serve_artifacts else [])]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_http(f"{self.uri}/health", self.process, self.log_path)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server over HTTP on loopback, stopped after the test."""
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts", tmp_path / "mlflow-server.log")
    server.start()
    yield server.uri
    server.stop()


POSTGRES = "postgresql://root@127.0.0.1:5432/test"


@functools.cache
def _run_search_module():
    """run_search.py as a module (it is a script, not in a package), loaded once."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_search_cli", Path(__file__).resolve().parents[1] / "run_search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`run_search.py ARGS` run in this process: its exit code, stdout and stderr.

    For refusals that end before Ray starts. A fresh interpreter costs about 5 s of imports (torch,
    MLflow) per call, and these tests make dozens of calls; the tests that must see a real process
    (the exit status, what reaches the console through loggers) still start one.
    """
    import contextlib
    import io

    cli = _run_search_module()
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(env or {})
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = cli.main(list(args))
            except SystemExit as exit:  # argparse's refusals
                code = exit.code if isinstance(exit.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["run_search.py", *args], code, stdout.getvalue(), stderr.getvalue())
