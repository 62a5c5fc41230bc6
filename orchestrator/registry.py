"""Promotion to the MLflow Model Registry, and re-evaluation of a registered model.

`promote` takes a chosen configuration (`orchestrator.choice`), rebuilds its representative
replicate from the checkpoint its child run points at, logs it as a model of that run with a
`production.yaml` beside it (a trial config that retrains it exactly, plus where it came from),
registers a new version, and moves the alias to it last. Names are checked and the local file is
staged before anything is written; a failure after that undoes what was written (the version, the
alias's old place, a registered model it created, the logged model) and says if it could not.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow
import yaml
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.choice import Choice
from orchestrator.pareto import ConfigurationResult
from orchestrator.serving import log_model
from orchestrator.tracking import SearchError, SearchRecord, git_commit, package_versions
from search_spaces.params import OBJECTIVES
from trainables.checkpoint import CheckpointError, load_checkpoint, restore_model
from trainables.config import TrialConfig, read_yaml
from trainables.trial import one_line

PROMOTED_MODEL = "promoted-model"  # the logged model's name in the source run's Models tab


def default_model_name(experiment: str) -> str:
    return f"sparse-resnet18-{experiment}"


@dataclass(frozen=True)
class Promotion:
    version: ModelVersion
    model_uri: str
    production_yaml: Path


def check_registry_names(model_name: str, alias: str) -> None:
    """The registry's own rules for a model name and an alias, applied before anything is written."""
    from mlflow.utils.validation import (
        _validate_model_alias_name,
        _validate_model_alias_name_reserved,
        _validate_model_name,
    )

    try:
        _validate_model_name(model_name)
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
    except MlflowException as error:
        raise SearchError(f"{error.message} (model name {model_name!r}, alias {alias!r})") from None


def promote(
    client: MlflowClient, search: SearchRecord, choice: Choice, model_name: str, alias: str, out_dir: Path
) -> Promotion:
    """Register the chosen replicate's model as a new version of `model_name` and point `alias` at it."""
    replicate = choice.replicate
    checkpoint_uri, state, model, config = _read_checkpoint(client, replicate.run_id)
    production = production_config(config, state, search, choice, checkpoint_uri)
    local = out_dir / "production.yaml"
    staged = local.with_suffix(".yaml.tmp")
    try:  # the local file is staged first: an unwritable --out fails before the registry is touched
        out_dir.mkdir(parents=True, exist_ok=True)
        staged.write_text(dump_yaml(production))
    except OSError as error:
        raise SearchError(f"cannot write production.yaml in {out_dir}: {error.strerror or error}") from None
    previous = _alias_version(client, model_name, alias)

    written: dict[str, Any] = {}
    try:
        mlflow.set_tracking_uri(client.tracking_uri)  # Model.log writes through the fluent API
        with tempfile.TemporaryDirectory(prefix="promote-") as tmp:
            packaged = Path(tmp) / "production.yaml"  # the model's copy, under its final name
            packaged.write_text(staged.read_text())
            info = log_model(model, state["labels"], config.data.image_size, replicate.run_id, search.experiment_id,
                             extra_files=[packaged], name=PROMOTED_MODEL)
        written["logged_model"] = info.model_id
        try:
            client.create_registered_model(model_name, description=(
                f"Sparse ResNet-18 promoted from sparse-shape-search experiment {search.experiment_name!r}."))
            written["registered_model"] = model_name
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":  # another promotion may have made it
                raise
        version = client.create_model_version(
            model_name, source=f"models:/{info.model_id}", run_id=replicate.run_id, model_id=info.model_id,
            tags=version_tags(search, choice), description=version_description(search, choice),
        )
        written["version"] = version.version
        client.set_registered_model_alias(model_name, alias, version.version)  # the last step
    except BaseException as error:  # Ctrl+C included: never leave a version the alias skipped
        left = _undo(client, model_name, alias, previous, written)
        staged.unlink(missing_ok=True)
        if not isinstance(error, Exception):
            raise
        state_now = (f"registry left as it was (alias {alias!r} {'on version ' + previous if previous else 'unset'})"
                     if not left else f"could not undo {', '.join(left)}: check the registry")
        raise SearchError(f"promotion failed, {state_now}: {type(error).__name__}: "
                          f"{one_line(error)[:400]}") from None
    os.replace(staged, local)  # never a half-written production.yaml
    return Promotion(version, f"models:/{model_name}@{alias}", local)


