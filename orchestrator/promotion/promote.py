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

import os
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
from orchestrator.errors import (
    CommandInterrupted,
    SearchError,
    forget_interrupts,
    held_signals,
    raise_if_interrupted,
)
from orchestrator.promotion.audit import MOVE, PROMOTE, delete_record, record_move
from orchestrator.promotion.choice import Choice
from orchestrator.promotion.lock import promotion_lock
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
from trainables.checkpoint import CheckpointError, read_checkpoint, restore_model, weights_digest
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
    local_error: str | None = None  # production.yaml could not be written after the alias moved


def stage(
    client: MlflowClient, search: SearchRecord, choice: Choice, model_name: str, alias: str, out_dir: Path
) -> Staged:
    """Read the chosen replicate's checkpoint, rebuild its model, and check that production.yaml can be written."""
    replicate = choice.replicate
    checkpoint_uri, digest, state, model, config = _read_checkpoint(client, replicate.run_id)
    production = production_config(config, state, search, choice, checkpoint_uri)
    identity = {names.CHECKPOINT_SHA256: digest, names.WEIGHTS_SHA256: weights_digest(model)}
    production["provenance"] |= {"registered_model": model_name, **identity}
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
    """Register the staged model as a new version and point the alias at it, recording the move: all or nothing.

    Promotions of one name take turns (`promotion_lock`); one that finds the alias moved since it
    was staged refuses, so a gate is never passed against a champion that is no longer there. When
    a version already holds this checkpoint, nothing is registered and the alias moves to it only
    if it points elsewhere. A failure or a signal on the way takes back everything written, the
    audit record, the logged model and the staged production.yaml included; after the alias has
    moved nothing can fail the command.
    """
    written: dict[str, Any] = {}
    with promotion_lock(client, staged.model_name):  # held through the undo: the next one sees it done
        try:
            return _promote_locked(client, staged, reason, gate, written)
        except BaseException as error:  # Ctrl+C and SIGTERM included: never leave a version the alias skipped
            forget_interrupts()  # this one is being handled
            with held_signals():  # a second Ctrl+C must not cut the undo short
                left = _undo(client, staged, written)
            if isinstance(error, SearchError) and not written:
                raise  # refused before anything was written: its own line says why
            alias, previous = staged.alias, staged.previous
            state_now = (
                f"registry left as it was (alias {alias!r} {'on version ' + previous if previous else 'unset'})"
                if not left
                else f"could not undo {', '.join(left)}: check the registry"
            )
            if not isinstance(error, Exception):
                raise CommandInterrupted(f"promotion interrupted, {state_now}") from None
            cause = f"{type(error).__name__}: {one_line(error)[:400]}"
            raise SearchError(f"promotion failed, {state_now}: {cause}") from None


