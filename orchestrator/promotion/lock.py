"""One promotion at a time per registered model name, with the lock held in the registry itself.

The lock is a registered model named `<name>.promotion-lock`. Creating a registered model is atomic
in every MLflow store (its name is unique), so of two promotions that start together exactly one
creates it and the other waits for it to go. It lives where the model lives, not in a working
folder: promotions from two machines, or two folders, serialise too. Its description says who
holds it. A holder killed outright (SIGKILL, a lost machine) cannot release it: a lock whose
process is gone from this host, or older than `STALE_S`, is broken, and the line says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.errors import SearchError, held_signals
from orchestrator.promotion.audit import current_user

LOCK_SUFFIX = ".promotion-lock"
WAIT_S = 60.0  # a promotion holds the lock for its registry writes only: seconds, a minute for a slow upload
STALE_S = 900.0  # no promotion holds it this long; an older lock was left by one that was killed


def lock_name(model_name: str) -> str:
    """The registered model that locks promotions of `model_name`."""
    return f"{model_name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def promotion_lock(client: MlflowClient, model_name: str, wait_s: float = WAIT_S) -> Iterator[None]:
    """Hold the promotion lock of `model_name` meanwhile; SearchError naming the holder after `wait_s`."""
    name = lock_name(model_name)
    me = {"user": current_user(), "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            client.create_registered_model(
                name, tags={"promotion_lock": "true"}, description=json.dumps(me | {"of": model_name})
            )
            break
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        holder = _holder(client, name)
        if holder is None:
            continue  # released between our attempt and the look
        if _abandoned(holder):
            print(f"breaking the promotion lock of {model_name} left by {_who(holder)}", file=sys.stderr)
            with contextlib.suppress(MlflowException):  # another waiter may break it first
                client.delete_registered_model(name)
            continue
        if time.monotonic() > deadline:
            raise SearchError(
                f"{model_name} is being promoted by {_who(holder)}: gave up after {wait_s:.0f} s; if no promotion "
                f"is running, delete the registered model {name!r} and promote again"
            )
        if not told:
            print(f"waiting for the promotion of {model_name} by {_who(holder)} to end", file=sys.stderr)
            told = True
        time.sleep(0.5)
    try:
        yield
    finally:
        with held_signals():  # a second Ctrl+C or SIGTERM must not leave the lock behind
            try:
                client.delete_registered_model(name)
            except MlflowException as error:  # the promotion itself is complete or undone: say what is left
                print(f"warning: could not release the promotion lock {name!r}: {error.message[:200]}", file=sys.stderr)


def _holder(client: MlflowClient, name: str) -> dict | None:
    """Who holds the lock, as its description records it ({} if unreadable); None if it is gone."""
    try:
        description = client.get_registered_model(name).description or ""
    except MlflowException:
        return None
    try:
        holder = json.loads(description)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _abandoned(holder: dict) -> bool:
    """A lock whose holder died: its process is gone from this host, or it is older than any promotion."""
    since = holder.get("since")
    if not isinstance(since, (int, float)) or time.time() - since > STALE_S:
        return True
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False  # another machine's process: only its age can tell
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _who(holder: dict) -> str:
    since = holder.get("since")
    when = time.strftime("%H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return f"{holder.get('user', '?')} on {holder.get('host', '?')} (pid {holder.get('pid', '?')}, since {when})"
