"""What a search checks before it writes anything: folders it can write, services that answer,
resources that exist. Each failure is one SearchError line naming the value and what to check.

The spec has already validated the text of every setting (`search_spaces.spec`); these checks
need the world: the disk, the network, this machine, the Ray cluster. They run before the MLflow
parent run exists, so a refused start leaves nothing behind.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

from orchestrator.tracking import SearchError
from search_spaces.spec import SearchSpec
from trainables.config import redact

TIMEOUT_S = 5.0  # per connection attempt: a service that answers at all answers well within this


def writable_dir(path: Path, what: str) -> Path:
    """`path` as a directory this process can write (created if missing), or SearchError."""
    if path.exists() and not path.is_dir():
        raise SearchError(f"{what} {path} is a file, not a directory: choose a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as error:
        raise SearchError(f"{what} {path} is not writable ({error.strerror}): choose a directory you can write") from None
    return path


def check_storage_path(spec: SearchSpec) -> str:
    """Ray's storage_path: a local folder created or found writable (URIs are checked by Ray itself)."""
    storage = spec.resolved_storage_path()
    if "://" not in storage:
        writable_dir(Path(storage), "storage_path")
    return storage


def sqlite_file(url: str) -> Path | None:
    """The database file of a sqlite:/// URL (its query string dropped), or None for any other URL."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///"):].split("?", 1)[0])


def check_sqlite(url: str, what: str) -> None:
    """A SQLite store's folder exists and is writable (SQLite would say only 'unable to open database file')."""
    path = sqlite_file(url)
    if not path.parent.is_dir():
        raise SearchError(f"{what} {url}: folder {path.parent} does not exist; create it or choose another path")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SearchError(f"{what} {url}: {path if path.exists() else path.parent} is not writable")


def check_reachable(url: str, what: str, hint: str) -> None:
    """A network service at `url` accepts a connection (an HTTP one answers /health) within seconds."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"tcp://{url}")
    shown = redact(url)
    if parts.scheme in ("http", "https"):
        # urllib takes no credentials in the URL: they travel as basic auth, as MLflow sends them.
        netloc = parts.netloc.rpartition("@")[2]
        request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)).rstrip("/") + "/health")
        if parts.username:
            token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            urllib.request.urlopen(request, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                return  # it answers; credentials are the store's business, and its error says so
            raise SearchError(f"{what} {shown} answers /health with HTTP {error.code}: {hint}") from None
        except (urllib.error.URLError, OSError) as error:
            raise SearchError(f"cannot reach {what} {shown} ({getattr(error, 'reason', error)}): {hint}") from None
        return
    port = parts.port or DEFAULT_PORTS.get(parts.scheme.split("+")[0])
    if not parts.hostname or port is None:
        return
    try:
        socket.create_connection((parts.hostname, port), timeout=TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise SearchError(f"cannot reach {what} {shown} ({reason} at {parts.hostname}:{port}): {hint}") from None


DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433, "oracle": 1521, "ray": 10001}


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


@contextlib.contextmanager
def held_stderr(when: bool) -> Iterator[None]:
    """Hold what is written to stderr (fd 2) meanwhile: replayed on success, dropped on failure.

    Joining a cluster that refuses us (a wrong or missing token), Ray's C++ client logs a warning
    a second for 20 s before it raises; our one line replaces them. Only for joining: a local
    start spawns Ray's processes, which must not inherit a borrowed stderr.
    """
    if not when:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        sys.stderr.write(held.read().decode(errors="replace"))


def check_ray_head(address: str, timeout_s: float = 20.0) -> None:
    """Something that accepts connections at `address` answers as a Ray head within `timeout_s`.

    A wrong port that is open (a database, the dashboard) would otherwise keep ray.init
    retrying for minutes. Ray's client blocks without a timeout of its own, so it runs in a
    daemon thread that is abandoned if it does not return; its refusals (a missing token, say)
    are left for ray.init to report. Call it inside `held_stderr`: the client logs every attempt.
    """
    from ray._raylet import GcsClient

    answered = threading.Event()

    def probe() -> None:
        with contextlib.suppress(Exception):
            GcsClient(address=address).cluster_id
        answered.set()

    threading.Thread(target=probe, daemon=True).start()
    if not answered.wait(timeout_s):
        raise SearchError(f"{redact(address)} accepts connections but did not answer as a Ray head within "
                              f"{timeout_s:.0f} s: give the head's GCS address (port 6379 unless `ray start --port` "
                              "says otherwise; `ray status` on the head prints it)")


def use_ray_token_if_present() -> None:
    """Join with token authentication when a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token) and RAY_AUTH_MODE is unset: what Ray's own CLI does, so `address` alone works."""
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


