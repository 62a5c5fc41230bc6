"""Promotion to the MLflow Model Registry: one chosen replicate's model, a new version, the alias moved.

`promote` takes a chosen configuration (`orchestrator.promotion.choice`), rebuilds its
representative replicate from the checkpoint its child run points at, logs it as a model of that
run with a `production.yaml` beside it (`orchestrator.promotion.records`), registers a new version,
and moves the alias to it last. Names are checked and the local file is staged before anything is
written; a failure after that undoes what was written (the version, the alias's old place, a
registered model it created, the logged model) and says if it could not.
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
from orchestrator.errors import SearchError
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
from trainables.messages import one_line


@dataclass(frozen=True)
class Promotion:
    """A registered version, the URI that loads it, and the local `production.yaml`."""

    version: ModelVersion | None  # None for a dry run
    model_uri: str
    production_yaml: Path
    # Set when a version of this name already held the checkpoint: nothing was registered, and the
    # alias moved from this version ("" if it was unset; None if it already pointed there).
    already: bool = False
    moved_from: str | None = None


def promote(
    client: MlflowClient,
    search: SearchRecord,
    choice: Choice,
    model_name: str,
    alias: str,
    out_dir: Path,
    dry_run: bool = False,
) -> Promotion:
    """Register the chosen replicate's model as a new version of `model_name` and point `alias` at it.

    `dry_run` does everything before the registry (rebuild the model, stage `production.yaml`, kept
    as `production.dry-run.yaml`) and writes nothing to MLflow.
    """
    replicate = choice.replicate
    checkpoint_uri, state, model, config = _read_checkpoint(client, replicate.run_id)
    production = production_config(config, state, search, choice, checkpoint_uri)
    local = out_dir / PRODUCTION_YAML
    staged = local.with_suffix(".yaml.tmp")
    try:  # the local file is staged first: an unwritable --out fails before the registry is touched
        out_dir.mkdir(parents=True, exist_ok=True)
        staged.write_text(dump_yaml(production))
    except OSError as error:
        raise SearchError(f"cannot write production.yaml in {out_dir}: {error.strerror or error}") from None
    previous = alias_version(client, model_name, alias)
    holding = version_holding(client, model_name, replicate.run_id)
    if holding is not None and not dry_run:
        # The same checkpoint again: register nothing new; move the alias only if it points elsewhere.
        moved_from = None if previous == str(holding.version) else (previous or "")
        if moved_from is not None:
            client.set_registered_model_alias(model_name, alias, holding.version)
        os.replace(staged, local)
        return Promotion(holding, f"models:/{model_name}@{alias}", local, already=True, moved_from=moved_from)
    if dry_run:
        kept = out_dir / DRY_RUN_YAML
        os.replace(staged, kept)
        return Promotion(None, f"models:/{model_name}@{alias}", kept)

    written: dict[str, Any] = {}
    try:
        mlflow.set_tracking_uri(client.tracking_uri)  # Model.log writes through the fluent API
        with tempfile.TemporaryDirectory(prefix="promote-") as tmp:
            packaged = Path(tmp) / PRODUCTION_YAML  # the model's copy, under its final name
            packaged.write_text(staged.read_text())
            info = log_model(
                model,
                state["labels"],
                config.data.image_size,
                replicate.run_id,
                search.experiment_id,
                extra_files=[packaged],
                # The source run's Models tab lists it by what it is, not as one more "promoted-model".
                name=f"{choice.result.configuration}-seed{replicate.seed}",
            )
        written["logged_model"] = info.model_id
        try:
            client.create_registered_model(
                model_name,
                description=(
                    f"Sparse {search.arch} promoted from sparse-shape-search experiment {search.experiment_name!r}."
                ),
            )
            written["registered_model"] = model_name
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":  # another promotion may have made it
                raise
        version = client.create_model_version(
            model_name,
            source=f"models:/{info.model_id}",
            run_id=replicate.run_id,
            model_id=info.model_id,
            tags=version_tags(search, choice),
            description=version_description(search, choice),
        )
        written["version"] = version.version
        # The logged model names the version it became (the version already names the model).
        client.set_logged_model_tags(
            info.model_id, {"registered_model": model_name, "registered_version": version.version}
        )
        for key, value in registered_model_tags(search).items():
            client.set_registered_model_tag(model_name, key, value)
        client.set_registered_model_alias(model_name, alias, version.version)  # the last step
    except BaseException as error:  # Ctrl+C included: never leave a version the alias skipped
        left = _undo(client, model_name, alias, previous, written)
        staged.unlink(missing_ok=True)
        if not isinstance(error, Exception):
            raise
        state_now = (
            f"registry left as it was (alias {alias!r} {'on version ' + previous if previous else 'unset'})"
            if not left
            else f"could not undo {', '.join(left)}: check the registry"
        )
        raise SearchError(f"promotion failed, {state_now}: {type(error).__name__}: {one_line(error)[:400]}") from None
    os.replace(staged, local)  # never a half-written production.yaml
    return Promotion(version, f"models:/{model_name}@{alias}", local)


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