def _read_checkpoint(client: MlflowClient, run_id: str) -> tuple[str, dict[str, Any], Any, TrialConfig]:
    """The child run's checkpoint: its URI, its state, the model rebuilt from it and its config."""
    uri = client.get_run(run_id).data.tags.get("checkpoint_uri")
    if not uri:
        raise SearchError(f"child run {run_id} records no checkpoint_uri tag (a search from before checkpoints were "
                          "tagged); promote a configuration of a newer search")
    try:
        state = load_checkpoint(uri)
    except CheckpointError as error:  # missing, truncated or foreign: its message names the path
        raise SearchError(f"checkpoint of child run {run_id}: {one_line(error)[:1000]}") from None
    try:
        model, config = restore_model(state)
    except Exception as error:  # an older checkpoint format, or weights of another model
        raise SearchError(f"checkpoint of child run {run_id} at {uri} cannot be rebuilt: {one_line(error)[:300]}") from None
    return uri, state, model, config


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None  # no such model or alias yet


def _exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def _undo(client: MlflowClient, model_name: str, alias: str, previous: str | None, written: dict[str, Any]) -> list[str]:
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
            attempt(f"alias {alias!r} on version {previous}", lambda: client.set_registered_model_alias(model_name, alias, previous))
    if "registered_model" in written:
        attempt(f"registered model {model_name}", lambda: _delete_if_unused(client, model_name))
    if "logged_model" in written:
        attempt(f"logged model {written['logged_model']}", lambda: client.delete_logged_model(written["logged_model"]))
    return left


def _delete_if_unused(client: MlflowClient, model_name: str) -> None:
    # Another promotion may have registered a version meanwhile: then the model stays.
    if not client.search_model_versions(f"name = '{model_name}'"):
        client.delete_registered_model(model_name)


def _summary(result: ConfigurationResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "configuration": result.configuration,
        **{m: {"mean": result.mean(m), "std": result.std(m)} for m in OBJECTIVES},
        **({"shape_bias_holdout": {"mean": result.shape_bias_holdout, "std": result.shape_bias_holdout_std}}
           if result.has_holdout else {}),
        "seeds": [r.seed for r in result.replicates],
        "run_ids": list(result.run_ids),
    }


