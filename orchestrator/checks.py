"""Checks of the world that every command makes before it writes: a folder it can write, a
store that exists and answers. Each failure is one SearchError line naming the value and what to do.
"""

from __future__ import annotations

import base64
import os
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from orchestrator.errors import SearchError
from search_spaces.locations import TRACKING_SCHEMES, check_url, resolve_tracking_uri
from trainables.messages import redact

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
        raise SearchError(
            f"{what} {path} is not writable ({error.strerror}): choose a directory you can write"
        ) from None
    return path


def sqlite_file(url: str) -> Path | None:
    """The database file of a sqlite:/// URL (its query string dropped), or None for any other URL."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///") :].split("?", 1)[0])


def check_sqlite(url: str, what: str) -> None:
    """A SQLite store's folder exists and is writable (SQLite would say only 'unable to open database file')."""
    path = sqlite_file(url)
    if path is None:
        return  # not a SQLite store
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


def existing_store(given: str | None) -> str:
    """The tracking URI of a command that reads a store (given, else the default): it must already exist and answer."""
    uri = resolve_tracking_uri(given)
    try:
        check_url(uri, TRACKING_SCHEMES, "--tracking-uri", allow_path=True)
    except ValueError as error:
        raise SearchError(str(error)) from None
    # MLflow would create an empty database at a mistyped path and report nothing found in it.
    database = sqlite_file(uri)
    if database is not None and not database.is_file():
        raise SearchError(
            f"no MLflow database at {database}: run from the search's directory, or pass "
            "--tracking-uri (or set MLFLOW_TRACKING_URI)"
        )
    check_reachable(uri, "the MLflow tracking store", "start it, or pass --tracking-uri / set MLFLOW_TRACKING_URI")
    return uri
