"""Where a search keeps its results: MLflow tracking URIs and Optuna storage URLs, checked as text.

Whether the service answers is the driver's question (`orchestrator.search.preflight`); here a
URL is refused for a scheme neither store knows, a port that is not a number, or a SQLite URL
without a file, and a relative SQLite path is made absolute (Ray runs trials in other folders).
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from trainables.messages import bounded, redact

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's own default, in the working directory
# What MLflow's tracking stores and Optuna's RDBStorage accept (SQLAlchemy dialects take a
# '+driver' suffix, e.g. postgresql+psycopg2). A tracking URI without a scheme is a local folder.
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "file", "http", "https", "databricks")
OPTUNA_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "oracle")


def resolve_tracking_uri(given: str | None) -> str:
    """`given`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db; a SQLite path made absolute."""
    return absolute_sqlite(given or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


def check_url(url: str, schemes: tuple[str, ...], what: str, allow_path: bool = False) -> str:
    """`url` if its scheme is one of `schemes` and it parses; ValueError naming it (password hidden) if not."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    shown = bounded(redact(url))
    if not scheme and allow_path:
        return url
    if scheme.split("+")[0] not in schemes:
        raise ValueError(
            f"{what} {shown} has scheme {scheme or 'none'!r}; valid: "
            + ", ".join(f"{s}://" for s in schemes)
            + (", or a local folder" if allow_path else "")
        )
    if scheme in ("http", "https", "file", "databricks"):
        parts = urllib.parse.urlsplit(url)
        try:
            _ = parts.port  # raises for a port that is not a number
        except ValueError:
            raise ValueError(f"{what} {shown} has a port that is not a number") from None
        if scheme.startswith("http") and not parts.hostname:
            raise ValueError(f"{what} {shown} names no host")
        return url
    from sqlalchemy.engine import make_url  # both stores are SQLAlchemy URLs
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as error:
        raise ValueError(f"{what} {shown} is not a database URL ({error})") from None
    if parsed.get_backend_name() == "sqlite" and not parsed.database:
        raise ValueError(f"{what} {shown} names no file: use sqlite:///path/to/file.db")
    return url


def absolute_sqlite(uri: str) -> str:
    """sqlite:///relative.db -> sqlite:////abs/relative.db, so Ray workers in other dirs agree."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri
