"""The driver of a search: open it (new or resumed), run Tune, close it.

The spec is already valid. `opening.open_search` checks what only the world can say (folders,
services, resources) and, for a resume, finds the search and the settings it started with; the
driver then starts or joins Ray with the tracking URI in the runtime environment, and only then
writes the search's start, so a refused start leaves nothing behind. Tune runs the replicate
searcher; when it returns the driver reports the Pareto front (`orchestrator.report`), runs the
confirmation stage if the spec asks for one (`orchestrator.search.confirm`), closes what dead
workers left open, and closes the parent run: FINISHED, KILLED (interrupted: resumable), or FAILED
with the reason in its `failure_reason` tag.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from mlflow.tracking import MlflowClient
from ray import tune

from orchestrator import names
from orchestrator.errors import SearchError, SearchInterrupted, StorageLost, own_error
from orchestrator.pareto import ConfigurationResult
from orchestrator.report import report_early_stopping, report_front, report_importances, report_reuse
from orchestrator.search import preflight
from orchestrator.search.confirm import confirmation_stage
from orchestrator.search.opening import Opening, open_search
from orchestrator.search.ray_session import quiet, sigterm_as_ctrl_c, start_ray
from orchestrator.search.worker import search_trial
from orchestrator.tracking import child_runs, failure_summary, find_search
from search_spaces.spec import SearchSpec
from trainables.messages import one_line, redact

__all__ = ["SearchError", "SearchInterrupted", "SearchOutcome", "run_search"]


@dataclass(frozen=True)
class SearchOutcome:
    search_id: str
    parent_run_id: str
    results: list[ConfigurationResult]
    hypervolume: float
    wall_s: float


def run_search(
    spec: SearchSpec,
    resume: bool = False,
    search_id: str | None = None,
    overrides: Sequence[str] = (),
    trial_function: Callable[..., None] = search_trial,
) -> SearchOutcome:
    """Run the search described by `spec` (or resume `search_id`, default its newest unfinished run) to the end.

    A resumed search runs with the settings it started with; `overrides` (the command line's
    key=value) may change only where things are. `trial_function` is what each trial runs, with
    `search_trial`'s signature: a benchmark's stand-in (`bench/scale.py` sleeps instead of training).
    """
    quiet()
    # Everything that can be refused is refused here, before Ray starts or MLflow holds a run.
    opening = open_search(spec, resume, search_id, overrides)
    spec, client = opening.spec, opening.client
    started_ray = not ray.is_initialized()
    status, reason = "FAILED", None
    start = time.monotonic()
    try:
        start_ray(spec, opening.tracking_uri)
        sigterm_as_ctrl_c()
        preflight.check_cluster_resources(spec)
        preflight.check_multi_node(opening.tracking_uri, opening.storage)
        opening.start()
        start = time.monotonic()
        results = opening.tuner(_trainable(opening, trial_function)).fit()
        # Tune swallows the first Ctrl+C (or SIGTERM) and returns early: then the search is unfinished.
        ended = results.num_terminated + results.num_errors
        if ended >= spec.configurations * len(spec.seeds) or opening.ended_early():
            outcome = _report(opening, time.monotonic() - start)
            status = "FINISHED"
        else:
            status = "KILLED"
    except (KeyboardInterrupt, SearchInterrupted):  # the confirmation stage's trials were stopped
        status = "KILLED"
    except BaseException as raised:
        error = own_error(raised)  # a callback's, which Tune re-raised as its traceback
        if isinstance(error, StorageLost) and opening.started:
            error = StorageLost(f"{error} (`run_search.py resume --config <its config> --search {opening.search_id}`)")
        # The search's own errors are sentences; anything else is named by its type.
        reason = one_line(error) if isinstance(error, SearchError) else f"{type(error).__name__}: {one_line(error)}"
        if error is raised:
            raise
        raise error from None
    finally:
        if opening.started:
            close_open_children(client, opening.experiment, opening.parent_run_id)
            # The parent run never stays RUNNING after the driver is gone.
            _end(client, opening.parent_run_id, status, reason)
        if started_ray:
            ray.shutdown()
    if status == "KILLED":
        if not opening.started:
            raise SearchError("interrupted before the search started: nothing was written")
        raise SearchInterrupted(opening.search_id)
    return outcome


def _trainable(opening: Opening, trial_function: Callable[..., None]) -> Any:
    """The Tune trainable of this search, with its resources: every trial a child run of its parent."""
    spec = opening.spec
    trial = tune.with_parameters(
        trial_function,
        make_trial=spec.trial_config,
        parent_run_id=opening.parent_run_id,
        experiment=opening.experiment,
        log_models=spec.log_models,
        data_digests=opening.data_digests,
    )
    return tune.with_resources(trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _report(opening: Opening, wall_s: float) -> SearchOutcome:
    """The finished search's front, failures, early-stopping savings, importances, and its confirmation stage."""
    spec, client = opening.spec, opening.client
    search = find_search(client, spec.mlflow_experiment, search_id=opening.search_id)
    runs = child_runs(client, search.experiment_id, search.run_id)  # read once: thousands take seconds
    failures = failure_summary(runs)
    try:
        results, volume, bounds = report_front(client, search, Path.cwd(), runs=runs)
    except SearchError as error:
        # Every configuration failed: the trials' own reasons say why better than an empty front.
        raise SearchError(f"search {search.search_id} failed: {failures or error}") from None
    if failures:
        print(f"warning: {failures}", flush=True)
    if spec.early_stopping:
        report_early_stopping(client, search, spec.training.epochs, runs)
    report_reuse(client, search, spec.resolved_optuna_storage())
    report_importances(client, search, spec.resolved_optuna_storage())
    if spec.confirm is not None:
        confirm = spec.confirm
        try:
            confirmation_stage(
                spec,
                client,
                search,
                results,
                bounds,
                confirm.seeds,
                confirm.top,
                confirm.by,
                data_digests=opening.data_digests,
                after_search=True,
            )
        except SearchInterrupted:
            raise
        except SearchError as error:  # nothing to confirm (no feasible configuration, no dense reference)
            print(f"note: no confirmation: {error}", flush=True)
    return SearchOutcome(search.search_id, opening.parent_run_id, results, volume, wall_s)


def _end(client: MlflowClient, parent_run_id: str, status: str, reason: str | None) -> None:
    """Close the parent run as FINISHED, KILLED or FAILED (with the reason in its `failure_reason` tag)."""
    if reason:
        client.set_tag(parent_run_id, names.FAILURE_REASON, redact(reason)[:5000])
    client.set_terminated(parent_run_id, status=status)


def close_open_children(client: MlflowClient, experiment: str, parent_run_id: str) -> int:
    """Mark children still RUNNING (their worker died, or the driver was stopped) as KILLED."""
    closed = 0
    for run in child_runs(client, experiment, parent_run_id):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
            closed += 1
    return closed
