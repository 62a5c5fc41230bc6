"""Trials per hour of the same search on a 1-node and on a 2-node Ray cluster, side by side.

Starts each cluster as users do (`ray start --head`, then `ray start --address=...` for the second
node; token authentication on, 1 CPU per node, all on this machine: Ray swaps 127.0.0.1 for the
machine's own address), and one MLflow tracking server over HTTP that both runs write to (a
multi-node cluster refuses a file store). On each cluster it runs the same reduced quickstart
search in-process (`orchestrator.search.driver.run_search`): N configurations x 2 seeds, random sampler
with a fixed seed (so both runs train the same configurations), 2 trials at a time, each trial
about 10 s of single-threaded training. Trials per hour = finished trials / search wall time x
3600; the child runs' `ray_node_id` tags show how many nodes trained. Clusters and server are torn
down whatever happens, and the checkpoints (about 2 GB) deleted; the MLflow database and logs stay
in the printed workdir. The machine is noisy, so the two clusters alternate over `--rounds` rounds
(1, 2, then 2, 1, ...: drift over time hits both alike) and each round gives one 2-node / 1-node
ratio. The last line is the median ratio; 2.0 is perfect scaling.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.search.driver import run_search
from orchestrator.tracking import child_runs, experiment_id
from search_spaces.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def ray_env() -> dict[str, str]:
    """The environment of `ray start` and `ray status`: token authentication on, with main()'s token."""
    return {**os.environ, "RAY_AUTH_MODE": "token"}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(ready: Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Poll `ready` each second; fail with the tail of `log` if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.name}: did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(1)


