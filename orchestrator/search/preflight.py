"""What a search checks before it writes anything: folders it can write, services that answer,
resources that exist. Each failure is one SearchError line naming the value and what to check.

The spec has already validated the text of every setting (`search_spaces.spec`); these checks
need the world: the disk, the network, this machine, the Ray cluster. They run before the MLflow
parent run exists, so a refused start leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.checks import check_reachable, check_sqlite, sqlite_file, writable_dir
from orchestrator.errors import SearchError
from search_spaces.spec import SearchSpec
from trainables.messages import redact


def check_storage_path(spec: SearchSpec) -> str:
    """Ray's storage_path: a local folder created or found writable (URIs are checked by Ray itself)."""
    storage = spec.resolved_storage_path()
    if "://" not in storage:
        writable_dir(Path(storage), "storage_path")
    return storage


def check_services(spec: SearchSpec, tracking_uri: str) -> None:
    """The MLflow store, the Optuna database and the Ray head answer, or the start is refused in seconds."""
    optuna_url = spec.resolved_optuna_storage()
    for url, what in ((tracking_uri, "tracking_uri"), (optuna_url, "optuna_storage")):
        if sqlite_file(url) is not None:
            check_sqlite(url, what)
    check_reachable(tracking_uri, "the MLflow tracking store", "start it, or set tracking_uri / MLFLOW_TRACKING_URI")
    check_reachable(optuna_url, "the Optuna database", "start it, or set optuna_storage")
    address = spec.address or os.environ.get("RAY_ADDRESS")
    if address and address not in ("auto", "local"):
        check_reachable(address, "the Ray cluster", "start its head (`ray start --head`), or fix address / RAY_ADDRESS")


def check_multi_node(tracking_uri: str, storage: str) -> None:
    """On a cluster of several nodes, the tracking store and trial storage must be reachable from all."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return
    scheme = tracking_uri.split("://", 1)[0] if "://" in tracking_uri else "file"
    if scheme in ("sqlite", "file"):
        raise SearchError(
            f"tracking_uri {redact(tracking_uri)} is a file on the driver's machine, but the cluster has "
            f"{len(nodes)} nodes: trials on the others cannot write to it; run an MLflow tracking server "
            "(`mlflow server --backend-store-uri postgresql://... --serve-artifacts`) and set tracking_uri to its "
            "http:// address"
        )
    if "://" not in storage:
        _check_shared(Path(storage), nodes)


def _check_shared(storage: Path, nodes: list[dict]) -> None:
    """Every node sees a file the driver writes under `storage` (an NFS mount does; a local disk does not)."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = storage / f".shared-check-{uuid.uuid4().hex}"
    marker.write_text("written by the driver; each node looks for it\n")
    try:
        seen = ray.remote(num_cpus=0)(os.path.exists)
        checks = {
            n["NodeManagerAddress"] + " " + n["NodeID"][:8]: seen.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(marker))
            for n in nodes
        }
        blind = [node for node, ref in checks.items() if not ray.get(ref, timeout=120)]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise SearchError(
            f"storage_path {storage} is not visible from node(s) {', '.join(blind)} (a marker file the "
            "driver wrote there is missing): use a folder every node mounts (NFS) or an s3:// URI"
        )


def check_local_resources(spec: SearchSpec) -> None:
    """Without a cluster, a trial cannot ask for more CPUs or GPUs than this machine has (Ray would wait forever)."""
    if spec.address or os.environ.get("RAY_ADDRESS"):
        return
    import torch

    have: dict[str, float] = {"cpu": os.cpu_count() or 1, "gpu": torch.cuda.device_count()}
    _refuse_unplaceable(spec, [have], "this machine has", "or set address to a cluster that has them")


def check_cluster_resources(spec: SearchSpec) -> None:
    """A trial fits on at least one live node of the cluster Ray joined (a trial never spans nodes)."""
    import ray

    nodes = [
        {"cpu": n["Resources"].get("CPU", 0), "gpu": n["Resources"].get("GPU", 0)} for n in ray.nodes() if n["Alive"]
    ]
    _refuse_unplaceable(spec, nodes, "its largest node has", "or add nodes that have them")


def _refuse_unplaceable(spec: SearchSpec, nodes: list[dict[str, float]], where: str, remedy: str) -> None:
    wanted = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if any(all(node[k] >= v for k, v in wanted.items()) for node in nodes):
        return
    largest = max(nodes, key=lambda n: (n["gpu"], n["cpu"]), default={"cpu": 0, "gpu": 0})
    short = [k for k, v in wanted.items() if largest[k] < v]
    raise SearchError(
        "a trial asks for "
        + ", ".join(f"resources.{k}={wanted[k]:g}" for k in short)
        + f" but {where} "
        + ", ".join(f"{largest[k]:g} {k.upper()}s" for k in short)
        + f": no trial could ever start; lower it, {remedy}"
    )
