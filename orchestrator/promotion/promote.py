"""Promotion to the MLflow Model Registry: one chosen replicate's model, a new version, the alias moved.

Two steps, so the command can gate and ask between them. `stage` reads everything a promotion
needs and checks what can be checked without writing: the chosen replicate's checkpoint (rebuilt
into its model), its `production.yaml` (`orchestrator.promotion.records`), that the output folder
is writable and holds no other model's file, and where the alias points now. `promote` then logs
the model to its source run, registers a new version (or finds the version that already holds
this checkpoint), records the move in the audit trail (`orchestrator.promotion.audit`) and moves
the alias last. A failure on the way undoes what was written (the record, the version, the
alias's old place, a registered model it created, the logged model) and says if it could not.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator import names
from orchestrator.errors import SearchError
from orchestrator.promotion.audit import MOVE, PROMOTE, delete_record, record_move
from orchestrator.promotion.choice import Choice
from orchestrator.promotion.records import (
    DRY_RUN_YAML,
    PRODUCTION_YAML,
    dump_yaml,
    production_config,
    registered_model_tags,
    version_description,
    version_tags,
)
from orchestrator.promotion.registry import alias_version
from orchestrator.serving import log_model
from orchestrator.tracking import SearchRecord
from trainables.checkpoint import CheckpointError, load_checkpoint, restore_model
from trainables.config import TrialConfig
from trainables.files import read_settings, write_atomically
from trainables.messages import one_line


@dataclass(frozen=True)
class Staged:
    """Everything a promotion reads and checks before its first registry write."""

    search: SearchRecord
    choice: Choice
    model_name: str
    alias: str
    model: Any  # the torch module rebuilt from the checkpoint
    config: TrialConfig
    production: dict[str, Any]  # production.yaml's settings
    local: Path  # where production.yaml goes
    previous: str | None  # the version the alias points at now
    holding: ModelVersion | None  # the version that already holds this checkpoint, if one does
    labels: dict[str, list]  # the model's classes and their categories, as its checkpoint records them


@dataclass(frozen=True)
class Promotion:
    """A registered version, the URI that loads it, and the local `production.yaml`."""

    version: ModelVersion
    model_uri: str
    production_yaml: Path
    # Set when a version of this name already held the checkpoint: nothing was registered, and the
    # alias moved from this version ("" if it was unset; None if it already pointed there).
    already: bool = False
    moved_from: str | None = None


def stage(
    client: MlflowClient, search: SearchRecord, choice: Choice, model_name: str, alias: str, out_dir: Path
) -> Staged:
    """Read the chosen replicate's checkpoint, rebuild its model, and check that production.yaml can be written."""
    replicate = choice.replicate
    checkpoint_uri, state, model, config = _read_checkpoint(client, replicate.run_id)
    production = production_config(config, state, search, choice, checkpoint_uri)
    production["provenance"]["registered_model"] = model_name
    local = out_dir / PRODUCTION_YAML
    _check_local(local, model_name)
    try:  # an unwritable --out fails here, before the registry is touched
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".production-", suffix=".tmp"):
            pass
    except OSError as error:
        raise SearchError(f"cannot write production.yaml in {out_dir}: {error.strerror or error}") from None
    previous = alias_version(client, model_name, alias)
    holding = version_holding(client, model_name, replicate.run_id)
    labels = state["labels"]
    return Staged(search, choice, model_name, alias, model, config, production, local, previous, holding, labels)


def dry_run(staged: Staged) -> Path:
    """Write what the promotion would register as `production.dry-run.yaml`; nothing goes to MLflow."""
    settings = _with_version(staged.production, "not registered (dry run)")
    kept = staged.local.with_name(DRY_RUN_YAML)
    text = dump_yaml(settings)
    write_atomically(kept, lambda tmp: tmp.write_text(text))
    return kept


