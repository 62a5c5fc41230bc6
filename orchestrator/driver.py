"""The driver of a search: open it (or take up the one to resume), run Tune, close it.

The driver validates nothing itself (the spec is already valid), opens the MLflow parent run,
starts or joins Ray with the tracking URI in the runtime environment, and hands Tune the
replicate searcher. When Tune returns it closes what dead workers left open, reports the Pareto
front (`orchestrator.report`), and closes the parent run.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
from mlflow.tracking import MlflowClient
from ray import tune

from orchestrator.pareto import ConfigurationResult
from orchestrator.progress import SearchProgress
from orchestrator.report import report_front
from orchestrator.searcher import ReplicateSearcher, make_optuna_search
from orchestrator.tracking import (
    SearchError,
    close_open_children,
    experiment_id,
    find_search,
    start_parent_run,
)
from orchestrator.worker import search_trial
from search_spaces.spec import SearchSpec
from trainables.data import fingerprint

__all__ = ["SearchError", "SearchOutcome", "run_search"]


@dataclass(frozen=True)
class SearchOutcome:
    search_id: str
    parent_run_id: str
    results: list[ConfigurationResult]
    hypervolume: float
    wall_s: float


def _quiet() -> None:
    """Our progress line replaces Ray's tables, banners and state-sync warnings."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def _start_ray(spec: SearchSpec, tracking_uri: str) -> None:
    """Join the cluster at spec.address / RAY_ADDRESS, or start Ray in-process."""
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri}}
    address = spec.address or os.environ.get("RAY_ADDRESS")
    logging.getLogger("ray").setLevel(logging.WARNING)
    ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level=logging.WARNING, ignore_reinit_error=True)


def _trainable(spec: SearchSpec, parent_run_id: str, experiment: str, data_digests: dict[str, str]):
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    trial = tune.with_parameters(search_trial, parent_run_id=parent_run_id, experiment=experiment,
                                 log_models=spec.log_models, data_digests=data_digests)
    return tune.with_resources(trial, resources)


def run_search(spec: SearchSpec, resume: bool = False) -> SearchOutcome:
    """Run the search described by `spec` (or resume its newest unfinished run) to the end."""
    _quiet()
    tracking_uri = spec.resolved_tracking_uri()
    client = MlflowClient(tracking_uri)
    experiment = experiment_id(client, spec.mlflow_experiment)
    storage = spec.resolved_storage_path()
    # Once per search, not per trial: listing an ImageNet folder takes a while.
    data_digests = fingerprint(spec.data)

    if resume:
        parent = find_search(client, spec.mlflow_experiment, name=spec.name, exclude_status="FINISHED")
        parent_run_id, search_id, path = parent.run_id, parent.search_id, parent.path
        if not tune.Tuner.can_restore(path):
            raise SearchError(f"search {search_id} has no Ray Tune state to resume at {path}")
        client.update_run(parent_run_id, status="RUNNING")
        print(f"resuming search {search_id} (MLflow parent run {parent_run_id})", flush=True)
    else:
        search_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = f"{storage.rstrip('/')}/{search_id}"
        parent_run_id = start_parent_run(client, experiment, search_id, spec.model_dump(mode="json"), path, data_digests)
        print(f"search {search_id}: {spec.configurations} configurations x {len(spec.seeds)} seeds, "
              f"sampler {spec.sampler}, MLflow parent run {parent_run_id}", flush=True)

    start = time.monotonic()
    status = "FAILED"
    started_ray = not ray.is_initialized()
    try:
        _start_ray(spec, tracking_uri)
        trainable = _trainable(spec, parent_run_id, experiment, data_digests)
        if resume:
            # Finished trials stay finished; unfinished ones restart from their last checkpoint.
            # Errored trials already used their max_failures retries: they stay errored.
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
        else:
            searcher = ReplicateSearcher(
                make_optuna_search(spec, study_name=search_id), spec.seeds, spec.configurations,
                spec.trial_config, spec.training.epochs, spec.accuracy_floor,
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    num_samples=spec.configurations * len(spec.seeds),
                    max_concurrent_trials=spec.concurrency,
                    # One worker process per concurrent slot, reused across trials: no torch
                    # import or data generation per trial (seconds each on a small machine).
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=search_id,
                    storage_path=storage,
                    verbose=0,
                    callbacks=[SearchProgress(spec.configurations, len(spec.seeds), spec.training.epochs)],
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                ),
            )
        results = tuner.fit()
        # Tune swallows the first Ctrl+C and returns early: then the search is unfinished.
        ended = results.num_terminated + results.num_errors
        status = "FINISHED" if ended >= spec.configurations * len(spec.seeds) else "KILLED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        close_open_children(client, experiment, parent_run_id)
        if status != "FINISHED":
            client.set_terminated(parent_run_id, status=status)
        if started_ray:
            ray.shutdown()
    if status == "KILLED":
        raise SearchError(f"search {search_id} was interrupted; continue it with: run_search.py resume --config ...")

    wall_s = time.monotonic() - start
    try:
        search = find_search(client, spec.mlflow_experiment, search_id=search_id)
        results, volume = report_front(client, search, Path.cwd())
    except SearchError:
        client.set_terminated(parent_run_id, status="FAILED")  # every configuration failed
        raise
    client.set_terminated(parent_run_id, status="FINISHED")
    return SearchOutcome(search_id, parent_run_id, results, volume, wall_s)

