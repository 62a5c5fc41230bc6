"""The confirmation stage: the chosen configurations and the dense reference, retrained on fresh seeds.

After a search (its YAML's `confirm: {top, seeds}`) or for a finished one (`run_search.py confirm`),
the configurations chosen by `p_front` (or, as `promote` chooses, by the highest seed mean among the
feasible) are trained again beside the dense reference on seeds the search never used. The trials
are Ray Tune trials of a grid over (configuration, seed), logged by the search's own worker as child
runs of the same parent run, tagged `stage: confirm`; Optuna never sees them. A round is recorded on
the parent run (tag `confirmation`) before its first trial, so an interrupted round resumes from its
Ray state (`Tuner.restore`), as the search's trials do. Its finding (`orchestrator.confirmation`)
is printed and logged to the parent run as `confirmed.<configuration>.<objective>_*` metrics
(`orchestrator.rounds`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from mlflow.tracking import MlflowClient
from ray import tune

from orchestrator import names
from orchestrator.confirmation import Confirmed
from orchestrator.errors import SearchInterrupted
from orchestrator.intervals import Uncertainty
from orchestrator.pareto import ConfigurationResult
from orchestrator.rounds import DENSE, Round, check_configurations, choose, latest_round, report_round, start_round
from orchestrator.search.progress import SearchProgress
from orchestrator.search.ray_session import KEEP_CHECKPOINTS
from orchestrator.search.tune_memory import NoRollingAverages
from orchestrator.search.worker import confirm_trial
from orchestrator.tracking import SearchRecord
from search_spaces.params import Params
from search_spaces.spec import SearchSpec


def assignments(spec: SearchSpec, params: Mapping[str, Params], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """One trial assignment per (configuration, fresh seed), the dense reference's first."""
    return [
        {
            names.CONFIGURATION: configuration,
            names.SEED: seed,
            names.PARAMS: p.to_dict(),
            names.STAGE: names.CONFIRM_STAGE,
        }
        for configuration, p in sorted(params.items())
        for seed in seeds
    ]


def run_round(
    spec: SearchSpec,
    client: MlflowClient,
    search: SearchRecord,
    round_: Round,
    params: Mapping[str, Params],
    data_digests: dict[str, str] | None,
) -> None:
    """Train a round's trials under Ray (already started), resuming its Ray state if it has one."""
    storage = spec.resolved_storage_path().rstrip("/")
    path = f"{storage}/{round_.name}"  # the name is ours (`start_round`): no '/' or '..' in it
    trainable = tune.with_resources(
        tune.with_parameters(
            confirm_trial,
            make_trial=spec.trial_config,
            parent_run_id=search.run_id,
            experiment=search.experiment_id,
            log_models=spec.log_models,
            data_digests=data_digests,
        ),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    trials = assignments(spec, params, round_.seeds)
    if tune.Tuner.can_restore(path):
        print(f"resuming the confirmation of {', '.join(round_.configurations)} on seeds {round_.seeds}", flush=True)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
    else:
        print(
            f"confirming {', '.join(round_.configurations)} against the dense reference on fresh seeds "
            f"{', '.join(map(str, round_.seeds))} ({len(trials)} trials, never seen by Optuna)",
            flush=True,
        )
        tuner = tune.Tuner(
            trainable,
            param_space={names.ASSIGNMENT: tune.grid_search(trials)},
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.concurrency, reuse_actors=True),
            run_config=tune.RunConfig(
                name=round_.name,
                storage_path=storage,
                verbose=0,
                callbacks=[NoRollingAverages(), SearchProgress(len(params), len(round_.seeds), spec.training.epochs)],
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            ),
        )
    grid = tuner.fit()
    # Tune swallows the first Ctrl+C and returns early, and the trials it stopped count as terminated:
    # a trial ended only if it failed or reported its last epoch. Otherwise the round is resumable.
    epochs = spec.training.epochs
    results = [grid[i] for i in range(len(grid))]  # a ResultGrid indexes (its stub does not say it iterates)
    ended = [
        r
        for r in results
        if r.error is not None or _last_epoch(r.metrics) >= epochs or names.FAILED in (r.metrics or {})
    ]
    if len(ended) < len(trials):
        raise SearchInterrupted(search.search_id)
    client.set_tag(search.run_id, names.CONFIRMATION, Round(**{**asdict(round_), "status": "FINISHED"}).tag())


def confirmation_stage(
    spec: SearchSpec,
    client: MlflowClient,
    search: SearchRecord,
    results: Sequence[ConfigurationResult],
    bounds: Mapping[str, Uncertainty],
    seeds: int,
    top: int = 1,
    by: str = names.P_FRONT,
    configurations: Sequence[str] = (),
    data_digests: dict[str, str] | None = None,
    after_search: bool = False,
) -> list[Confirmed]:
    """Choose (or take) the configurations, train them and the dense reference on fresh seeds, report.

    An unfinished round of the same request is resumed; `after_search` (the search's own stage,
    resumed) also takes up a round that finished but was not yet reported.
    """
    check_configurations(results, configurations, search.search_id)
    complete = {r.configuration: r for r in results}
    previous = latest_round(search)
    same = (
        previous is not None
        and len(previous.seeds) == seeds
        and (
            sorted(configurations) == sorted(previous.configurations)
            if configurations
            else len(previous.configurations) <= top
        )
    )
    if previous is not None and same and (previous.status == "RUNNING" or after_search):
        round_ = previous
    else:
        round_ = start_round(client, search, list(configurations) or choose(results, bounds, search, top, by), seeds)
    params = {c: complete[c].params for c in [DENSE, *round_.configurations]}
    run_round(spec, client, search, round_, params, data_digests)
    return report_round(client, search, round_)


def _last_epoch(metrics: Mapping[str, Any] | None) -> float:
    """The epoch a trial's last result reports (-1 before its first)."""
    value = (metrics or {}).get(names.EPOCH)
    return float(value) if isinstance(value, (int, float)) else -1.0