def production_config(
    config: TrialConfig, state: dict[str, Any], search: SearchRecord, choice: Choice, checkpoint_uri: str
) -> dict[str, Any]:
    """The trial config that retrains the promoted model exactly, with its provenance."""
    replicate = choice.replicate
    # The thread count the trial really used: results depend on it, and 0 means "Ray's allocation".
    training = config.training.model_copy(update={"threads": int(state.get("threads", config.training.threads))})
    # The digests the search took when it started: the data as it was trained on, not as it is now.
    data_fingerprint = search.data_digests or "not recorded (a search from before data digests were kept)"
    provenance = {
        "search_id": search.search_id,
        "experiment": search.experiment_name,
        "parent_run_id": search.run_id,
        "configuration": choice.result.configuration,
        "seed": replicate.seed,
        "class_names": list(state["labels"]["class_names"]),
        "source_run_id": replicate.run_id,
        "checkpoint_uri": checkpoint_uri,
        "chosen_by": choice.reason,
        "on_front": choice.on_front,
        "metrics": {
            **_summary(choice.result),
            "replicate": {"accuracy": replicate.accuracy, "shape_bias": replicate.shape_bias},
        },
        "dense_reference": _summary(choice.dense),
        "data_fingerprint": data_fingerprint,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "promoted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    trial = config.model_copy(update={"training": training, "provenance": provenance})
    return trial.model_dump(mode="json")


def version_tags(search: SearchRecord, choice: Choice) -> dict[str, str]:
    """Tags of a promoted version: where it came from and how it scored, with spread."""
    r, dense = choice.result, choice.dense
    tags = {
        "search_id": search.search_id,
        "configuration": r.configuration,
        "seed": str(choice.replicate.seed),
        "source_run_id": choice.replicate.run_id,
        "placement": r.params.placement,
        "fraction": r.params.fraction_label(6) if r.params.fractions else str(r.params.fraction),
        "on_front": "yes" if choice.on_front else "no",
        "git_commit": git_commit(),
    }
    for m in OBJECTIVES:
        tags[f"{m}_mean"], tags[f"{m}_std"] = f"{r.mean(m):.4f}", f"{r.std(m):.4f}"
        tags[f"{m}_replicate"] = f"{getattr(choice.replicate, m):.4f}"
        if dense is not None:
            tags[f"dense_{m}_mean"], tags[f"dense_{m}_std"] = f"{dense.mean(m):.4f}", f"{dense.std(m):.4f}"
    if r.has_holdout:  # on the report set, which nothing selected on: the number to quote
        tags["shape_bias_holdout_mean"], tags["shape_bias_holdout_std"] = f"{r.shape_bias_holdout:.4f}", f"{r.shape_bias_holdout_std:.4f}"
    return tags


def version_description(search: SearchRecord, choice: Choice) -> str:
    r, dense = choice.result, choice.dense
    what = "dense ResNet-18 (no Top-K)" if r.dense else f"Top-K {r.params.fraction_label()} after {r.params.placement}"
    text = (f"{what}: configuration {r.configuration} of search {search.search_id}, seed {choice.replicate.seed} "
            f"(child run {choice.replicate.run_id}). Accuracy {r.accuracy:.4f} +- {r.accuracy_std:.4f}, shape bias "
            f"{r.shape_bias:.4f} +- {r.shape_bias_std:.4f} over {r.seeds} seeds")
    if r.has_holdout:
        text += f" (held out: {r.shape_bias_holdout:.4f} +- {r.shape_bias_holdout_std:.4f})"
    if dense is not None:
        text += f"; dense reference {dense.accuracy:.4f} / {dense.shape_bias:.4f}"
    return text + f". On the Pareto front: {'yes' if choice.on_front else 'no'}. Chosen by {choice.reason}."


def dump_yaml(config: dict[str, Any]) -> str:
    header = ("# A promoted model's trial config: `python -m trainables.trial --config production.yaml` retrains it.\n"
              "# `provenance` records where it came from; training ignores it.\n")
    return header + yaml.safe_dump(config, sort_keys=False)


@dataclass(frozen=True)
class Evaluation:
    """A registered model's objectives now, beside the ones recorded when it was promoted."""

    version: ModelVersion
    provenance: dict[str, Any]
    now: dict[str, float]

    @property
    def recorded(self) -> dict[str, float]:
        return self.provenance["metrics"]["replicate"]


def evaluate(client: MlflowClient, model_uri: str, stimuli_dir: Path | None = None, data_dir: Path | None = None) -> Evaluation:
    """Recompute accuracy and shape bias of a registered model on its data (or the folders given)."""
    import torch

    from trainables.config import FolderData
    from trainables.cue_conflict import evaluate_shape_bias
    from trainables.data import build_data
    from trainables.train import accuracy

    version = resolve_version(client, model_uri)
    mlflow.set_tracking_uri(client.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}/production.yaml", dst_path=tmp)
        except MlflowException:
            raise SearchError(f"{model_uri} (version {version.version}) has no production.yaml: it was not registered by "
                              "`run_search.py promote`") from None
        raw = read_yaml(Path(path))
    config = TrialConfig.model_validate(raw, context={"check_paths": False})
    data = config.data
    if data_dir is not None:
        if not isinstance(data, FolderData):
            raise SearchError(f"--data {data_dir}: this model was trained on the synthetic benchmark, which is "
                              "generated from its settings; --data takes a class-folder tree for folder-trained models")
        data = data.model_copy(update={"test_dir": data_dir})
    if stimuli_dir is not None:
        if not isinstance(data, FolderData):
            raise SearchError(f"--stimuli {stimuli_dir}: this model was trained on the synthetic benchmark, whose "
                              "cue-conflict images are generated; --stimuli applies to folder-trained models")
        data = data.model_copy(update={"stimuli_dir": stimuli_dir})
    try:
        # Validated again with the paths checked: the data must exist here.
        config = TrialConfig.model_validate(config.model_copy(update={"data": data}).model_dump(mode="json"))
    except Exception as error:
        raise SearchError(f"cannot evaluate {model_uri}: {one_line(error)}") from None

    if config.training.threads > 0:
        torch.set_num_threads(config.training.threads)  # the trial's own count: results depend on it
    model = mlflow.pytorch.load_model(f"models:/{version.name}/{version.version}", map_location="cpu").eval()
    trial_data = build_data(config.data, config.training.batch_size, config.seed, augment=False)
    recorded_classes = raw["provenance"].get("class_names")
    if recorded_classes and list(trial_data.class_names) != recorded_classes:
        raise SearchError(f"the data's classes {list(trial_data.class_names)} are not the model's {recorded_classes}")
    bias, _ = evaluate_shape_bias(model, trial_data.stimuli, trial_data.mapping, trial_data.image_size)
    now = {
        "accuracy": accuracy(model, trial_data.test_images, trial_data.test_labels, trial_data.image_size, torch.device("cpu")),
        "shape_bias": bias.shape_bias,
    }
    return Evaluation(version, raw["provenance"], now)


def resolve_version(client: MlflowClient, model_uri: str) -> ModelVersion:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> the registered version; SearchError if none."""
    if not model_uri.startswith("models:/"):
        raise SearchError(f"--model {model_uri!r}: expected a registered model, models:/NAME@ALIAS or models:/NAME/VERSION")
    reference = model_uri[len("models:/"):]
    try:
        if "@" in reference:
            name, alias = reference.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, number = reference.partition("/")
        return client.get_model_version(name, number)
    except MlflowException as error:
        names = [m.name for m in client.search_registered_models(max_results=20)]
        raise SearchError(f"no registered model version {model_uri} ({error.message.split('.')[0]}); registered models: "
                          f"{', '.join(names) or 'none'}") from None