# Credentials that trials need as much as the driver: MLflow's (a server with auth, or an S3
# artifact store behind it) and the object stores' (s3:// trial storage, MLflow artifacts).
FORWARDED_ENV_PREFIXES = ("MLFLOW_TRACKING_", "MLFLOW_S3_", "AWS_", "AZURE_STORAGE_", "GOOGLE_APPLICATION_CREDENTIALS")


def worker_env(tracking_uri: str) -> dict[str, str]:
    """The environment every trial gets through Ray's runtime env, whichever node it runs on."""
    forwarded = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    # A worker queues its metrics while the tracking server is away (orchestrator/outbox.py), so
    # MLflow's own minutes of blocking retries would only stall training: two quick ones instead.
    quick_retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    quick_retries = {k: os.environ.get(k, v) for k, v in quick_retries.items()}
    # A worker reused for the next trial first waits for the stopped trial's thread to close its
    # run, for Tune's default of only 2 s; past that Tune errors the next trial without telling
    # the searcher, and the search hangs. Closing a run can wait for the server (the outbox's
    # patience), so the reuse waits as long.
    from orchestrator.outbox import PATIENCE_S

    wind_down = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": str(int(PATIENCE_S) + 60)}
    # MLflow prints "View run ... at: <tracking URI>" as runs end: the URI as given, password included.
    return forwarded | quick_retries | wind_down | {"MLFLOW_TRACKING_URI": tracking_uri,
                                                    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


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
            "http:// address")
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
        checks = {n["NodeManagerAddress"] + " " + n["NodeID"][:8]: seen.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(marker)) for n in nodes}
        blind = [node for node, ref in checks.items() if not ray.get(ref, timeout=120)]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise SearchError(f"storage_path {storage} is not visible from node(s) {', '.join(blind)} (a marker file the "
                          "driver wrote there is missing): use a folder every node mounts (NFS) or an s3:// URI")


def check_local_resources(spec: SearchSpec) -> None:
    """Without a cluster, a trial cannot ask for more CPUs or GPUs than this machine has (Ray would wait forever)."""
    if spec.address or os.environ.get("RAY_ADDRESS"):
        return
    import torch

    have = {"cpu": os.cpu_count() or 1, "gpu": torch.cuda.device_count()}
    _refuse_unplaceable(spec, [have], "this machine has", "or set address to a cluster that has them")


def check_cluster_resources(spec: SearchSpec) -> None:
    """A trial fits on at least one live node of the cluster Ray joined (a trial never spans nodes)."""
    import ray

    nodes = [{"cpu": n["Resources"].get("CPU", 0), "gpu": n["Resources"].get("GPU", 0)} for n in ray.nodes() if n["Alive"]]
    _refuse_unplaceable(spec, nodes, "its largest node has", "or add nodes that have them")


def _refuse_unplaceable(spec: SearchSpec, nodes: list[dict[str, float]], where: str, remedy: str) -> None:
    wanted = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if any(all(node[k] >= v for k, v in wanted.items()) for node in nodes):
        return
    largest = max(nodes, key=lambda n: (n["gpu"], n["cpu"]), default={"cpu": 0, "gpu": 0})
    short = [k for k, v in wanted.items() if largest[k] < v]
    raise SearchError(
        "a trial asks for " + ", ".join(f"resources.{k}={wanted[k]:g}" for k in short) + f" but {where} "
        + ", ".join(f"{largest[k]:g} {k.upper()}s" for k in short) + f": no trial could ever start; lower it, {remedy}"
    )


@contextlib.contextmanager
def first_start_lock(*urls: str) -> Iterator[None]:
    """Serialise the creation of SQLite stores: two searches starting at once in a fresh folder
    would both run MLflow's schema migration (and Optuna's table creation) and one would crash."""
    import fcntl

    paths = sorted({sqlite_file(url) for url in urls} - {None})
    with contextlib.ExitStack() as stack:
        for path in paths:
            # flock on the database file itself (SQLite takes an empty file as a new database):
            # no lock file is left behind, and SQLite's own fcntl locks are independent of it.
            handle = stack.enter_context(open(path, "ab"))
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def new_search_id(name: str) -> str:
    """name-YYYYmmdd-HHMMSS-xxxxxx: sortable by start, and unique even for searches started in the same second."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
