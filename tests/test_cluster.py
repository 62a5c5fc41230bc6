"""A real two-node Ray cluster on loopback, started as users start theirs (`ray start`, token
authentication on), with an MLflow tracking server on PostgreSQL that workers reach over HTTP."""

import os
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

from conftest import POSTGRES, MlflowServer, free_port
from test_failures import QUICKSTART, TINY, assert_nothing_written, assert_one_line_error, cli

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
RAY = str(Path(sys.executable).with_name("ray"))


def _start(args, log):
    # --block keeps `ray start` in the foreground, owning its node's processes: killing its
    # process group takes the node down, as losing the machine would.
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _ray_processes(temp_dir):
    found = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head and a second node, 1 CPU each; yields the head's address."""
    temp_dir = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    logs = tmp_path_factory.mktemp("ray-logs")
    port = free_port()
    env_token = {**os.environ, "RAY_AUTH_MODE": "token"}  # the head wrote ~/.ray/auth_token; the node joins with it
    head_log, node_log = open(logs / "head.log", "w"), open(logs / "node.log", "w")
    head = _start(["--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
                   f"--temp-dir={temp_dir}"], head_log)
    nodes = [head]
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([RAY, "status", f"--address=127.0.0.1:{port}"], env=env_token, capture_output=True).returncode:
            assert head.poll() is None and time.monotonic() < deadline, (logs / "head.log").read_text()[-3000:]
            time.sleep(1)
        node = subprocess.Popen([RAY, "start", "--block", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                                 "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"],
                                stdout=node_log, stderr=subprocess.STDOUT, start_new_session=True, env=env_token)
        nodes.append(node)
        while not _two_nodes(port, env_token):
            assert node.poll() is None and time.monotonic() < deadline, (logs / "node.log").read_text()[-3000:]
            time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        for process in reversed(nodes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=60)
        head_log.close()
        node_log.close()
        deadline = time.monotonic() + 30
        while _ray_processes(temp_dir) and time.monotonic() < deadline:
            time.sleep(1)
        left = _ray_processes(temp_dir)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes outlived their node: {left}"


def _status(port, env):
    return subprocess.run([RAY, "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True, text=True).stdout


def _two_nodes(port, env):
    active = _status(port, env).split("Active:", 1)[-1].split("Pending:", 1)[0]
    return active.count("node_") >= 2


@pytest.fixture
def tracking_server(tmp_path):
    """`mlflow server` on loopback with its own PostgreSQL database and artifacts served over HTTP."""
    database = f"mlflow_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    server = MlflowServer(POSTGRES.rsplit("/", 1)[0] + f"/{database}", tmp_path / "artifacts",
                          tmp_path / "mlflow-server.log", serve_artifacts=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_a_search_runs_on_both_nodes_and_writes_over_http(tmp_path, ray_cluster, tracking_server):
    out = cli("search", "--config", str(QUICKSTART), *TINY, "seeds=[0, 1]", f"address={ray_cluster}",
              f"tracking_uri={tracking_server.uri}", f"storage_path={tmp_path / 'shared'}", "experiment=cluster",
              cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "configurations 2/2 done" in out.stdout
    client = MlflowClient(tracking_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("cluster").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    # 1 CPU per node and 2 trials at a time: both nodes trained.
    assert len({c.data.tags["ray_node_id"] for c in children}) == 2, [c.data.tags["ray_node_id"] for c in children]
    parent = next(r for r in runs if "search_id" in r.data.tags)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"pareto.csv", "search_spec.yaml"}


def test_a_file_tracking_store_is_refused_on_two_nodes(tmp_path, ray_cluster):
    out = cli("search", "--config", str(QUICKSTART), *TINY, f"address={ray_cluster}", cwd=tmp_path, timeout=300)
    assert_one_line_error(out, "is a file on the driver's machine", "the cluster has 2 nodes", "mlflow server")
    assert_nothing_written(tmp_path)
