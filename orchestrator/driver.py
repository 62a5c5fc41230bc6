"""The driver of a search: open it (or take up the one to resume), run Tune, close it.

The spec is already valid. The driver first checks what only the world can say (folders,
services, resources: `orchestrator.preflight`), starts or joins Ray with the tracking URI in the
runtime environment, and only then opens the MLflow parent run, so a refused start leaves nothing
behind. Tune runs the replicate searcher; when it returns the driver closes what dead workers
left open, reports the Pareto front (`orchestrator.report`), and closes the parent run: FINISHED,
KILLED (interrupted: resumable), or FAILED with the reason in its `failure_reason` tag.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
from mlflow.tracking import MlflowClient
from ray import tune

from orchestrator import preflight
from orchestrator.early_stopping import ReplicateSuccessiveHalving, StoppedRuns
from orchestrator.pareto import ConfigurationResult
from orchestrator.progress import HypervolumeLog, SearchProgress
from orchestrator.report import report_early_stopping, report_front, report_importances
from orchestrator.searcher import ReplicateSearcher, make_optuna_search
from orchestrator.tracking import (
    SearchError,
    SearchRecord,
    close_open_children,
    experiment_id,
    failure_summary,
    find_search,
    start_parent_run,
)
from orchestrator.worker import search_trial
from search_spaces.spec import SearchSpec
from trainables.config import redact
from trainables.data import fingerprint
from trainables.trial import one_line

__all__ = ["SearchError", "SearchInterrupted", "SearchOutcome", "run_search"]


class SearchInterrupted(SearchError):
    """Ctrl+C or SIGTERM: the search is KILLED and can be resumed."""

    def __init__(self, search_id: str) -> None:
        super().__init__(f"search {search_id} was interrupted")
        self.search_id = search_id


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
    # MLflow prints "View run ... at: <tracking URI>" as runs end: the URI as given, password included.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def _start_ray(spec: SearchSpec, tracking_uri: str) -> None:
    """Join the cluster at spec.address / RAY_ADDRESS, or start Ray in-process."""
    runtime_env = {"env_vars": preflight.worker_env(tracking_uri)}
    address = spec.address or os.environ.get("RAY_ADDRESS")
    logging.getLogger("ray").setLevel(logging.WARNING)
    # "Token authentication is enabled" on every start: the default, and what we want; not news.
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    if address:
        preflight.use_ray_token_if_present()
    try:
        with preflight.held_stderr(when=bool(address)):
            if address and address not in ("auto", "local") and "://" not in address:  # ray:// has its own timeouts
                preflight.check_ray_head(address)
            ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False,
                     configure_logging=True, logging_level=logging.WARNING, ignore_reinit_error=True)
    except ConnectionError as error:
        raise SearchError(f"cannot join the Ray cluster at {redact(address or 'auto')} ({one_line(error)}): if the "
                          "head answers, it refused us; Ray clusters use token authentication by default: give this "
                          "machine the head's token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token; RAY_AUTH_MODE=token "
                          "turns it on)") from None


def _sigterm_as_ctrl_c() -> None:
    """SIGTERM (a scheduler, `kill`, a container stop) ends the search as Ctrl+C does: KILLED, resumable.

    ray.init installs its own SIGTERM handler (exit at once), so this is set after it.
    """
    def handler(signum, frame):
        signal.getsignal(signal.SIGINT)(signal.SIGINT, frame)  # Tune's graceful stop, or KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _trainable(spec: SearchSpec, parent_run_id: str, experiment: str, data_digests: dict[str, str]):
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    trial = tune.with_parameters(search_trial, parent_run_id=parent_run_id, experiment=experiment,
                                 log_models=spec.log_models, data_digests=data_digests)
    return tune.with_resources(trial, resources)


def _new_tuner(spec: SearchSpec, trainable, optuna_search, search_id: str, storage: str, tracking_uri: str,
               parent_run_id: str) -> tune.Tuner:
    """Tune over the replicate searcher: every configuration under every seed, with our progress line."""
    searcher = ReplicateSearcher(optuna_search, spec.seeds, spec.configurations, spec.trial_config,
                                 spec.training.epochs, spec.accuracy_floor)
    stopping = spec.early_stopping
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=(ReplicateSuccessiveHalving(stopping.rungs, stopping.reduction_factor, spec.training.epochs)
                       if stopping else None),
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
            callbacks=[
                SearchProgress(spec.configurations, len(spec.seeds), spec.training.epochs),
                HypervolumeLog(tracking_uri, parent_run_id, spec.model_dump(mode="json")["reference_point"],
                               len(spec.seeds), spec.training.epochs),
                *([StoppedRuns(tracking_uri, parent_run_id, spec.training.epochs)] if stopping else []),
            ],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def resumable_search(client: MlflowClient, spec: SearchSpec, storage: str, search_id: str | None) -> tuple[SearchRecord, str]:
    """The search to resume and its Ray state: `search_id`, else the newest unfinished one Ray can restore."""
    if search_id:
        candidates = [find_search(client, spec.mlflow_experiment, search_id=search_id)]
        if candidates[0].status == "FINISHED":
            raise SearchError(f"search {search_id} is already FINISHED: nothing to resume (see its front with "
                              f"`run_search.py pareto --experiment {spec.mlflow_experiment} --search {search_id}`)")
    else:
        newest = find_search(client, spec.mlflow_experiment, name=spec.name, exclude_status="FINISHED")
        runs = client.search_runs([newest.experiment_id], filter_string=f"tags.search_name = '{spec.name}'",
                                  order_by=["attributes.start_time DESC"], max_results=1000)
        candidates = [SearchRecord(newest.experiment_id, newest.experiment_name, r) for r in runs if r.info.status != "FINISHED"]
    for search in candidates:
        path = _state_path(search, storage)
        if tune.Tuner.can_restore(path):
            return search, path
        if search_id:
            raise SearchError(f"search {search_id} has no Ray Tune state at {redact(path)}: it failed before "
                              "its first trial started, so there is nothing to resume; start a new search")
    skipped = ", ".join(s.search_id for s in candidates)
    raise SearchError(f"no unfinished search named {spec.name!r} has Ray Tune state to resume (skipped, never started: "
                      f"{skipped}); start a new search, or name one with --search ID")


def _state_path(search: SearchRecord, storage: str) -> str:
    """Where the search's Ray state is, refused if outside the configured storage_path: resume unpickles it."""
    path, root = search.path, storage.rstrip("/")
    if path == redact(f"{root}/{search.search_id}"):
        return f"{root}/{search.search_id}"  # the tag holds it with any password hidden
    inside = (Path(path).resolve().is_relative_to(Path(root)) if "://" not in root
              else path.startswith(root + "/"))
    if not inside:
        raise SearchError(f"search {search.search_id} keeps its Ray state at {redact(path)}, outside storage_path "
                          f"{redact(root)}: resume only reads state under the configured storage_path (set "
                          "storage_path to where the search ran)")
    return path


