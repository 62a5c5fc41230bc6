"""What a command's console shows: its own lines only, and a sick tracking server as one line, soon.

MLflow logs its own tracebacks (a locked store, a refused write) before it raises, and Ray Tune
logs every failed trial's and every failed sync's; the command prints one line of its own. Those
logs go to a file instead (`quiet_libraries`), which the error line names.

MLflow's HTTP client retries a failing server for about four minutes by default; the registry
commands give up within `HTTP_BOUND_S` (fewer retries, a shorter read timeout: MLflow's own
settings, which a user's environment still overrides) and say which server answered what.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from trainables.messages import redact

# Three attempts, 1 s and 2 s apart, each allowed 15 s without a byte: a dead server is answered
# within about 50 s, one that answers 500 within about 5 s.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
HTTP_BOUND_S = 60
LIBRARY_LOGGERS = ("mlflow", "alembic", "sqlalchemy", "urllib3")
# Ray Tune logs every failed trial's traceback, and every failed sync of its state, as it goes.
WITH_RAY = (*LIBRARY_LOGGERS, "ray")


def bound_http_retries() -> None:
    """MLflow's HTTP client gives up on a failing or silent server within `HTTP_BOUND_S` (the environment may say)."""
    for key, value in HTTP_SETTINGS.items():
        os.environ.setdefault(key, value)


def quiet_libraries(command: str, loggers: Sequence[str] = LIBRARY_LOGGERS) -> Path:
    """Route the libraries' log lines (MLflow's and its stores', Ray's if named) to a file; the file's path.

    The file is created only when something is logged. No progress bars, no "View run at <URI>"
    lines (they carry the URI's password).
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    # Both set up their loggers on import: ours must come after.
    import mlflow  # noqa: F401

    if "ray" in loggers:
        import ray  # noqa: F401

    folder = Path(tempfile.gettempdir()) / "sparse-shape-search"
    folder.mkdir(exist_ok=True)
    log = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    handler = logging.FileHandler(log, delay=True)  # delay: no file unless something is logged
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in (*loggers, "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # the libraries' warnings too: they are log lines, not the command's
    warnings.simplefilter("default")
    # Files a library left open when an error cut it short: reported at exit, past our handler.
    warnings.simplefilter("ignore", ResourceWarning)
    return log


def library_log_note(log: Path | None) -> str:
    """ " (the libraries' own log: PATH)" when MLflow or its stores logged something this run, else ""."""
    if log is None or not log.is_file() or log.stat().st_size == 0:
        return ""
    return f" (the libraries' own log: {log})"


_TOO_MANY = re.compile(r"too many (\d{3}) error responses")
_STATUS = re.compile(r"failed with error code (\d{3})")
_ENDPOINT = re.compile(r"/(api/[\w./-]+)")


def server_failure(error: BaseException, tracking_uri: str) -> str | None:
    """One line for an HTTP tracking server that is up but failing or silent; None for any other error."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    text = " ".join(str(error).split())
    endpoint = _ENDPOINT.search(text)
    asked = f" to {endpoint.group(1)}" if endpoint else ""
    server = redact(tracking_uri)
    code = _TOO_MANY.search(text) or _STATUS.search(text)
    if code and code.group(1).startswith("5"):
        return (
            f"the MLflow tracking server {server} answers HTTP {code.group(1)}{asked}: it is up but failing "
            "(its database or artifact store, most often); see the server's log"
        )
    if "timed out" in text.lower():
        return (
            f"the MLflow tracking server {server} did not answer{asked} within "
            f"{os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '120')} s, on every try: it is overloaded or stuck"
        )
    return None
