"""The Ray side of a search's driver: joining or starting Ray, what every trial's environment
carries, and turning SIGTERM into the graceful stop Ctrl+C gives.

Joining a cluster checks first that the address answers as a Ray head, and picks up the head's
token as Ray's own CLI does; a refusal is one line, not Ray's minute of retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from types import FrameType

from orchestrator.errors import SearchError
from search_spaces.spec import SearchSpec
from trainables.messages import one_line, redact

# Each trial's checkpoints Tune keeps. With one, Tune must save the whole experiment state (every
# trial's) and upload it whenever any trial saves a checkpoint; with two, only when a trial saves
# twice between its periodic saves (every 10 s or more, about 5% of the driver's time). At 1,000
# trials that state is about 30 MB: saved at every checkpoint, it stalled a 2,000-trial search
# (bench/scale.py; docs/scaling.md).
KEEP_CHECKPOINTS = 2


def quiet() -> None:
    """Our progress line replaces Ray's tables, banners and state-sync warnings, and MLflow Tune's result files."""
    import optuna

    # Tune's per-trial result files (CSV, JSON, TensorBoard) are written by the driver and uploaded
    # with every save of the experiment state, every trial's each time; MLflow holds every metric.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Without them Tune's result grid warns, trial by trial, that it found no result files.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # MLflow prints "View run ... at: <tracking URI>" as runs end: the URI as given, password included.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def start_ray(spec: SearchSpec, tracking_uri: str) -> None:
    """Join the cluster at spec.address / RAY_ADDRESS, or start Ray in-process."""
    import ray

    runtime_env = {"env_vars": worker_env(tracking_uri)}
    address = spec.address or os.environ.get("RAY_ADDRESS")
    logging.getLogger("ray").setLevel(logging.WARNING)
    # "Token authentication is enabled" on every start: the default, and what we want; not news.
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    if address:
        use_ray_token_if_present()
    try:
        with held_stderr(when=bool(address)):
            if address and address not in ("auto", "local") and "://" not in address:  # ray:// has its own timeouts
                check_ray_head(address)
            ray.init(
                address=address,
                runtime_env=runtime_env,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=True,
                logging_level=logging.WARNING,
                ignore_reinit_error=True,
            )
    except ConnectionError as error:
        raise SearchError(
            f"cannot join the Ray cluster at {redact(address or 'auto')} ({one_line(error)}): if the "
            "head answers, it refused us; Ray clusters use token authentication by default: give this "
            "machine the head's token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token; RAY_AUTH_MODE=token "
            "turns it on)"
        ) from None


def sigterm_as_ctrl_c() -> None:
    """SIGTERM (a scheduler, `kill`, a container stop) ends the search as Ctrl+C does: KILLED, resumable.

    ray.init installs its own SIGTERM handler (exit at once), so this is set after it.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        on_ctrl_c = signal.getsignal(signal.SIGINT)  # Tune's graceful stop, or Python's KeyboardInterrupt
        if callable(on_ctrl_c):
            on_ctrl_c(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


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
    # No public Ray API asks an address "are you a Ray head?" without joining it: the GCS
    # client is the lightest probe there is.
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # a compiled module, no stub

    answered = threading.Event()

    def probe() -> None:
        with contextlib.suppress(Exception):
            _ = GcsClient(address=address).cluster_id  # a head answers with its cluster id
        answered.set()

    threading.Thread(target=probe, daemon=True).start()
    if not answered.wait(timeout_s):
        raise SearchError(
            f"{redact(address)} accepts connections but did not answer as a Ray head within "
            f"{timeout_s:.0f} s: give the head's GCS address (port 6379 unless `ray start --port` "
            "says otherwise; `ray status` on the head prints it)"
        )


def use_ray_token_if_present() -> None:
    """Join with token authentication when a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token) and RAY_AUTH_MODE is unset: what Ray's own CLI does, so `address` alone works."""
    # Ray exposes no public call for this: setting RAY_AUTH_MODE here would not reach Ray's
    # configuration, which this process has already read; its CLI uses the same function.
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


# Credentials that trials need as much as the driver: MLflow's (a server with auth, or an S3
# artifact store behind it) and the object stores' (s3:// trial storage, MLflow artifacts).
FORWARDED_ENV_PREFIXES = ("MLFLOW_TRACKING_", "MLFLOW_S3_", "AWS_", "AZURE_STORAGE_", "GOOGLE_APPLICATION_CREDENTIALS")


def worker_env(tracking_uri: str) -> dict[str, str]:
    """The environment every trial gets through Ray's runtime env, whichever node it runs on."""
    forwarded = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    # A worker queues its metrics while the tracking server is away (orchestrator/search/outbox.py), so
    # MLflow's own minutes of blocking retries would only stall training: two quick ones instead.
    quick_retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    quick_retries = {k: os.environ.get(k, v) for k, v in quick_retries.items()}
    # A worker reused for the next trial first waits for the stopped trial's thread to close its
    # run, for Tune's default of only 2 s; past that Tune errors the next trial without telling
    # the searcher, and the search hangs. Closing a run can wait for the server (the outbox's
    # patience), so the reuse waits as long.
    from orchestrator.search.outbox import PATIENCE_S

    wind_down = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": str(int(PATIENCE_S) + 60)}
    # MLflow prints "View run ... at: <tracking URI>" as runs end: the URI as given, password included.
    return (
        forwarded
        | quick_retries
        | wind_down
        | {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    )