def run_search(spec: SearchSpec, resume: bool = False, search_id: str | None = None) -> SearchOutcome:
    """Run the search described by `spec` (or resume `search_id`, default its newest unfinished run) to the end."""
    _quiet()
    tracking_uri = spec.resolved_tracking_uri()
    # Everything that can be refused is refused here, before Ray starts or MLflow holds a run.
    database = preflight.sqlite_file(tracking_uri)
    if resume and database is not None and not database.is_file():
        raise SearchError(f"no MLflow database at {database}, so no search to resume: run "
                          "from the search's folder, or set tracking_uri")
    preflight.writable_dir(Path.cwd(), "the working directory (for the front's files)")
    preflight.check_services(spec, tracking_uri)
    preflight.check_local_resources(spec)
    storage = preflight.check_storage_path(spec)  # the one check that writes: it creates the folder
    optuna_url = spec.resolved_optuna_storage()
    with preflight.first_start_lock(tracking_uri, optuna_url):
        client = MlflowClient(tracking_uri)
        experiment = experiment_id(client, spec.mlflow_experiment)
        optuna_storage = None if resume else optuna.storages.RDBStorage(optuna_url)
    # Once per search, not per trial: listing an ImageNet folder takes a while.
    data_digests = fingerprint(spec.data)
    parent, path = resumable_search(client, spec, storage, search_id) if resume else (None, None)

    started_ray = not ray.is_initialized()
    parent_run_id = None
    status, reason = "FAILED", None
    try:
        _start_ray(spec, tracking_uri)
        _sigterm_as_ctrl_c()
        preflight.check_cluster_resources(spec)
        preflight.check_multi_node(tracking_uri, storage)
        if parent is not None:
            parent_run_id, search_id = parent.run_id, parent.search_id
            client.update_run(parent_run_id, status="RUNNING")
            if "failure_reason" in parent.run.data.tags:
                client.delete_tag(parent_run_id, "failure_reason")
            print(f"resuming search {search_id} (MLflow parent run {parent_run_id})", flush=True)
        else:
            search_id = preflight.new_search_id(spec.name)
            path = f"{storage.rstrip('/')}/{search_id}"
            optuna_search = make_optuna_search(spec, study_name=search_id, storage=optuna_storage)
            parent_run_id = start_parent_run(client, experiment, search_id, spec.model_dump(mode="json"), path, data_digests)
            print(f"search {search_id}: {spec.configurations} configurations x {len(spec.seeds)} seeds, "
                  f"sampler {spec.sampler}, MLflow parent run {parent_run_id}", flush=True)
        start = time.monotonic()
        trainable = _trainable(spec, parent_run_id, experiment, data_digests)
        if parent is not None:
            # Finished trials stay finished; unfinished ones restart from their last checkpoint.
            # Errored trials already used their max_failures retries: they stay errored.
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
        else:
            tuner = _new_tuner(spec, trainable, optuna_search, search_id, storage, tracking_uri, parent_run_id)
        results = tuner.fit()
        # Tune swallows the first Ctrl+C (or SIGTERM) and returns early: then the search is unfinished.
        ended = results.num_terminated + results.num_errors
        status = "FINISHED" if ended >= spec.configurations * len(spec.seeds) else "KILLED"
    except KeyboardInterrupt:
        status = "KILLED"
    except BaseException as error:
        reason = f"{type(error).__name__}: {one_line(error)}"
        raise
    finally:
        if parent_run_id is not None:
            close_open_children(client, experiment, parent_run_id)
            if status != "FINISHED":
                if reason:
                    client.set_tag(parent_run_id, "failure_reason", redact(reason)[:5000])
                client.set_terminated(parent_run_id, status=status)
        if started_ray:
            ray.shutdown()
    if status == "KILLED":
        if parent_run_id is None:
            raise SearchError("interrupted before the search started: nothing was written")
        raise SearchInterrupted(search_id)

    wall_s = time.monotonic() - start
    search = find_search(client, spec.mlflow_experiment, search_id=search_id)
    failures = failure_summary(client, search)
    try:
        results, volume = report_front(client, search, Path.cwd())
    except SearchError as error:
        # Every configuration failed: the trials' own reasons say why better than an empty front.
        reason = failures or str(error)
        client.set_tag(parent_run_id, "failure_reason", redact(reason)[:5000])
        client.set_terminated(parent_run_id, status="FAILED")
        raise SearchError(f"search {search_id} failed: {reason}") from None
    if failures:
        print(f"warning: {failures}", flush=True)
    if spec.early_stopping:
        report_early_stopping(client, search, spec.training.epochs)
    report_importances(client, search, optuna_url)
    client.set_terminated(parent_run_id, status="FINISHED")
    return SearchOutcome(search_id, parent_run_id, results, volume, wall_s)
