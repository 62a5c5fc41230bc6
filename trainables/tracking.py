"""`python -m trainables.trial --track`: one trial run outside a search, logged as an MLflow run of its own.

A retrain from a promoted model's `production.yaml` carries that model's provenance; the run is
tagged with it (`retrain_of.*`: source run, search, configuration, seed, registered model and
version), so the retrain and the run it retrains sit side by side in MLflow, and the command
prints its last epoch beside the figures recorded at promotion.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from trainables.config import TrialConfig
from trainables.messages import one_line

DEFAULT_EXPERIMENT = "trials"
_PROVENANCE_TAGS = (
    "source_run_id",
    "search_id",
    "experiment",
    "configuration",
    "seed",
    "registered_model",
    "registered_version",
)


def tracking_uri(given: str | None) -> str:
    """The tracking URI as the search commands take it: given, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: `training.lr` -> '0.1'."""
    flat: dict[str, str] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = str(value)[:6000]
    return flat


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log metrics at one step and one timestamp, the finite ones, in batches MLflow accepts."""
    now = int(time.time() * 1000)
    finite = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
    for start in range(0, len(finite), 1000):  # MLflow takes at most 1000 metrics a batch
        client.log_batch(run_id, metrics=finite[start : start + 1000])


class RunTracker:
    """The `trainables.trial.Tracker` of a trial run from the command line: one MLflow run, FINISHED or FAILED."""

    def __init__(self, uri: str, experiment: str | None, run_name: str | None) -> None:
        self.client = MlflowClient(uri)
        self.experiment, self.run_name = experiment, run_name
        self.run_id = ""

    def start(self, config: TrialConfig, saved: dict[str, Any]) -> dict[str, Any]:
        """Create the run: the config as params, the provenance it retrains as tags."""
        provenance = config.provenance
        name = self.experiment or (f"{provenance['experiment']}-retrains" if "experiment" in provenance else None)
        experiment = self.client.get_experiment_by_name(name or DEFAULT_EXPERIMENT)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(name or DEFAULT_EXPERIMENT)
        )
        tags = {f"retrain_of.{k}": str(provenance[k]) for k in _PROVENANCE_TAGS if k in provenance}
        if self.run_name or "configuration" in provenance:
            default = f"{provenance.get('configuration')}-seed{provenance.get('seed')}-retrain"
            tags["mlflow.runName"] = self.run_name or default
        run = self.client.create_run(experiment_id, tags=tags)
        self.run_id = run.info.run_id
        params = flatten(config.model_dump(mode="json", exclude={"provenance"}))
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        return {}

    def log_epoch(self, metrics: dict[str, float], files: dict[str, str] | None = None) -> dict[str, float | str]:
        """One epoch's metrics at step = epoch, and its decision files as text artifacts."""
        log_metrics(self.client, self.run_id, metrics, step=int(metrics["epoch"]))
        for name, text in (files or {}).items():
            self.client.log_text(self.run_id, text, name)
        return {}

    def finish(self, error: BaseException | None, checkpoint_uri: str | None = None) -> None:
        """Close the run: FINISHED, KILLED on Ctrl+C, else FAILED with the error as a tag."""
        if not self.run_id:
            return
        if error is None:
            if checkpoint_uri:
                from trainables.checkpoint import checkpoint_digest

                tags = [
                    RunTag("checkpoint_uri", checkpoint_uri),
                    RunTag("checkpoint_sha256", checkpoint_digest(checkpoint_uri)),
                ]
                self.client.log_batch(self.run_id, tags=tags)
            self.client.set_terminated(self.run_id, status="FINISHED")
            return
        if isinstance(error, KeyboardInterrupt):
            self.client.set_terminated(self.run_id, status="KILLED")
            return
        self.client.log_batch(self.run_id, tags=[RunTag("error", f"{type(error).__name__}: {one_line(error)}"[:5000])])
        self.client.set_terminated(self.run_id, status="FAILED")