def promote(client: MlflowClient, staged: Staged, reason: str, gate: str) -> Promotion:
    """Register the staged model as a new version and point the alias at it, recording the move.

    When a version already holds this checkpoint, nothing is registered and the alias moves to it
    only if it points elsewhere. The move is recorded in the audit trail before the alias moves;
    a failure on the way takes back everything written, the record included.
    """
    name, alias, previous = staged.model_name, staged.alias, staged.previous
    uri = f"models:/{name}@{alias}"
    if staged.holding is not None:
        version = staged.holding
        moved_from = None if previous == str(version.version) else (previous or "")
        if moved_from is not None:
            record = record_move(client, name, alias, MOVE, previous, str(version.version), reason, gate)
            try:
                client.set_registered_model_alias(name, alias, version.version)
            except BaseException:
                delete_record(client, record)
                raise
        local = _write_local(staged, str(version.version))
        return Promotion(version, uri, local, already=True, moved_from=moved_from)

    written: dict[str, Any] = {}
    try:
        mlflow.set_tracking_uri(client.tracking_uri)  # Model.log writes through the fluent API
        replicate = staged.choice.replicate
        info = log_model(
            staged.model,
            staged.labels,
            staged.config.data.image_size,
            replicate.run_id,
            staged.search.experiment_id,
            # The source run's Models tab lists it by what it is, not as one more "promoted-model".
            name=f"{staged.choice.result.configuration}-seed{replicate.seed}",
        )
        written["logged_model"] = info.model_id
        try:
            client.create_registered_model(
                name,
                description=(
                    f"Sparse {staged.search.arch} promoted from sparse-shape-search experiment "
                    f"{staged.search.experiment_name!r}."
                ),
            )
            written["registered_model"] = name
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":  # another promotion may have made it
                raise
        tags = version_tags(staged.search, staged.choice) | {"gate": gate[:4000]}
        version = client.create_model_version(
            name,
            source=f"models:/{info.model_id}",
            run_id=replicate.run_id,
            model_id=info.model_id,
            tags=tags,
            description=version_description(staged.search, staged.choice),
        )
        written["version"] = version.version
        with tempfile.TemporaryDirectory(prefix="promote-") as tmp:
            # The model's own copy names the version it became, so a downloaded copy still says so.
            packaged = Path(tmp) / PRODUCTION_YAML
            packaged.write_text(dump_yaml(_with_version(staged.production, str(version.version))))
            client.log_model_artifact(info.model_id, str(packaged))
        # The logged model names the version it became (the version already names the model).
        client.set_logged_model_tags(info.model_id, {"registered_model": name, "registered_version": version.version})
        for key, value in registered_model_tags(staged.search).items():
            client.set_registered_model_tag(name, key, value)
        written["record"] = record_move(client, name, alias, PROMOTE, previous, str(version.version), reason, gate)
        client.set_registered_model_alias(name, alias, version.version)  # the last registry step
    except BaseException as error:  # Ctrl+C included: never leave a version the alias skipped
        left = _undo(client, name, alias, previous, written)
        if not isinstance(error, Exception):
            raise
        state_now = (
            f"registry left as it was (alias {alias!r} {'on version ' + previous if previous else 'unset'})"
            if not left
            else f"could not undo {', '.join(left)}: check the registry"
        )
        raise SearchError(f"promotion failed, {state_now}: {type(error).__name__}: {one_line(error)[:400]}") from None
    local = _write_local(staged, str(version.version))
    return Promotion(version, uri, local)


def _with_version(production: dict[str, Any], version: str) -> dict[str, Any]:
    """production.yaml's settings naming the registered version."""
    return production | {"provenance": production["provenance"] | {"registered_version": version}}


def _write_local(staged: Staged, version: str) -> Path:
    """production.yaml in --out, written whole (never half a file)."""
    text = dump_yaml(_with_version(staged.production, version))
    write_atomically(staged.local, lambda tmp: tmp.write_text(text))
    return staged.local


def _check_local(local: Path, model_name: str) -> None:
    """Refuse to overwrite a production.yaml of another registered model (or one this tool did not write)."""
    if not local.exists():
        return
    try:
        owner = (read_settings(local).get("provenance") or {}).get("registered_model")
    except Exception:  # unreadable YAML: not one of ours either
        owner = None
    if owner != model_name:
        held = f"model {owner!r}" if owner else "no registered model"
        raise SearchError(
            f"{local} records {held}, not {model_name!r}: promoting would overwrite it; pass --out DIR for "
            "another folder, or move that file away"
        )


def version_holding(client: MlflowClient, model_name: str, source_run_id: str) -> ModelVersion | None:
    """The version of `model_name` registered from this child run's checkpoint, if one is (a run has one)."""
    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return None  # no such model yet
    return next((v for v in versions if v.tags.get("source_run_id") == source_run_id), None)


def _read_checkpoint(client: MlflowClient, run_id: str) -> tuple[str, dict[str, Any], Any, TrialConfig]:
    """The child run's checkpoint: its URI, its state, the model rebuilt from it and its config."""
    uri = client.get_run(run_id).data.tags.get(names.CHECKPOINT_URI)
    if not uri:
        raise SearchError(
            f"child run {run_id} records no checkpoint_uri tag (a search from before checkpoints were "
            "tagged); promote a configuration of a newer search"
        )
    try:
        state = load_checkpoint(uri)
    except CheckpointError as error:  # missing, truncated or foreign: its message names the path
        raise SearchError(f"checkpoint of child run {run_id}: {one_line(error)[:1000]}") from None
    try:
        model, config = restore_model(state)
    except Exception as error:  # an older checkpoint format, or weights of another model
        raise SearchError(
            f"checkpoint of child run {run_id} at {uri} cannot be rebuilt: {one_line(error)[:300]}"
        ) from None
    return uri, state, model, config


def _undo(
    client: MlflowClient, model_name: str, alias: str, previous: str | None, written: dict[str, Any]
) -> list[str]:
    """Take back what a failed promotion wrote, newest first; name what could not be taken back."""
    left: list[str] = []

    def attempt(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception:  # the failure may be the server itself
            left.append(what)

    if "record" in written:
        attempt(f"audit record {written['record']}", lambda: delete_record(client, written["record"]))
    if "version" in written:
        # Deleting the version also drops the alias if it had moved there.
        attempt(f"version {written['version']}", lambda: client.delete_model_version(model_name, written["version"]))
        if previous:
            attempt(
                f"alias {alias!r} on version {previous}",
                lambda: client.set_registered_model_alias(model_name, alias, previous),
            )
    if "registered_model" in written:
        attempt(f"registered model {model_name}", lambda: _delete_if_unused(client, model_name))
    if "logged_model" in written:
        attempt(f"logged model {written['logged_model']}", lambda: client.delete_logged_model(written["logged_model"]))
    return left


def _delete_if_unused(client: MlflowClient, model_name: str) -> None:
    # Another promotion may have registered a version meanwhile: then the model stays.
    if not client.search_model_versions(f"name = '{model_name}'"):
        client.delete_registered_model(model_name)
