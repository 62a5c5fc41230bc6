"""The MLflow Model Registry as promotion and evaluation use it: names, aliases, versions."""

from __future__ import annotations

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.errors import SearchError


def default_model_name(experiment: str, arch: str = "resnet18") -> str:
    """`sparse-<arch>-<experiment>`: what a promotion registers under unless told otherwise."""
    return f"sparse-{arch}-{experiment}"


def check_registry_names(model_name: str, alias: str) -> None:
    """The registry's own rules for a model name and an alias, applied before anything is written."""
    # MLflow has no public validator; the server applies these same functions, so checking with
    # them here refuses exactly what it would refuse, before anything is written.
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


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version `alias` points at, or None (no such model or alias yet)."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def resolve_version(client: MlflowClient, model_uri: str) -> ModelVersion:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> the registered version; SearchError if none."""
    if not model_uri.startswith("models:/"):
        raise SearchError(
            f"--model {model_uri!r}: expected a registered model, models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    reference = model_uri[len("models:/") :]
    try:
        if "@" in reference:
            name, alias = reference.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, number = reference.partition("/")
        return client.get_model_version(name, number)
    except MlflowException as error:
        registered = [m.name for m in client.search_registered_models(max_results=20)]
        raise SearchError(
            f"no registered model version {model_uri} ({error.message.split('.')[0]}); registered models: "
            f"{', '.join(registered) or 'none'}"
        ) from None
