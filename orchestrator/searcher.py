"""Optuna under Ray Tune, with seeds as replicates of each configuration.

`OptunaSearch` proposes configurations for two objectives (accuracy, shape bias), both
maximised. Ray's `Repeater` repeats a configuration over seeds but is single-objective (and
does not save its own state), so `ReplicateSearcher` does that job: it runs each proposal under
every seed and tells Optuna the per-objective mean once all seeds have finished. Before any
proposal it runs the dense model (no Top-K), the reference point every front is read against;
the dense configuration is not Optuna's to propose, so Optuna is not told about it.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces.params import OBJECTIVES, Outcome, Params, outcome, placement_key
from search_spaces.spec import SearchSpec

HELD_OUT = "shape_bias_holdout"  # the report set's shape bias (data.split: half)


class SearchSpaceFunction:
    """Optuna define-by-run space: a placement set, a Top-K fraction, optional training knobs."""

    def __init__(self, spec: SearchSpec) -> None:
        self.space = spec.search

    def __call__(self, trial: optuna.Trial) -> None:
        space = self.space
        placement = trial.suggest_categorical("placement", [placement_key(p) for p in space.placements])
        fraction = space.fraction
        if space.fraction_per_placement:  # per-layer K: one parameter per placement of the chosen set
            for name in placement.split("+"):
                trial.suggest_float(f"fraction.{name}", fraction.low, fraction.high, log=fraction.log)
        else:
            trial.suggest_float("fraction", fraction.low, fraction.high, log=fraction.log)
        for knob in ("lr", "weight_decay"):
            value_range = getattr(space, knob)
            if value_range is not None:
                trial.suggest_float(knob, value_range.low, value_range.high, log=value_range.log)
        if space.batch_size is not None:
            trial.suggest_categorical("batch_size", space.batch_size)


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    """Random search (default: it measured best on the quickstart's space), multi-objective TPE, NSGA-II, a Gaussian process, or a grid."""
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
        return optuna.samplers.GridSampler(spec.search.grid_space(), seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_optuna_search(spec: SearchSpec, study_name: str, storage: optuna.storages.BaseStorage | None = None) -> OptunaSearch:
    """OptunaSearch over the spec's space with its own study in the spec's Optuna storage."""
    storage = storage or optuna.storages.RDBStorage(spec.resolved_optuna_storage())
    return OptunaSearch(
        space=SearchSpaceFunction(spec),
        metric=list(OBJECTIVES),
        mode=["max", "max"],
        sampler=make_sampler(spec),
        study_name=study_name,
        storage=storage,
    )


@dataclass
class _Group:
    params: Params
    seeds_left: list[int]
    results: dict[str, dict[str, float] | None] = field(default_factory=dict)
    stopped_at: int | None = None  # the furthest epoch a seed reached before early stopping ended it


class ReplicateSearcher(Searcher):
    """Runs the dense reference, then each configuration `searcher` proposes, under every seed."""

    def __init__(
        self,
        searcher: OptunaSearch,
        seeds: list[int],
        configurations: int,
        make_trial: Callable[[Params, int], dict[str, Any]],
        epochs: int,
        accuracy_floor: float | None = None,
    ) -> None:
        self.searcher = searcher
        self.seeds = list(seeds)
        self.configurations = configurations
        self.make_trial = make_trial
        self.epochs = epochs
        self.accuracy_floor = accuracy_floor
        self._groups: dict[str, _Group] = {}
        self._trial_to_group: dict[str, str] = {}
        self._current: str | None = None
        self._restored = False
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._restored:
            self._fail_orphaned_optuna_trials()
            self._restored = False
        if self._current is None or not self._groups[self._current].seeds_left:
            if len(self._groups) >= self.configurations:
                return Searcher.FINISHED
            configuration = f"c{len(self._groups):03d}"
            if not self._groups:
                params = Params.dense_reference()
            else:
                with warnings.catch_warnings():
                    # Ray times the whole ask as "the define-by-run function" and warns past 1 s:
                    # with the GP sampler that is its model fit (about 1 s here), not work in our space.
                    warnings.filterwarnings("ignore", message="Define-by-run function passed", category=UserWarning)
                    suggested = self.searcher.suggest(configuration)
                study = self.searcher._ot_study  # OptunaSearch keeps no public handle
                if study.metric_names is None:  # optuna-dashboard then labels its axes by objective
                    with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and stable in use
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        study.set_metric_names(list(OBJECTIVES))
                if suggested is None or suggested == Searcher.FINISHED:
                    return suggested
                params = Params.from_dict(suggested)
            self._groups[configuration] = _Group(params, list(self.seeds))
            self._current = configuration
        group = self._groups[self._current]
        seed = group.seeds_left.pop(0)
        self._trial_to_group[trial_id] = self._current
        return {
            "configuration": self._current,
            "seed": seed,
            "params": group.params.to_dict(),
            "trial": self.make_trial(group.params, seed),
        }

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        configuration = self._trial_to_group.get(trial_id)
        if configuration is None:
            return
        group = self._groups[configuration]
        # Never a partial (early-stopped) result: only a complete trial counts.
        ended = outcome(result, self.epochs, error)
        complete = ended is Outcome.COMPLETE
        if ended is Outcome.STOPPED and math.isfinite(result.get("epoch", math.nan)):  # early stopping's doing
            group.stopped_at = max(group.stopped_at or 0, int(result["epoch"]))
        # The held-out shape bias rides along for the study's record, never as an objective.
        group.results[trial_id] = {m: result[m] for m in (*OBJECTIVES, HELD_OUT) if m in result} if complete else None
        if len(group.results) < len(self.seeds) or group.params.dense:
            return
        outcomes = list(group.results.values())
        if any(o is None for o in outcomes):
            # One failed seed fails the configuration: a mean over survivors would flatter it.
            # A stopped configuration fails too: partial scores are not results, and a bare
            # PRUNED state crashes Optuna's multi-objective samplers. The tag tells them apart.
            if group.stopped_at is not None:
                self.searcher._ot_trials[configuration].set_user_attr("stopped_at_epoch", group.stopped_at)
            self.searcher.on_trial_complete(configuration, None, error=True)
            return
        means = {m: statistics.fmean(o[m] for o in outcomes) for m in OBJECTIVES}
        ot_trial = self.searcher._ot_trials[configuration]  # OptunaSearch keeps no public handle
        for m in (*OBJECTIVES, HELD_OUT) if all(HELD_OUT in o for o in outcomes) else OBJECTIVES:
            ot_trial.set_user_attr(f"{m}_mean", statistics.fmean(o[m] for o in outcomes))
            ot_trial.set_user_attr(f"{m}_std", statistics.pstdev(o[m] for o in outcomes))
        ot_trial.set_user_attr("seeds", len(outcomes))
        if self.accuracy_floor is not None:
            # Optuna reads <= 0 as feasible: mean accuracy at or above the floor.
            ot_trial.set_constraint("accuracy_floor", self.accuracy_floor - means["accuracy"])
        self.searcher.on_trial_complete(configuration, means)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    # Tune saves wrapper searchers through get_state/set_state and the innermost one (Optuna)
    # through its own save_to_dir, so these cover only this wrapper's bookkeeping.
    def get_state(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "searcher"}

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._restored = True

    def _fail_orphaned_optuna_trials(self) -> None:
        """After a driver crash, fail the Optuna trials asked after the last saved state.

        Their Ray trials were never recorded, so nobody will ever tell Optuna their values;
        left RUNNING they would sit in the study's history forever.
        """
        study = self.searcher._ot_study  # OptunaSearch keeps no public handle
        known = {t.number for t in self.searcher._ot_trials.values()}
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.number not in known:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

