"""Optuna under Ray Tune, with seeds as replicates of each configuration.

`ReplicateSearcher` is a Ray Tune `Searcher` that owns an `optuna.Study` and drives it through its
public API, as Optuna's own ask-and-tell interface intends: `study.ask()` for a configuration,
`SearchSpace.suggest(trial)` for its parameters, and once every seed of it has ended,
`study.tell(trial, seed means)`, or a failed trial when a seed failed or early stopping stopped
it (partial scores are not results, and a bare PRUNED trial crashes Optuna's multi-objective
samplers). Ray's `Repeater` would repeat configurations over seeds but is single-objective and
forbids schedulers; Ray's `OptunaSearch` would hide the study behind private fields.

Before any proposal it runs the dense model (no Top-K), the reference every front is read
against; the dense configuration is not Optuna's to propose, so Optuna is not told about it.
"""

from __future__ import annotations

import math
import pickle
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from ray.tune.search import Searcher

from orchestrator import names
from search_spaces.params import OBJECTIVES, Outcome, Params, configuration_outcome, outcome
from search_spaces.space import SearchSpace
from search_spaces.spec import SearchSpec
from trainables.metrics import ACCURACY

MakeTrial = Callable[[Params, int], dict[str, Any]]


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    """The spec's sampler: random (the default), multi-objective TPE, NSGA-II, a Gaussian process, or a grid.

    Random search is the default because it measured best on the quickstart's space
    (bench/sampler_efficiency.py, docs/benchmarks.md).
    """
    # An accuracy floor reaches the samplers through Trial.set_constraint (see ReplicateSearcher);
    # Optuna 5 deprecates the samplers' constraints_func.
    seed = spec.sampler_seed
    if spec.sampler == "tpe":
        # Few configurations: start modelling after a handful of random ones, not Optuna's 10.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=3, multivariate=True)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=4)
    if spec.sampler == "gp":
        # Optuna's GP-based Bayesian optimisation (multi-objective: expected hypervolume improvement).
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=3)
    if spec.sampler == "grid":
        # Each point once, in an order shuffled by the seed (a partial grid is a random subset).
        return _Grid(spec.search.grid_space(), seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


class _Grid(optuna.samplers.GridSampler):
    """Optuna's GridSampler, but the searcher, not the sampler, decides when the search ends.

    GridSampler stops its study once the grid is used up, with `Study.stop`, which raises outside
    `Study.optimize`: told through ask-and-tell, the last grid point's tell would fail after its
    result was stored. The spec already keeps `configurations` within the grid.
    """

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        pass


def make_study(spec: SearchSpec, study_name: str, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """A new two-objective study (both maximised) with its own name in the spec's Optuna storage."""
    storage = storage or optuna.storages.RDBStorage(spec.resolved_optuna_storage())
    study = optuna.create_study(
        storage=storage, study_name=study_name, sampler=make_sampler(spec), directions=["maximize"] * len(OBJECTIVES)
    )
    with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(OBJECTIVES))  # optuna-dashboard labels its axes by objective
    return study


@dataclass
class _Configuration:
    """One configuration's seeds: which are still to run, and how each that ended ended."""

    params: Params
    seeds_left: list[int]
    optuna_trial: optuna.Trial | None  # None for the dense reference
    ended: dict[int, Outcome] = field(default_factory=dict)  # seed -> how its trial ended
    results: dict[int, dict[str, float]] = field(default_factory=dict)  # complete seeds' objectives
    stopped_at: int | None = None  # the furthest epoch a seed reached before early stopping ended it
    told: bool = False  # the study knows how it ended


class ReplicateSearcher(Searcher):
    """Runs the dense reference, then each configuration the study proposes, under every seed."""

    def __init__(
        self,
        *,
        study: optuna.Study,
        space: SearchSpace,
        seeds: list[int],
        configurations: int,
        make_trial: MakeTrial,
        epochs: int,
        accuracy_floor: float | None = None,
    ) -> None:
        # Tune checks that every result reports each of these (its annotation says one, but lists
        # are how multi-objective searchers such as its own OptunaSearch name several).
        super().__init__(metric=list(OBJECTIVES), mode=["max"] * len(OBJECTIVES))  # type: ignore[arg-type]
        self.study, self.space = study, space
        self.seeds, self.configurations = list(seeds), configurations
        self.make_trial, self.epochs, self.accuracy_floor = make_trial, epochs, accuracy_floor
        self._configurations: dict[str, _Configuration] = {}
        self._trial_to_configuration: dict[str, tuple[str, int]] = {}  # Ray trial id -> (configuration, seed)
        self._current: str | None = None
        self._restored = False

    @classmethod
    def for_spec(cls, spec: SearchSpec, study: optuna.Study) -> ReplicateSearcher:
        """The searcher of a search described by `spec`, driving `study` (see `make_study`)."""
        return cls(
            study=study,
            space=spec.search,
            seeds=spec.seeds,
            configurations=spec.configurations,
            make_trial=spec.trial_config,
            epochs=spec.training.epochs,
            accuracy_floor=spec.accuracy_floor,
        )

    # Searcher.FINISHED is a string, which Ray's own annotation of `suggest` leaves out.
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        self._reconcile_once_restored()
        if self._current is None or not self._configurations[self._current].seeds_left:
            if len(self._configurations) >= self.configurations:
                return Searcher.FINISHED
            configuration = f"c{len(self._configurations):03d}"
            if not self._configurations:
                self._configurations[configuration] = _Configuration(Params.dense_reference(), list(self.seeds), None)
            else:
                optuna_trial = self.study.ask()
                params = self.space.suggest(optuna_trial)
                self._configurations[configuration] = _Configuration(params, list(self.seeds), optuna_trial)
            self._current = configuration
        assigned = self._configurations[self._current]
        seed = assigned.seeds_left.pop(0)
        self._trial_to_configuration[trial_id] = (self._current, seed)
        return {
            names.CONFIGURATION: self._current,
            names.SEED: seed,
            names.PARAMS: assigned.params.to_dict(),
            names.TRIAL: self.make_trial(assigned.params, seed),
        }

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self._reconcile_once_restored()  # a trial may end while Tune restores the search, before any suggest
        assigned = self._trial_to_configuration.get(trial_id)
        if assigned is None:
            return
        configuration, seed = self._configurations[assigned[0]], assigned[1]
        ended = outcome(result, self.epochs, error)
        configuration.ended[seed] = ended
        if ended is Outcome.COMPLETE and result is not None:
            # The held-out shape bias rides along for the study's record, never as an objective.
            configuration.results[seed] = {m: result[m] for m in (*OBJECTIVES, names.SHAPE_BIAS_HOLDOUT) if m in result}
        elif ended is Outcome.STOPPED and result is not None and math.isfinite(result.get(names.EPOCH, math.nan)):
            configuration.stopped_at = max(configuration.stopped_at or 0, int(result[names.EPOCH]))
        verdict = configuration_outcome(list(configuration.ended.values()), len(self.seeds))
        if verdict is None or configuration.optuna_trial is None or configuration.told:
            return
        configuration.told = True  # first: whatever the tell does, never twice
        self._tell(configuration, verdict)

    def _tell(self, configuration: _Configuration, verdict: Outcome) -> None:
        """Tell the study how a configuration ended: its seed means, or a failure (and why)."""
        trial = configuration.optuna_trial
        assert trial is not None
        if verdict is not Outcome.COMPLETE:
            if configuration.stopped_at is not None:  # early stopping's doing, not an error
                trial.set_user_attr(names.STOPPED_AT_EPOCH, configuration.stopped_at)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        outcomes = list(configuration.results.values())
        means = {m: statistics.fmean(o[m] for o in outcomes) for m in OBJECTIVES}
        recorded = (
            (*OBJECTIVES, names.SHAPE_BIAS_HOLDOUT)
            if all(names.SHAPE_BIAS_HOLDOUT in o for o in outcomes)
            else OBJECTIVES
        )
        for m in recorded:
            trial.set_user_attr(f"{m}_mean", statistics.fmean(o[m] for o in outcomes))
            trial.set_user_attr(f"{m}_std", statistics.pstdev(o[m] for o in outcomes))
        trial.set_user_attr(names.SEEDS, len(outcomes))
        if self.accuracy_floor is not None:
            # Optuna reads <= 0 as feasible: mean accuracy at or above the floor.
            trial.set_constraint("accuracy_floor", self.accuracy_floor - means[ACCURACY])
        self.study.tell(trial, [means[m] for m in OBJECTIVES])

    def _reconcile_once_restored(self) -> None:
        if self._restored:
            self._reconcile_with_the_study()
            self._restored = False

    def _reconcile_with_the_study(self) -> None:
        """After a restore, agree with the study, which saw more than the state Tune saved.

        A configuration told after the last save is finished in the study: it is not told again
        when its trials report once more. A trial asked after the last save has no Ray trial, so
        nobody will ever tell its values: it is failed, or it would sit RUNNING in the study's
        history forever.
        """
        running = {t.number for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
        known = set()
        for configuration in self._configurations.values():
            if configuration.optuna_trial is not None:
                known.add(configuration.optuna_trial.number)
                configuration.told = configuration.told or configuration.optuna_trial.number not in running
        for number in running - known:
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)

    # Tune saves the innermost searcher with `save` and restores it with `restore` (Ray state, in
    # the search's storage). The study travels with it: its storage reconnects from its URL, and
    # the sampler keeps its random state.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
        self._restored = True
