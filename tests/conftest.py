"""Shared fixtures: the read-only data in ../shared/data (CI lays it beside the clone)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


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


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server over HTTP on loopback, stopped after the test."""
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    wait_for_http(f"{uri}/health", server, tmp_path / "mlflow-server.log")
    yield uri
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    log.close()


POSTGRES = "postgresql://root@127.0.0.1:5432/test"
