"""Re-evaluating a registered model: its objectives now, beside those recorded when it was promoted.

Each evaluation is itself an MLflow run (`log_evaluation`), in the experiment `<model name>-evaluations`,
tagged with the version it scored, so a model's evaluations over time sit in one runs table.

The model is loaded from the registry, its data rebuilt from its `production.yaml` (or other
folders), and scored by the one evaluation a trial uses (`trainables.evaluate`), whatever the model's
head. For a model trained and evaluated on the CPU the numbers agree exactly where nothing changed;
a GPU trial's evaluation ran other kernels (and AMP), so its numbers may differ in the last digits.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.errors import SearchError
from orchestrator.promotion.records import PRODUCTION_YAML
from orchestrator.promotion.registry import load_version_module, resolve_version
from trainables.config import TrialConfig
from trainables.files import read_settings
from trainables.messages import one_line


@dataclass(frozen=True)
class Evaluation:
    """A registered model's metrics now, beside the ones recorded when it was promoted."""

    version: ModelVersion
    provenance: dict[str, Any]
    now: dict[str, float]  # every metric a trial's last epoch logs

    @property
    def recorded(self) -> dict[str, float]:
        """The promoted replicate's metrics at promotion (accuracy, shape bias, held-out shape bias)."""
        return dict(self.provenance["metrics"]["replicate"])


def evaluate(
    client: MlflowClient, model_uri: str, stimuli_dir: Path | None = None, data_dir: Path | None = None
) -> Evaluation:
    """Recompute a registered model's metrics on its data (or the folders given)."""
    import torch

    from trainables.evaluate import evaluate as evaluate_model
    from trainables.evaluate import model_outputs

    version = resolve_version(client, model_uri)
    raw = production_settings(client, version, model_uri)
    config = TrialConfig.model_validate(raw, context={"check_paths": False})
    try:
        data = config.data.for_evaluation(stimuli_dir=stimuli_dir, test_dir=data_dir)
        # Validated again with the paths checked: the data must exist here.
        config = TrialConfig.model_validate(config.model_copy(update={"data": data}).model_dump(mode="json"))
    except ValueError as error:  # pydantic's ValidationError is one too
        raise SearchError(f"cannot evaluate {model_uri}: {one_line(error)}") from None

    if config.training.threads > 0:
        torch.set_num_threads(config.training.threads)  # the trial's own count: results depend on it
    model = load_version_module(version)
    trial_data = config.data.build(config.training.batch_size, config.seed, augment=False)
    outputs = model_outputs(config.model.head, trial_data)
    recorded_classes = raw["provenance"].get("class_names")
    if recorded_classes and list(outputs.class_names) != recorded_classes:
        raise SearchError(
            f"the data's classes {list(outputs.class_names)[:20]} are not the model's {recorded_classes[:20]}"
        )
    evaluation = evaluate_model(model, trial_data, outputs, device="cpu", detailed=True, subject=config.model.arch)
    return Evaluation(version, raw["provenance"], evaluation.metrics)


def production_settings(client: MlflowClient, version: ModelVersion, model_uri: str) -> dict[str, Any]:
    """The version's `production.yaml` as plain settings; SearchError if it has none."""
    mlflow.set_tracking_uri(client.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                f"models:/{version.name}/{version.version}/{PRODUCTION_YAML}", dst_path=tmp
            )
        except MlflowException:
            raise SearchError(
                f"{model_uri} (version {version.version}) has no {PRODUCTION_YAML}: it was not "
                "registered by `run_search.py promote`"
            ) from None
        return read_settings(Path(path))


def log_evaluation(
    client: MlflowClient, result: Evaluation, model_uri: str, stimuli_dir: Path | None, data_dir: Path | None
) -> str:
    """Record an evaluation as a run of `<model name>-evaluations`, linked to its version both ways; its run id."""
    from mlflow.entities import Param

    from orchestrator import names
    from orchestrator.tracking import experiment_id
    from trainables.tracking import log_metrics

    version = result.version
    experiment = experiment_id(client, f"{version.name}-evaluations")
    tags = {
        names.MLFLOW_RUN_NAME: f"v{version.version}-evaluation",
        "registered_model": version.name,
        "registered_version": str(version.version),
        "model_uri": model_uri,
        "source_run_id": str(result.provenance.get("source_run_id", "")),
    }
    run = client.create_run(experiment, tags=tags)
    metrics = {**result.now, **{f"recorded.{k}": float(v) for k, v in result.recorded.items()}}
    params = [
        Param("stimuli", str(stimuli_dir) if stimuli_dir else "as trained"),
        Param("data", str(data_dir) if data_dir else "as trained"),
    ]
    try:
        client.log_batch(run.info.run_id, params=params)
        log_metrics(client, run.info.run_id, metrics)
        client.set_model_version_tag(version.name, str(version.version), "last_evaluation_run_id", run.info.run_id)
    except MlflowException:
        client.set_terminated(run.info.run_id, status="FAILED")  # never left RUNNING
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")
    return str(run.info.run_id)
