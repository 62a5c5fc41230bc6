"""MLflow: one parent run per search, one nested child run per Ray trial.

Ray's MLflow integrations neither nest runs nor reattach after a restart, so this module does
both with the plain `MlflowClient`. Child runs are written from the workers (which get the
tracking URI from the Ray runtime environment); their run id travels in the trial checkpoint,
and a restarted trial without a checkpoint finds its run by configuration and seed instead. The
driver owns the parent run and, when the search ends, closes any child a dead worker left open.
"""

from __future__ import annotations

import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from trainables.config import TrialConfig

PACKAGES = ("torch", "torchvision", "ray", "optuna", "mlflow", "sparse-shape-search")


def git_commit() -> str:
    """The checkout's commit (with '-dirty' for uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def experiment_id(client: MlflowClient, name: str) -> str:
    """Id of the named experiment, created if missing."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def child_runs(client: MlflowClient, experiment: str, parent_run_id: str) -> list[mlflow.entities.Run]:
    """All child runs of a search's parent run."""
    return client.search_runs(
        [experiment], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'", max_results=50_000
    )


def close_open_children(client: MlflowClient, experiment: str, parent_run_id: str) -> int:
    """Mark children still RUNNING (their worker died, or the driver was stopped) as KILLED."""
    closed = 0
    for run in child_runs(client, experiment, parent_run_id):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
            closed += 1
    return closed


class MLflowTrialTracker:
    """The `trainables.trial.Tracker` that logs one Ray trial as a child run of the search."""

    def __init__(self, parent_run_id: str, experiment: str, ray_trial_id: str, search_config: dict[str, Any]) -> None:
        self.parent_run_id, self.experiment, self.ray_trial_id = parent_run_id, experiment, ray_trial_id
        self.search_config = search_config
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
                f"tags.configuration = '{self.search_config['configuration']}' and tags.seed = '{self.search_config['seed']}'"
            ),
            max_results=1,
        )
        params = self.search_config["params"]
        same = {"placement": params["placement"], "fraction": str(params.get("fraction", 1.0))}
        if runs and all(runs[0].data.params.get(k) == v for k, v in same.items()):
            return runs[0].info.run_id
        return None  # the configuration id was reused for different parameters: a new run

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
        configuration, seed = self.search_config["configuration"], self.search_config["seed"]
        params = self.search_config["params"]
        tags = {
            MLFLOW_PARENT_RUN_ID: self.parent_run_id,
            MLFLOW_RUN_NAME: f"{configuration}-seed{seed}",
            "ray_trial_id": self.ray_trial_id,
            "configuration": configuration,
            "seed": str(seed),
            "dense_reference": str(params["placement"] == "dense").lower(),
        }
        run = self.client.create_run(self.experiment, tags=tags)
        self.run_id = run.info.run_id
        logged = {
            "placement": params["placement"],
            "fraction": params.get("fraction", 1.0),
            "seed": seed,
            "lr": config.training.lr,
            "weight_decay": config.training.weight_decay,
            "batch_size": config.training.batch_size,
            "epochs": config.training.epochs,
            "stem": config.model.stem,
            "data": config.data.kind,
            "image_size": config.data.image_size,
            **{f"topk.{k}": v for k, v in config.model.topk.items()},
        }
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in logged.items()])
        return {"mlflow_run_id": self.run_id, "restarts": 0}

    def log_epoch(self, metrics: dict[str, float]) -> None:
        if self.finished:
            return
        now, step = int(time.time() * 1000), int(metrics["epoch"])
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch"]
        )

    def finish(self, error: BaseException | None) -> None:
        if self.run_id is None or self.finished:
            return
        if error is not None:
            self.client.set_tag(self.run_id, "error", " ".join(f"{type(error).__name__}: {error}".split())[:5000])
        self.client.set_terminated(self.run_id, status="FAILED" if error is not None else "FINISHED")


def start_parent_run(client: MlflowClient, experiment: str, search_id: str, spec_dump: dict[str, Any], search_path: str) -> str:
    """Create the search's parent run: resolved config, search space, sampler, commit, versions."""
    tags = [
        RunTag(MLFLOW_RUN_NAME, search_id),
        RunTag("search_id", search_id),
        RunTag("search_name", spec_dump["name"]),
        RunTag("search_path", search_path),
        RunTag("git_commit", git_commit()),
        *[RunTag(f"version.{k}", v) for k, v in package_versions().items()],
    ]
    run = client.create_run(experiment, tags={t.key: t.value for t in tags})
    search = spec_dump["search"]
    params = {
        "sampler": spec_dump["sampler"],
        "sampler_seed": spec_dump["sampler_seed"],
        "configurations": spec_dump["configurations"],
        "seeds": spec_dump["seeds"],
        "accuracy_floor": spec_dump["accuracy_floor"],
        "fraction_range": f"[{search['fraction']['low']}, {search['fraction']['high']}]" + (" log" if search["fraction"]["log"] else ""),
        "placements": ["+".join(p) for p in search["placements"]],
        "epochs": spec_dump["training"]["epochs"],
        "data": spec_dump["data"]["kind"],
    }
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_dict(run.info.run_id, spec_dump, "search_spec.yaml")
    return run.info.run_id


def find_parent_run(client: MlflowClient, experiment: str, name: str, unfinished_only: bool) -> mlflow.entities.Run | None:
    """The newest parent run of searches called `name` (optionally only those not FINISHED)."""
    runs = client.search_runs([experiment], filter_string=f"tags.search_name = '{name}'", order_by=["attributes.start_time DESC"], max_results=100)
    for run in runs:
        if not unfinished_only or run.info.status != RunStatus.to_string(RunStatus.FINISHED):
            return run
    return None
