"""A real two-node Ray cluster on loopback, started as users start theirs (`ray start`, token
authentication on), with an MLflow tracking server on PostgreSQL that workers reach over HTTP;
and what the search does when a node, the driver or the tracking server is lost."""

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from mlflow.tracking import MlflowClient

from conftest import (
    POSTGRES,
    QUICKSTART,
    TINY,
    MlflowServer,
    assert_nothing_written,
    assert_one_line_error,
    cli,
    free_port,
    popen_search,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
RAY = str(Path(sys.executable).with_name("ray"))


class RayCluster:
    """A head and a second node on loopback, 1 CPU each, each owned by its own `ray start --block`."""

    def __init__(self, logs: Path) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
        self.port, self.logs = free_port(), logs
        self.address = f"127.0.0.1:{self.port}"
        # Token authentication, as Ray 2.60 recommends: `ray start --head` turns it on only when it
        # finds a token (RAY_AUTH_TOKEN, or ~/.ray/auth_token, which a fresh machine lacks).
        self.token = secrets.token_hex(32)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.nodes: list[subprocess.Popen] = []

    def start(self) -> None:
        self._start(
            "head", ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}"]
        )
        self._wait(lambda: self._active_nodes() >= 1, "head")
        self._start("node", [f"--address={self.address}"])
        self._wait(lambda: self._active_nodes() >= 2, "node")

    def _start(self, name: str, args: list[str]) -> None:
        # --block keeps `ray start` in the foreground, owning its node's processes.
        with open(self.logs / f"{name}.log", "w") as log:
            self.nodes.append(
                subprocess.Popen(
                    [
                        RAY,
                        "start",
                        "--block",
                        "--node-ip-address=127.0.0.1",
                        "--num-cpus=1",
                        "--num-gpus=0",
                        "--disable-usage-stats",
                        *args,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=self.env,
                )
            )

    def _wait(self, ready, name: str) -> None:
        deadline = time.monotonic() + 120
        while not ready():
            assert self.nodes[-1].poll() is None and time.monotonic() < deadline, (
                self.logs / f"{name}.log"
            ).read_text()[-3000:]
            time.sleep(1)

    def _active_nodes(self) -> int:
        status = subprocess.run(
            [RAY, "status", f"--address={self.address}"], env=self.env, capture_output=True, text=True
        ).stdout
        return status.split("Active:", 1)[-1].split("Pending:", 1)[0].count("node_")

    def node_id(self, index: int) -> str:
        """The Ray node id of node `index` (0 is the head), read from its raylet's command line."""
        for pid in _descendants(self.nodes[index].pid):
            argv = _argv(pid)
            if argv and argv[0].endswith("raylet"):
                return next(a.split("=", 1)[1] for a in argv if a.startswith("--node_id="))
        raise AssertionError(f"node {index} has no raylet")

    def kill(self, index: int) -> None:
        """Lose node `index` as a machine is lost: SIGKILL every process it runs, no goodbye."""
        node = self.nodes[index]
        for pid in [node.pid, *_descendants(node.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.wait(timeout=30)

    def processes(self) -> list[int]:
        found = subprocess.run(["pgrep", "-f", self.temp_dir], capture_output=True, text=True).stdout.split()
        return [int(pid) for pid in found]

    def stop(self) -> None:
        """Stop every node and check that no Ray process outlives the cluster."""
        for node in reversed(self.nodes):
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
                node.wait(timeout=60)
        deadline = time.monotonic() + 30
        while self.processes() and time.monotonic() < deadline:
            time.sleep(1)
        left = self.processes()
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        assert not left, f"Ray processes outlived their node: {left}"


def _process_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue  # ended while we looked
            children.setdefault(parent, []).append(int(entry.name))
    return children


def _descendants(pid: int) -> list[int]:
    children, found, todo = _process_children(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _argv(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A two-node cluster shared by the module's tests (the node-loss test, last, ends it)."""
    cluster = RayCluster(tmp_path_factory.mktemp("ray-logs"))
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("RAY_AUTH_TOKEN", cluster.token)  # the drivers the tests start join as users do
            cluster.start()
            yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def tracking_server(tmp_path):
    """`mlflow server` on loopback with its own PostgreSQL database and artifacts served over HTTP."""
    database = f"mlflow_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    server = MlflowServer(
        POSTGRES.rsplit("/", 1)[0] + f"/{database}",
        tmp_path / "artifacts",
        tmp_path / "mlflow-server.log",
        serve_artifacts=True,
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def _search_args(tmp_path, cluster, server, *extra):
    return [
        "--config",
        str(QUICKSTART),
        *TINY,
        f"address={cluster.address}",
        f"tracking_uri={server.uri}",
        f"storage_path={tmp_path / 'shared'}",
        "experiment=cluster",
        *extra,
    ]


def _runs(server):
    """(client, the search's parent runs, its child runs) on the tracking server."""
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("cluster")
    runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    return (
        client,
        [r for r in runs if "search_id" in r.data.tags],
        [r for r in runs if "mlflow.parentRunId" in r.data.tags],
    )


def _wait_for(condition, driver, timeout=600):
    """Poll `condition` until it returns something true, while the search driver is still running."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out waiting for the search"
        time.sleep(0.5)
    return found


def _assert_each_epoch_once(client, children, epochs):
    for child in children:
        for metric in ("epoch", "accuracy", "shape_bias", "train_loss"):
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, metric))
            assert steps == list(range(1, epochs + 1)), (child.info.run_name, metric, steps)


def test_a_search_on_both_nodes_loses_nothing_while_its_tracking_server_is_away(tmp_path, ray_cluster, tracking_server):
    driver = popen_search(
        "search",
        *_search_args(tmp_path, ray_cluster, tracking_server, "seeds=[0, 1]", "training.epochs=3"),
        cwd=tmp_path,
    )
    client = MlflowClient(tracking_server.uri)
    # Stopped right after a trial's first epoch: that trial reports its second one while the server is away.
    _wait_for(lambda: any(client.get_metric_history(c.info.run_id, "epoch") for c in _runs(tracking_server)[2]), driver)
    tracking_server.stop()
    time.sleep(20)
    tracking_server.start()
    stdout, stderr = driver.communicate(timeout=900)
    assert driver.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "warning: the MLflow tracking server is not answering" in stdout, stdout[-3000:]
    assert "warning: the MLflow tracking server answers again" in stdout, stdout[-3000:]
    assert "configurations 2/2 done · trials 4 done, 0 running, 0 failed" in stdout, stdout[-3000:]

    client, parents, children = _runs(tracking_server)
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert not [c.info.run_name for c in children if "restarts" in c.data.tags], "a trial failed over the outage"
    _assert_each_epoch_once(client, children, epochs=3)
    # 1 CPU per node and 2 trials at a time: both nodes trained, writing over HTTP only.
    assert len({c.data.tags["ray_node_id"] for c in children}) == 2, [c.data.tags["ray_node_id"] for c in children]
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"pareto.csv", "search_spec.yaml"}


def test_a_file_tracking_store_is_refused_on_two_nodes(tmp_path, ray_cluster):
    out = cli(
        "search",
        "--config",
        str(QUICKSTART),
        *TINY,
        f"address={ray_cluster.address}",
        cwd=tmp_path,
        timeout=300,
        fresh=True,
    )
    assert_one_line_error(out, "is a file on the driver's machine", "the cluster has 2 nodes", "mlflow server")
    assert_nothing_written(tmp_path)


def test_a_killed_driver_resumes_on_the_cluster_without_rerunning_finished_trials(
    tmp_path, ray_cluster, tracking_server
):
    args = _search_args(tmp_path, ray_cluster, tracking_server, "seeds=[0, 1]")
    driver = popen_search("search", *args, cwd=tmp_path)
    _wait_for(lambda: [c for c in _runs(tracking_server)[2] if c.info.status == "FINISHED"], driver)
    driver.kill()  # SIGKILL: no handler runs, the parent run stays RUNNING
    driver.communicate(timeout=60)
    _, parents, children = _runs(tracking_server)
    finished = {c.info.run_id: c.info.end_time for c in children if c.info.status == "FINISHED"}
    assert len(finished) < 4, "the search ended before its driver was killed"

    out = cli("resume", *args, "--search", parents[0].data.tags["search_id"], cwd=tmp_path, timeout=900, fresh=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "configurations 2/2 done · trials 4 done" in out.stdout, out.stdout[-3000:]
    client, parents, children = _runs(tracking_server)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        if child.info.run_id in finished:  # trained once, before the driver was lost
            assert child.info.end_time == finished[child.info.run_id] and "restarts" not in child.data.tags
    _assert_each_epoch_once(client, children, epochs=2)


def test_a_lost_node_costs_its_trial_a_restart_from_its_last_checkpoint(tmp_path, ray_cluster, tracking_server):
    # Last in the module: it ends the shared cluster's second node.
    second = ray_cluster.node_id(1)
    args = _search_args(tmp_path, ray_cluster, tracking_server, "training.epochs=6", "training.checkpoint_every=2")
    driver = popen_search("search", *args, cwd=tmp_path)
    client = MlflowClient(tracking_server.uri)

    def checkpointed_on_the_second_node():
        # A second checkpoint on disk: the worker's second report waits for the driver to have taken
        # the first, so the driver has one to restore from. (With only the first on disk, a node
        # lost before the driver took it rightly restarts the trial from scratch.)
        for child in _runs(tracking_server)[2]:
            trial = child.data.tags["ray_trial_id"]
            saved = (tmp_path / "shared").glob(f"*/*{trial}*/checkpoint_*")
            if (
                child.data.tags["ray_node_id"] == second
                and child.info.status == "RUNNING"
                and any(path.name != "checkpoint_000000" for path in saved)
            ):
                return child
        return None

    victim = _wait_for(checkpointed_on_the_second_node, driver)
    ray_cluster.kill(1)
    stdout, stderr = driver.communicate(timeout=900)
    assert driver.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert f"trial {victim.info.run_name} lost its worker (failure 1)" in stdout, stdout[-3000:]
    assert "configurations 2/2 done · trials 2 done, 0 running, 0 failed" in stdout, stdout[-3000:]

    client, _, children = _runs(tracking_server)
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    restarted = client.get_run(victim.info.run_id).data.tags
    # Saved every second epoch: it resumed from epoch 2 or 4, and the epochs it redid were logged once.
    assert restarted["restarts"] == "1" and restarted["resumed_after_epoch"] in ("2", "4"), restarted
    assert restarted["ray_node_id"] != second  # finished on the surviving node
    _assert_each_epoch_once(client, children, epochs=6)
