"""The audit trail of alias moves: one MLflow run per move, in the experiment `registry-audit`.

Why runs and not tags on the registered model: a run records who (`mlflow.user`) and when (its
start time) the way every MLflow user already reads them, the runs table filters and sorts them
(`tags.registered_model = 'NAME'`), each move is written once and never rewritten (a tag list
would be read, extended and written back, so two promotions at once could lose one), and there is
no limit on how many a model has. A move is recorded before the alias moves (promote) or right
after (rollback), and its record is deleted if the move is undone, so the trail holds only moves
that happened. Moves made outside these commands (the UI, the client API) leave no record;
`history` says when the alias is not where the trail last put it.
"""

from __future__ import annotations

import datetime
import getpass
import os
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from orchestrator import names
from orchestrator.errors import SearchError
from orchestrator.tracking import experiment_id

AUDIT_EXPERIMENT = "registry-audit"
PROMOTE, ROLLBACK, MOVE = "promote", "rollback", "move"  # MOVE: the alias to a version already registered
_MAX_TEXT = 4000  # under MLflow's tag value limit


@dataclass(frozen=True)
class Move:
    """One alias move as the trail recorded it."""

    model_name: str
    alias: str
    action: str
    from_version: str  # "" when the alias was unset
    to_version: str
    reason: str  # the rule or id that chose it, and the user's --reason
    gate: str  # the gate's result, "forced", or why there was none
    user: str
    when: datetime.datetime
    run_id: str


def current_user() -> str:
    """Who is moving the alias: MLflow's own user name if set, else the OS user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def record_move(
    client: MlflowClient,
    model_name: str,
    alias: str,
    action: str,
    from_version: str | None,
    to_version: str,
    reason: str,
    gate: str,
) -> str:
    """Write one move to the trail; its run id (to delete it if the move is undone)."""
    user = current_user()
    tags = {
        names.MLFLOW_RUN_NAME: f"{model_name}@{alias}: {from_version or '-'} -> {to_version}",
        "mlflow.user": user,
        "registered_model": model_name,
        "alias": alias,
        "action": action,
        "from_version": from_version or "",
        "to_version": to_version,
        "reason": reason[:_MAX_TEXT],
        "gate": gate[:_MAX_TEXT],
    }
    run = client.create_run(experiment_id(client, AUDIT_EXPERIMENT), tags=tags)
    try:
        client.set_terminated(run.info.run_id, status="FINISHED")
    except Exception:
        delete_record(client, run.info.run_id)
        raise
    return str(run.info.run_id)


def delete_record(client: MlflowClient, run_id: str) -> None:
    """Take a record back (its move was undone); a failure here is left for the caller's undo to report."""
    client.delete_run(run_id)


def history(client: MlflowClient, model_name: str, alias: str | None = None) -> list[Move]:
    """Every recorded move of `model_name` (of one alias if given), oldest first."""
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if experiment is None:
        return []
    # Filtered here rather than in the filter string: model names may hold quotes.
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=50_000,
    )
    moves = []
    for run in runs:
        t = run.data.tags
        if t.get("registered_model") != model_name or (alias is not None and t.get("alias") != alias):
            continue
        moves.append(
            Move(
                model_name,
                t.get("alias", ""),
                t.get("action", ""),
                t.get("from_version", ""),
                t.get("to_version", ""),
                t.get("reason", ""),
                t.get("gate", ""),
                t.get("mlflow.user", ""),
                datetime.datetime.fromtimestamp(run.info.start_time / 1000, datetime.UTC),
                run.info.run_id,
            )
        )
    return moves


def rollback_target(moves: list[Move], current: str | None, model_name: str, alias: str) -> str:
    """The version before the current one in the trail: where the move that put the alias here came from."""
    if current is None:
        raise SearchError(f"alias {alias!r} of {model_name} is not set: there is nothing to roll back")
    last = next((m for m in reversed(moves) if m.to_version == current), None)
    if last is None:
        raise SearchError(
            f"no recorded move put alias {alias!r} of {model_name} on version {current} (moved outside "
            "run_search.py?): name the version with --to VERSION"
        )
    if not last.from_version:
        raise SearchError(
            f"version {current} is the first version alias {alias!r} of {model_name} pointed at: there is no "
            "earlier one to roll back to (name one with --to VERSION)"
        )
    return last.from_version


def format_history(moves: list[Move], current: dict[str, str]) -> str:
    """The trail as a table, oldest first, with a note where an alias is not where the trail left it."""
    lines = [f"{'when (UTC)':<19} {'user':<12} {'action':<9} {'alias':<12} {'from':>4} -> {'to':<4} reason; gate"]
    for m in moves:
        lines.append(
            f"{m.when:%Y-%m-%d %H:%M:%S} {m.user[:12]:<12} {m.action:<9} {m.alias[:12]:<12} "
            f"{m.from_version or '-':>4} -> {m.to_version:<4} {m.reason}; gate {m.gate}"
        )
    for alias, version in sorted(current.items()):
        trail = [m for m in moves if m.alias == alias]
        if trail and trail[-1].to_version != version:
            lines.append(
                f"note: alias {alias!r} is on version {version}, but the last recorded move put it on "
                f"{trail[-1].to_version}: it was moved outside run_search.py"
            )
    return "\n".join(lines)
