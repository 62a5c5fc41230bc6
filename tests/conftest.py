"""What the tests share: the data in ../shared/data, one set of reduced-search settings, the ways to
run the command line (in this process or a fresh one), real servers on loopback, and the checks
every refusal must pass. Test modules import from here, never from each other.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"
POSTGRES = "postgresql://root@127.0.0.1:5432/test"

# The one reduced search of the end-to-end tests: the quickstart at a size a CPU runs in a minute.
REDUCED = [
    "data.train_size=160",
    "data.test_size=60",
    "data.conflicts_per_pair=2",
    "training.epochs=2",
    "training.batch_size=16",
    "seeds=[0, 1]",
    "concurrency=2",
    # Models this small name a cue on fewer conflicts than the shipped floor asks; the floor has a
    # test of its own (test_distinct_e2e.py).
    "constraints={}",
]
TINY = [*REDUCED, "seeds=[0]", "configurations=2"]  # the same with one seed and one proposed configuration
# One trial (no Ray, no search) of the same kind, for the trainables' tests.
TINY_TRIAL = {
    "data": {"kind": "synthetic", "train_size": 96, "test_size": 30, "conflicts_per_pair": 2, "image_size": 32},
    "model": {"stem": "imagenet", "topk": {"layer1": 0.2}},
    "training": {"epochs": 3, "batch_size": 16, "lr": 0.02, "threads": 1},
    "seed": 7,
}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


# --- the command line ---------------------------------------------------------------------------


@functools.cache
def _run_search_module() -> ModuleType:
    """run_search.py as a module (it is a script, not in a package), loaded once."""
    spec = importlib.util.spec_from_file_location("run_search_cli", ROOT / "run_search.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`run_search.py ARGS` run in this process: its exit code, stdout and stderr.

    For refusals that end before Ray starts. A fresh interpreter costs about 5 s of imports (torch,
    MLflow) per call, and these tests make dozens of calls; the tests that must see a real process
    (the exit status, what reaches the console through loggers) still start one.
    """
    return _in_process("run_search", args, cwd, env)


def _in_process(
    program: str, args: tuple[str, ...], cwd: Path, env: dict[str, str] | None
) -> subprocess.CompletedProcess[str]:
    """`program`'s main(ARGS) in this process, in `cwd` and `env`, as a finished process would report it."""
    main = _run_search_module().main if program == "run_search" else importlib.import_module(program).main
    from trainables.data import clear_caches

    clear_caches()  # as a fresh process: no folder or stimuli decoded by an earlier call
    threads = torch.get_num_threads()  # the trial command sets its own count; the next test gets ours back
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(env or {})
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(list(args))
            except SystemExit as exit:  # argparse's refusals
                code = exit.code if isinstance(exit.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess([program, *args], code, stdout.getvalue(), stderr.getvalue())


def _command_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A user's environment for a fresh process: the project importable, no inherited tracking URI."""
    merged = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if "MLFLOW_TRACKING_URI" not in (env or {}):
        merged.pop("MLFLOW_TRACKING_URI", None)
    return merged


def cli(
    *args: str,
    cwd: Path,
    module: str | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    fresh: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run run_search.py (or `python -m module`) as a user would, with no terminal on stdin.

    A refusal of run_search.py runs in this process (`run_main`) unless `fresh`: a test that must
    see a real process, or that reaches Ray, asks for one.
    """
    if module is None and not fresh:
        return run_main(*args, cwd=cwd, env=env)
    if module == "trainables.trial" and not fresh:
        return _in_process("trainables.trial", args, cwd, env)
    command = [sys.executable, "-m", module] if module else [sys.executable, str(ROOT / "run_search.py")]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=_command_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_search(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`run_search.py ARGS` in a fresh process to its end, as CI runs it (no terminal on stdin)."""
    return cli(*args, cwd=cwd, timeout=timeout, fresh=True)


def popen_search(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """`run_search.py ARGS` started in the background (to be signalled or killed), output piped."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run_search.py"), *args],
        cwd=cwd,
        env=_command_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- what every refusal must be -------------------------------------------------------------------


def assert_one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit code 2, no traceback, one line on stderr starting `error: ` and holding every needle."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, f"exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, out.stderr[-3000:]
    assert len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("error: ") and len(lines[0]) < 2500, lines[0][:3000]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_nothing_written(cwd: Path) -> None:
    """A start refused before Ray: no parent run in MLflow, no Ray experiment folder."""
    from mlflow.tracking import MlflowClient

    database = cwd / "mlflow.db"
    if database.exists():
        client = MlflowClient(f"sqlite:///{database}")
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        assert runs == [], [r.info.run_name for r in runs]
    assert not (cwd / "ray_results").exists() or not any((cwd / "ray_results").iterdir())


def search_runs(client: Any, experiment: str = "sparse-shape-search-quickstart") -> tuple[list[Any], list[Any]]:
    """(parent runs, child runs) of an MLflow experiment."""
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    parents = [r for r in runs if "search_id" in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll `predicate` each second until true; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(1)


# --- servers on loopback --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


def wait_for_http(url: str, server: subprocess.Popen[Any], log: Path, timeout: float = 120) -> None:
    """Wait until `url` answers; fail with the server's log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server at {url} did not start: {log.read_text()[-3000:]}") from None
            time.sleep(0.5)


class MlflowServer:
    """`mlflow server` on a fixed loopback port, which a test can stop and start again."""

    def __init__(self, backend: str, artifacts: Path, log: Path, serve_artifacts: bool = False) -> None:
        self.port, self.log_path = free_port(), log
        self.uri = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(artifacts),
            "--workers",
            "1",
            *(["--serve-artifacts"] if serve_artifacts else []),
        ]
        self.process: subprocess.Popen[bytes] | None = None

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
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real MLflow tracking server over HTTP on loopback, stopped after the test."""
    server = MlflowServer(
        f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts", tmp_path / "mlflow-server.log"
    )
    server.start()
    yield server.uri
    server.stop()


# --- models: Top-K as the authors wrote it, spliced into torchvision's own networks --------------


def reference_topk(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Top-K from the definition, as the authors wrote it: topk of |x| per channel, a scattered mask."""
    n, c, h, w = x.shape
    k = max(1, int(fraction * h * w))
    flat = x.flatten(2)
    mask = torch.zeros_like(flat).scatter(-1, flat.abs().topk(k, dim=-1).indices, 1.0)
    return (flat * mask).view_as(x)


class Spliced(torch.nn.Module):
    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = fraction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference_topk(x, self.fraction)


def spliced_by_hand(arch: str, state: dict[str, torch.Tensor], topk: dict[str, float]) -> torch.nn.Module:
    """The torchvision model with Top-K modules inserted after the named modules of its Sequentials."""
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    model.load_state_dict(state)
    if arch.startswith("resnet"):
        for name, fraction in topk.items():
            setattr(model, name, torch.nn.Sequential(getattr(model, name), Spliced(fraction)))
    else:
        layers = []
        for i, layer in enumerate(model.features):
            layers.append(layer)
            if f"features.{i}" in topk:
                layers.append(Spliced(topk[f"features.{i}"]))
        model.features = torch.nn.Sequential(*layers)
    return model.eval()