def answers(url: str) -> bool:
    """Whether `url` answers an HTTP GET."""
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except OSError:
        return False


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process's whole session (it was started with start_new_session) and wait for it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def mlflow_server(workdir: Path) -> Iterator[str]:
    """`mlflow server` on loopback (SQLite behind it, artifacts served over HTTP); yields its URI."""
    port, log = free_port(), workdir / "mlflow-server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                f"sqlite:///{workdir}/mlflow.db",
                "--serve-artifacts",
                "--artifacts-destination",
                str(workdir / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            uri = f"http://127.0.0.1:{port}"
            wait_until(lambda: answers(f"{uri}/health"), server, log)
            yield uri
        finally:
            stop(server)


def has_nodes(port: int, nodes: int) -> bool:
    """Whether the cluster at `port` has at least `nodes` live nodes."""
    return live_nodes(port) >= nodes


def live_nodes(port: int) -> int:
    """How many nodes `ray status` lists as active on the cluster at 127.0.0.1:port."""
    status = subprocess.run(
        [RAY, "status", f"--address=127.0.0.1:{port}"], env=ray_env(), capture_output=True, text=True
    ).stdout
    return status.split("Active:", 1)[-1].split("Pending:", 1)[0].count("node_")


def processes_under(temp_dir: str) -> list[int]:
    """Pids of processes whose command line names `temp_dir` (every Ray process of the cluster does)."""
    found = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


@contextlib.contextmanager
def ray_cluster(nodes: int, logs: Path) -> Iterator[str]:
    """A Ray cluster of `nodes` nodes with 1 CPU each, started with `ray start --block`; yields its address."""
    temp_dir = tempfile.mkdtemp(prefix="rays-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    port = free_port()
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    started: list[subprocess.Popen] = []
    try:
        for i in range(nodes):
            log = logs / f"{nodes}nodes-node{i}.log"
            role = (
                ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"]
                if i == 0
                else [f"--address=127.0.0.1:{port}"]
            )
            with open(log, "w") as out:
                started.append(
                    subprocess.Popen(
                        [RAY, "start", *role, *common],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        env=ray_env(),
                    )
                )
            wait_until(functools.partial(has_nodes, port, i + 1), started[-1], log)
        yield f"127.0.0.1:{port}"
    finally:
        for process in reversed(started):
            stop(process)
        deadline = time.monotonic() + 30
        while processes_under(temp_dir) and time.monotonic() < deadline:
            time.sleep(1)
        for pid in processes_under(temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def search(
    nodes: int, address: str, tracking_uri: str, workdir: Path, configurations: int, round_: int
) -> dict[str, float]:
    """Run the reduced search on the cluster at `address`; its trials, wall time and nodes that trained."""
    rundir = workdir / f"round{round_}-{nodes}node"
    rundir.mkdir()
    os.chdir(rundir)  # run_search writes the Pareto front's files here
    experiment = f"scaling-round{round_}-{nodes}node"
    spec = load_spec(
        ROOT / "search_spaces" / "quickstart.yaml",
        [
            "name=scaling",
            f"configurations={configurations}",
            "seeds=[0, 1]",
            "concurrency=2",
            "data.image_size=32",
            "data.train_size=1200",
            "data.test_size=60",
            "data.conflicts_per_pair=1",
            "training.epochs=2",
            "training.batch_size=32",
            "sampler=random",
            f"address={address}",
            f"tracking_uri={tracking_uri}",
            f"optuna_storage=sqlite:///{rundir}/optuna.db",
            f"storage_path={workdir}/ray_results",
            f"experiment={experiment}",
        ],
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = run_search(spec)
    wall = time.perf_counter() - start

    client = MlflowClient(tracking_uri)
    runs = child_runs(client, experiment_id(client, experiment), outcome.parent_run_id)
    done = [r for r in runs if r.info.status == "FINISHED"]
    # From the first trial's start to the last one's end; the rest of the wall time is fixed cost.
    span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000 if runs else 0.0
    return {
        "nodes": nodes,
        "trials": len(done),
        "wall": wall,
        "per_hour": len(done) / wall * 3600,
        "trained_on": len({r.data.tags.get("ray_node_id") for r in done}),
        "outside": wall - span,
        "trial_s": sum((r.info.end_time - r.info.start_time) / 1000 for r in done) / max(1, len(done)),
    }


def main() -> None:
    """Measure both clusters, alternating over rounds, and print the comparison; the median ratio is the last line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configurations", type=int, default=6, help="configurations (x 2 seeds = trials)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each one search on each cluster")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="scaling-"))
    # A token of our own (`ray start --head` creates none; ~/.ray/auth_token is left alone). The driver
    # finds it and turns token authentication on itself, as it does for users who only set address.
    os.environ["RAY_AUTH_TOKEN"] = uuid.uuid4().hex
    rounds: list[dict[int, dict[str, float]]] = []
    try:
        with mlflow_server(workdir) as tracking_uri:
            for round_ in range(args.rounds):
                order = (1, 2) if round_ % 2 == 0 else (2, 1)
                results = {}
                (workdir / f"round{round_}-logs").mkdir()
                for nodes in order:
                    with ray_cluster(nodes, workdir / f"round{round_}-logs") as address:
                        results[nodes] = search(nodes, address, tracking_uri, workdir, args.configurations, round_)
                    shutil.rmtree(workdir / "ray_results", ignore_errors=True)  # the checkpoints: about 1 GB a search
                rounds.append(results)
    finally:
        shutil.rmtree(workdir / "ray_results", ignore_errors=True)
    for round_, results in enumerate(rounds):
        for r in results.values():
            print(
                f"round {round_ + 1}, {r['nodes']} node(s), 1 CPU each: {r['trials']} trials in "
                f"{r['wall']:.1f} s wall = "
                f"{r['per_hour']:.0f} trials/hour; mean trial {r['trial_s']:.1f} s; {r['outside']:.1f} s outside "
                f"trials; trained on {r['trained_on']} distinct ray_node_id(s)"
            )
    ratios = [r[2]["per_hour"] / r[1]["per_hour"] for r in rounds]
    slowdown = statistics.median(r[2]["trial_s"] / r[1]["trial_s"] for r in rounds)
    outside = statistics.median(r[2]["outside"] for r in rounds)
    print(f"workdir {workdir} (MLflow database, node and server logs)")
    print(
        f"limit: {os.cpu_count()} cores carry both nodes' trials plus the driver, Ray's GCS, raylets and agents "
        f"and the MLflow server, so a trial took {slowdown:.2f}x as long two at a time "
        f"(perfect: 1.00); and the ~{outside:.0f} s per search outside trials (joining Ray, first worker, "
        "report) does not shrink with nodes"
    )
    print(
        f"2-node / 1-node trials per hour, per round: {', '.join(f'{r:.2f}' for r in ratios)} "
        f"(range {min(ratios):.2f} to {max(ratios):.2f})"
    )
    print(f"two_over_one_node: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
