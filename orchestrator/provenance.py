"""Where a result came from: the code's commit and the stack's versions, recorded with every
search (parent run tags) and every promoted model (its `production.yaml`)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "ray", "optuna", "mlflow", "sparse-shape-search")


GIT_COMMIT_ENV = "SPARSE_SHAPE_SEARCH_GIT_COMMIT"  # set in the image, which has no .git


def git_commit() -> str:
    """The checkout's commit (with '-dirty' for uncommitted changes), the image's, or 'unknown'."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()

    try:
        commit, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    if not commit:
        return os.environ.get(GIT_COMMIT_ENV) or "unknown"
    return commit + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    """Python's and the stack's versions."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