def _promote_locked(client: MlflowClient, staged: Staged, reason: str, gate: str, written: dict[str, Any]) -> Promotion:
    """`promote` while holding the name's lock; what it writes goes into `written`, for the undo."""
    name, alias, previous = staged.model_name, staged.alias, staged.previous
    uri = f"models:/{name}@{alias}"
    now = alias_version(client, name, alias)
    if now != previous:
        raise SearchError(
            f"alias {alias!r} of {name} moved from {'version ' + previous if previous else 'unset'} to version {now} "
            "while this promotion was staged (another promotion): nothing written; run promote again to gate "
            f"against version {now}"
        )
    holding = version_holding(client, name, staged.choice.replicate.run_id)
    if holding is not None:
        moved_from = None if previous == str(holding.version) else (previous or "")
        written["staging"] = _stage_local(staged, str(holding.version))
        if moved_from is not None:
            written["record"] = record_move(client, name, alias, MOVE, previous, str(holding.version), reason, gate)
            raise_if_interrupted()  # a signal whose exception the record's HTTP call swallowed
            written["alias"] = holding.version  # before the call: a call cut short may still have moved it
            client.set_registered_model_alias(name, alias, holding.version)
        local, failed = _commit_local(staged, written)
        return Promotion(holding, uri, local, already=True, moved_from=moved_from, local_error=failed)

    mlflow.set_tracking_uri(client.tracking_uri)  # Model.log writes through the fluent API
    replicate = staged.choice.replicate
    written["logging"] = True  # from here a logged model may exist before its id is known
    info = log_model(
        staged.model,
        staged.labels,
        staged.config.data.image_size,
        replicate.run_id,
        staged.search.experiment_id,
        # The source run's Models tab lists it by what it is, not as one more "promoted-model".
        name=_logged_name(staged),
        created=lambda model_id: written.__setitem__("logged_model", model_id),  # undone from its creation
    )
    raise_if_interrupted()  # a signal whose exception the upload's code swallowed
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
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    provenance = staged.production["provenance"]
    identity = {k: provenance[k] for k in (names.CHECKPOINT_SHA256, names.WEIGHTS_SHA256)}
    version = client.create_model_version(
        name,
        source=f"models:/{info.model_id}",
        run_id=replicate.run_id,
        model_id=info.model_id,
        tags=version_tags(staged.search, staged.choice) | identity | {"gate": gate[:4000]},
        description=version_description(staged.search, staged.choice),
    )
    written["version"] = version.version
    raise_if_interrupted()
    with tempfile.TemporaryDirectory(prefix="promote-") as tmp:
        # The model's own copy names the version it became, so a downloaded copy still says so.
        packaged = Path(tmp) / PRODUCTION_YAML
        packaged.write_text(dump_yaml(_with_version(staged.production, str(version.version))))
        client.log_model_artifact(info.model_id, str(packaged))
    # The logged model names the version it became (the version already names the model).
    client.set_logged_model_tags(info.model_id, {"registered_model": name, "registered_version": version.version})
    for key, value in registered_model_tags(staged.search).items():
        client.set_registered_model_tag(name, key, value)
    written["staging"] = _stage_local(staged, str(version.version))
    raise_if_interrupted()  # the last chance: after the alias moves, the promotion is done
    written["record"] = record_move(client, name, alias, PROMOTE, previous, str(version.version), reason, gate)
    client.set_registered_model_alias(name, alias, version.version)  # the last registry step
    local, failed = _commit_local(staged, written)
    return Promotion(version, uri, local, local_error=failed)


def _logged_name(staged: Staged) -> str:
    """The logged model's name in its source run's Models tab: `c004-seed0`."""
    return f"{staged.choice.result.configuration}-seed{staged.choice.replicate.seed}"


def _with_version(production: dict[str, Any], version: str) -> dict[str, Any]:
    """production.yaml's settings naming the registered version."""
    return production | {"provenance": production["provenance"] | {"registered_version": version}}


def _stage_local(staged: Staged, version: str) -> Path:
    """production.yaml written whole beside its place, under a name of this promotion's own."""
    text = dump_yaml(_with_version(staged.production, version))
    with tempfile.NamedTemporaryFile(
        "w", dir=staged.local.parent, prefix=".production-", suffix=".yaml.tmp", delete=False
    ) as handle:
        handle.write(text)
    return Path(handle.name)


def _commit_local(staged: Staged, written: dict[str, Any]) -> tuple[Path, str | None]:
    """The staged production.yaml renamed into place; after the alias moved, a failure is a warning, not an error."""
    staging = written.pop("staging")
    try:
        os.replace(staging, staged.local)
        return staged.local, None
    except OSError as error:
        staging.unlink(missing_ok=True)
        return staged.local, f"could not write {staged.local} ({error.strerror or error})"


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


