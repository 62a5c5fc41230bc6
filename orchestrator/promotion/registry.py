"""The MLflow Model Registry as promotion and evaluation use it: names, aliases, versions."""

from __future__ import annotations

from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.errors import SearchError
from orchestrator.promotion.lock import LOCK_SUFFIX


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
    _check_uri_safe(model_name)


# Characters MLflow accepts in a name but that break what is printed for it: `models:/NAME@ALIAS`
# reads '@' as the alias, '#' and '?' as a URL's fragment and query, '%' as an escape.
_URI_CHARACTERS = "@#?%\\"


def _check_uri_safe(model_name: str) -> None:
    """Refuse a model name that MLflow would store but that its URIs, or the servers' logs, would mangle."""
    bad = [c for c in model_name if not c.isprintable() or c in _URI_CHARACTERS]
    if bad:
        shown = ", ".join(dict.fromkeys(repr(c) for c in bad))
        raise SearchError(
            f"model name {model_name!r} holds {shown}: models:/NAME@ALIAS URIs would not load it; use letters, "
            "digits, '-', '_', '.' and spaces"
        )
    if model_name != model_name.strip():
        raise SearchError(f"model name {model_name!r} starts or ends with a space, which MLflow's UI and URIs drop")
    if model_name.endswith(LOCK_SUFFIX):
        raise SearchError(f"model name {model_name!r} ends with {LOCK_SUFFIX!r}, which names promotion locks")


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
        found = client.search_registered_models(max_results=50)
        registered = [m.name for m in found if not m.name.endswith(LOCK_SUFFIX)][:20]
        raise SearchError(
            f"no registered model version {model_uri} ({error.message.split('.')[0]}); registered models: "
            f"{', '.join(registered) or 'none'}"
        ) from None


def load_version_module(version: ModelVersion) -> Any:
    """The torch module of a registered version, checked against the weights digest recorded at promotion."""
    import mlflow.pytorch

    from orchestrator import names
    from trainables.checkpoint import weights_digest

    module = mlflow.pytorch.load_model(f"models:/{version.name}/{version.version}", map_location="cpu").eval()
    recorded = version.tags.get(names.WEIGHTS_SHA256)
    found = weights_digest(module)
    if recorded and found != recorded:
        raise SearchError(
            f"version {version.version} of {version.name} loads weights with SHA-256 {found[:16]}..., not the "
            f"{recorded[:16]}... recorded when it was promoted: its model files were changed; promote it again "
            "from its checkpoint"
        )
    return module
