"""The worker side of a search: the Tune trainable, and the MLflow child run it writes.

Ray's MLflow integrations neither nest runs nor reattach after a restart, so the tracker does
both with the plain `MlflowClient`. Child runs are written from the workers (which get the
tracking URI from the Ray runtime environment); their run id travels in the trial checkpoint,
and a restarted trial without a checkpoint finds its run by configuration and seed instead.
"""

from __future__ import annotations

import time
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray import tune

from search_spaces.params import Params
from trainables.config import TrialConfig
from trainables.trial import train_trial


def search_trial(config: dict[str, Any], parent_run_id: str, experiment: str) -> None:
    """The Tune trainable of a search: one trial, logged as a child of the search's MLflow run."""
    tracker = MLflowTrialTracker(parent_run_id, experiment, tune.get_context().get_trial_id(), config)
    train_trial(config["trial"], tracker)


class MLflowTrialTracker:
    """The `trainables.trial.Tracker` that logs one Ray trial as a child run of the search."""

    def __init__(self, parent_run_id: str, experiment: str, ray_trial_id: str, search_config: dict[str, Any]) -> None:
        self.parent_run_id, self.experiment, self.ray_trial_id = parent_run_id, experiment, ray_trial_id
        self.configuration, self.seed = search_config["configuration"], search_config["seed"]
        self.params = Params.from_dict(search_config["params"])
        self.client = MlflowClient()  # tracking URI from MLFLOW_TRACKING_URI (Ray runtime env)
        self.run_id: str | None = None
        self.finished = False

    def _existing_run(self) -> str | None:
        """This (configuration, seed)'s run, if an earlier attempt created one.

        After a driver crash Ray may rerun a trial under a new trial id (the old id was never
        saved), so runs are matched by configuration and seed, not by Ray's id.
        """
        runs = self.client.search_runs(
            [self.experiment],
            filter_string=(
                f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}' and "
                f"tags.configuration = '{self.configuration}' and tags.seed = '{self.seed}'"
            ),
            max_results=1,
        )
        if runs:
            logged = Params.from_mlflow(runs[0].data.params)
            if (logged.placement, logged.fraction) == (self.params.placement, self.params.fraction):
                return runs[0].info.run_id
        return None  # none yet, or the configuration id was reused for different parameters

    def start(self, config: TrialConfig, saved: dict[str, Any]) -> dict[str, Any]:
        self.run_id = saved.get("mlflow_run_id") or self._existing_run()
        if self.run_id is not None:
            if self.client.get_run(self.run_id).info.status == "FINISHED":
                # Restarted after its last epoch (the driver died before recording the end):
                # the run is complete, so leave it exactly as it is.
                self.finished = True
                return dict(saved)
            self.client.update_run(self.run_id, status="RUNNING")  # reattach, never duplicate
            self.client.set_tag(self.run_id, "ray_trial_id", self.ray_trial_id)
            self.client.set_tag(self.run_id, "restarts", str(int(saved.get("restarts", 0)) + 1))
            return {"mlflow_run_id": self.run_id, "restarts": int(saved.get("restarts", 0)) + 1}
        tags = {
            MLFLOW_PARENT_RUN_ID: self.parent_run_id,
            MLFLOW_RUN_NAME: f"{self.configuration}-seed{self.seed}",
            "ray_trial_id": self.ray_trial_id,
            "configuration": self.configuration,
            "seed": str(self.seed),
            "dense_reference": str(self.params.dense).lower(),
        }
        run = self.client.create_run(self.experiment, tags=tags)
        self.run_id = run.info.run_id
        training = config.training
        # The effective knobs, searched or not, so the run alone says how the model was trained.
        effective = Params(self.params.placement, self.params.fraction, training.lr, training.weight_decay, training.batch_size)
        logged = {
            **effective.to_mlflow(),
            "seed": str(self.seed),
            "epochs": str(training.epochs),
            "stem": config.model.stem,
            "data": config.data.kind,
            "image_size": str(config.data.image_size),
            **{f"topk.{k}": str(v) for k, v in config.model.topk.items()},
        }
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in logged.items()])
        # The whole trial config: enough to rebuild (or retrain) this model from MLflow alone.
        self.client.log_dict(self.run_id, config.model_dump(mode="json"), "trial_config.yaml")
        return {"mlflow_run_id": self.run_id, "restarts": 0}

    def log_epoch(self, metrics: dict[str, float]) -> None:
        if self.finished:
            return
        now, step = int(time.time() * 1000), int(metrics["epoch"])
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def finish(self, error: BaseException | None) -> None:
        if self.run_id is None or self.finished:
            return
        if error is not None:
            self.client.set_tag(self.run_id, "error", " ".join(f"{type(error).__name__}: {error}".split())[:5000])
        self.client.set_terminated(self.run_id, status="FAILED" if error is not None else "FINISHED")