def _read_checkpoint(client: MlflowClient, run_id: str) -> tuple[str, str, dict[str, Any], Any, TrialConfig]:
    """The child run's checkpoint, checked to be that run's: URI, SHA-256, state, the model rebuilt, its config."""
    tags = client.get_run(run_id).data.tags
    uri = tags.get(names.CHECKPOINT_URI)
    if not uri:
        raise SearchError(
            f"child run {run_id} records no checkpoint_uri tag (a search from before checkpoints were "
            "tagged); promote a configuration of a newer search"
        )
    try:
        state, digest = read_checkpoint(uri)
    except CheckpointError as error:  # missing, truncated or foreign: its message names the path
        raise SearchError(f"checkpoint of child run {run_id}: {one_line(error)[:1000]}") from None
    owner = (state.get("tracking") or {}).get("mlflow_run_id")
    if owner and owner != run_id:  # a file copied or moved from another trial's folder
        raise SearchError(
            f"the checkpoint at {uri} is {_describe_run(client, owner)}'s, not {_describe_run(client, run_id)}'s: "
            "it was swapped; restore the trial's own state.pt or promote another configuration"
        )
    recorded = tags.get(names.CHECKPOINT_SHA256)
    if recorded and recorded != digest:
        raise SearchError(
            f"the checkpoint at {uri} has SHA-256 {digest[:16]}..., not the {recorded[:16]}... that "
            f"{_describe_run(client, run_id)} recorded as it ended: the file was replaced; restore it or promote "
            "another configuration"
        )
    try:
        model, config = restore_model(state)
    except Exception as error:  # an older checkpoint format, or weights of another model
        raise SearchError(
            f"checkpoint of child run {run_id} at {uri} cannot be rebuilt: {one_line(error)[:300]}"
        ) from None
    return uri, digest, state, model, config


def _describe_run(client: MlflowClient, run_id: str) -> str:
    """'child run ID (configuration c004, seed 0)', or the bare id of a run the store no longer has."""
    try:
        tags = client.get_run(run_id).data.tags
    except MlflowException:
        return f"run {run_id}"
    return f"child run {run_id} (configuration {tags.get(names.CONFIGURATION, '?')}, seed {tags.get(names.SEED, '?')})"


def _undo(client: MlflowClient, staged: Staged, written: dict[str, Any]) -> list[str]:
    """Take back what a failed promotion wrote, newest first; name what could not be taken back."""
    name, alias, previous = staged.model_name, staged.alias, staged.previous
    left: list[str] = []

    def attempt(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception:  # the failure may be the server itself
            left.append(what)

    if "staging" in written:
        attempt(f"staged file {written['staging']}", lambda: written["staging"].unlink(missing_ok=True))
    if "alias" in written and "version" not in written:  # a move to an existing version: put it back
        attempt(f"alias {alias!r}", lambda: _restore_alias(client, name, alias, previous))
    if "record" in written:
        attempt(f"audit record {written['record']}", lambda: delete_record(client, written["record"]))
    if "version" in written:
        # Deleting the version also drops the alias if it had moved there.
        attempt(f"version {written['version']}", lambda: client.delete_model_version(name, written["version"]))
        if previous:
            attempt(f"alias {alias!r} on version {previous}", lambda: _restore_alias(client, name, alias, previous))
    if "registered_model" in written:
        attempt(f"registered model {name}", lambda: _delete_if_unused(client, name))
    if "logged_model" in written:
        attempt(f"logged model {written['logged_model']}", lambda: client.delete_logged_model(written["logged_model"]))
    if "logging" in written:
        attempt("unfinished logged models", lambda: _delete_unfinished(client, staged))
    return left


def _restore_alias(client: MlflowClient, name: str, alias: str, previous: str | None) -> None:
    if previous:
        client.set_registered_model_alias(name, alias, previous)
    else:
        client.delete_registered_model_alias(name, alias)


def _delete_unfinished(client: MlflowClient, staged: Staged) -> None:
    """Logged models of this name in the source run that never became READY: uploads a signal or a kill cut short."""
    run_id = staged.choice.replicate.run_id
    found = client.search_logged_models(
        [staged.search.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{_logged_name(staged)}'"
    )
    for model in found:
        if "READY" not in str(model.status):  # a LoggedModelStatus
            client.delete_logged_model(model.model_id)


def _delete_if_unused(client: MlflowClient, model_name: str) -> None:
    # Another promotion may have registered a version meanwhile: then the model stays.
    if not client.search_model_versions(f"name = '{model_name}'"):
        client.delete_registered_model(model_name)
