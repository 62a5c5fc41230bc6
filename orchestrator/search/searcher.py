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

Each network is trained once. Fractions are a parameterisation: two that keep the same k at every
placement, with the same knobs, are one network (`search_spaces.networks`). A proposal that maps
to a network already proposed is not trained again: Optuna is told that configuration's results
(they are this proposal's results too, so the sampler learns the truth about that region), its
trial records which configuration it reused, and the sampler is asked again, so `configurations`
counts distinct networks. Only when the sampler proposes nothing new `max_repeats` times in a row
does the search end early, and says so.

The search's constraints (`search_spaces.constraints`) reach the samplers as Optuna constraints
(`Trial.set_constraint`, feasible at <= 0). A floor relative to the dense reference is told once
the dense reference has ended.
"""

from __future__ import annotations

import math
import pickle
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from ray.tune.search import Searcher

from orchestrator import names
from search_spaces.constraints import Floor
from search_spaces.networks import Network
from search_spaces.params import OBJECTIVES, Outcome, Params, configuration_outcome, outcome
from search_spaces.space import SearchSpace
from search_spaces.spec import SearchSpec
from trainables.metrics import CUE_DECISION_RATE, CUE_DECISION_RATE_HOLDOUT, SHAPE_BIAS_HOLDOUT

NetworkOf = Callable[[Params], Network]
# Recorded per seed and told to the study as user attributes; the objectives are its values.
RECORDED = (*OBJECTIVES, CUE_DECISION_RATE, SHAPE_BIAS_HOLDOUT, CUE_DECISION_RATE_HOLDOUT)


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
    results: dict[int, dict[str, float]] = field(default_factory=dict)  # complete seeds' recorded metrics
    stopped_at: int | None = None  # the furthest epoch a seed reached before early stopping ended it
    verdict: Outcome | None = None  # once every seed has ended
    told: bool = False  # the study knows how it ended
    reused_by: list[optuna.Trial] = field(default_factory=list)  # later proposals of the same network

    def means(self) -> dict[str, float]:
        """Seed means of every metric all its complete seeds recorded."""
        outcomes = list(self.results.values())
        shared = [m for m in RECORDED if outcomes and all(m in o for o in outcomes)]
        return {m: statistics.fmean(o[m] for o in outcomes) for m in shared}


class ReplicateSearcher(Searcher):
    """Runs the dense reference, then each distinct network the study proposes, under every seed."""

    def __init__(
        self,
        *,
        study: optuna.Study,
        space: SearchSpace,
        seeds: list[int],
        configurations: int,
        epochs: int,
        network_of: NetworkOf,
        floors: Sequence[Floor] = (),
        max_repeats: int = 500,
        parent_run_id: str = "",
    ) -> None:
        # Tune checks that every result reports each of these (its annotation says one, but lists
        # are how multi-objective searchers such as its own OptunaSearch name several).
        super().__init__(metric=list(OBJECTIVES), mode=["max"] * len(OBJECTIVES))  # type: ignore[arg-type]
        self.study, self.space = study, space
        self.seeds, self.configurations = list(seeds), configurations
        self.epochs = epochs
        self.network_of = network_of
        self.floors, self.max_repeats = list(floors), max_repeats
        self.parent_run_id = parent_run_id  # recorded on every Optuna trial: MLflow and the study side by side
        self._configurations: dict[str, _Configuration] = {}
        self._networks: dict[Network, str] = {}  # each network proposed -> its configuration
        self._trial_to_configuration: dict[str, tuple[str, int]] = {}  # Ray trial id -> (configuration, seed)
        self._current: str | None = None
        self._exhausted = False
        self._restored = False

    @classmethod
    def for_spec(cls, spec: SearchSpec, study: optuna.Study, parent_run_id: str = "") -> ReplicateSearcher:
        """The searcher of a search described by `spec`, driving `study` (see `make_study`), under that parent run."""
        return cls(
            study=study,
            space=spec.search,
            seeds=spec.seeds,
            configurations=spec.configurations,
            epochs=spec.training.epochs,
            network_of=spec.network_of,
            floors=spec.floors(),
            parent_run_id=parent_run_id,
        )

    # Searcher.FINISHED is a string, which Ray's own annotation of `suggest` leaves out.
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        self._reconcile_once_restored()
        if self._current is None or not self._configurations[self._current].seeds_left:
            if len(self._configurations) >= self.configurations or self._exhausted:
                return Searcher.FINISHED
            configuration = f"c{len(self._configurations):03d}"
            if not self._configurations:
                params, optuna_trial = Params.dense_reference(), None
            else:
                proposal = self._propose(configuration)
                if proposal is None:
                    return Searcher.FINISHED
                params, optuna_trial = proposal
                # optuna-dashboard shows user attributes: the child runs to look for in MLflow.
                optuna_trial.set_user_attr(names.CONFIGURATION, configuration)
            self._configurations[configuration] = _Configuration(params, list(self.seeds), optuna_trial)
            self._networks[self.network_of(params)] = configuration
            self._current = configuration
        assigned = self._configurations[self._current]
        seed = assigned.seeds_left.pop(0)
        self._trial_to_configuration[trial_id] = (self._current, seed)
        # The trial config itself is made in the worker (`search_trial`): Tune keeps about six copies
        # of every trial's config in the driver for the whole search, and saves them all every save.
        return {names.CONFIGURATION: self._current, names.SEED: seed, names.PARAMS: assigned.params.to_dict()}

    def _propose(self, configuration: str) -> tuple[Params, optuna.Trial] | None:
        """The study's next proposal of a network not yet proposed; None once it proposes only repeats."""
        for _ in range(self.max_repeats):
            trial = self.study.ask()
            # A searcher restored from a search started before this was recorded has no parent run id.
            if getattr(self, "parent_run_id", ""):
                trial.set_user_attr(names.MLFLOW_PARENT_RUN_ID_ATTR, self.parent_run_id)
            params = self.space.suggest(trial)
            original = self._networks.get(self.network_of(params))
            if original is None:
                return params, trial
            self._reuse(trial, original)
        self._exhausted = True
        reason = (
            f"the sampler proposed {self.max_repeats} networks in a row that the search had already trained: "
            f"ended after {len(self._configurations)} configurations of {self.configurations} (before {configuration})"
        )
        # The driver reads this to tell a search that ran out of networks from an interrupted one.
        self.study.set_user_attr(names.ENDED_EARLY, reason)
        print(f"note: {reason}", flush=True)
        return None

    def _reuse(self, trial: optuna.Trial, original: str) -> None:
        """A proposal of a network already proposed: it gets that configuration's results, untrained."""
        trial.set_user_attr(names.REUSED_CONFIGURATION, original)
        configuration = self._configurations[original]
        configuration.reused_by.append(trial)
        if configuration.told or (configuration.verdict is not None and configuration.optuna_trial is None):
            self._tell(trial, configuration)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self._reconcile_once_restored()  # a trial may end while Tune restores the search, before any suggest
        assigned = self._trial_to_configuration.get(trial_id)
        if assigned is None:
            return
        configuration, seed = self._configurations[assigned[0]], assigned[1]
        ended = outcome(result, self.epochs, error)
        configuration.ended[seed] = ended
        if ended is Outcome.COMPLETE and result is not None:
            # The held-out numbers ride along for the study's record, never as objectives.
            configuration.results[seed] = {m: result[m] for m in RECORDED if m in result}
        elif ended is Outcome.STOPPED and result is not None and math.isfinite(result.get(names.EPOCH, math.nan)):
            configuration.stopped_at = max(configuration.stopped_at or 0, int(result[names.EPOCH]))
        configuration.verdict = configuration_outcome(list(configuration.ended.values()), len(self.seeds))
        if configuration.verdict is None:
            return
        if configuration.optuna_trial is None:  # the dense reference: relative floors can be told now
            for reuser in configuration.reused_by:
                self._tell(reuser, configuration)
            for waiting in self._configurations.values():
                if waiting.verdict is not None and waiting is not configuration:
                    self._settle(waiting)
        else:
            self._settle(configuration)

    def _settle(self, configuration: _Configuration) -> None:
        """Tell the study how a configuration ended, for its own trial and every reuse, once."""
        if configuration.told or configuration.optuna_trial is None:
            return
        dense = self._configurations.get("c000")
        relative = any(f.relative for f in self.floors)
        if configuration.verdict is Outcome.COMPLETE and relative and dense is not None and dense.verdict is None:
            return  # told when the dense reference ends (on_trial_complete)
        configuration.told = True  # first: whatever the tell does, never twice
        for trial in (configuration.optuna_trial, *configuration.reused_by):
            self._tell(trial, configuration)

    def _tell(self, trial: optuna.Trial, configuration: _Configuration) -> None:
        """Tell the study one trial's end: the configuration's seed means, or a failure (and why)."""
        if configuration.verdict is not Outcome.COMPLETE:
            if configuration.stopped_at is not None:  # early stopping's doing, not an error
                trial.set_user_attr(names.STOPPED_AT_EPOCH, configuration.stopped_at)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        means = configuration.means()
        for m, value in means.items():
            trial.set_user_attr(f"{m}_mean", value)
            spread = [o[m] for o in configuration.results.values()]
            # The sample standard deviation; one seed has none.
            trial.set_user_attr(f"{m}_std", statistics.stdev(spread) if len(spread) > 1 else math.nan)
        trial.set_user_attr(names.SEEDS, len(configuration.results))
        dense = self._configurations.get("c000")
        dense_means = dense.means() if dense is not None and dense.verdict is Outcome.COMPLETE else None
        for floor in self.floors:
            bound = floor.threshold(dense_means)
            # Not told: a relative floor whose dense reference failed, or a metric the trials did not report.
            if bound is not None and floor.metric in means:
                # Optuna reads <= 0 as feasible: the seed mean at or above the floor.
                trial.set_constraint(f"{floor.metric}_floor", bound - means[floor.metric])
        self.study.tell(trial, [means[m] for m in OBJECTIVES])

    def _reconcile_once_restored(self) -> None:
        if self._restored:
            self._reconcile_with_the_study()
            self._restored = False

    def _reconcile_with_the_study(self) -> None:
        """After a restore, agree with the study, which saw more than the state Tune saved.

        A configuration told after the last save is finished in the study: it is not told again
        when its trials report once more, and a reuse of it the study has not heard of yet gets
        what the study holds for it. A trial asked after the last save has no Ray trial, so nobody
        will ever tell its values: it is failed, or it would sit RUNNING in the study's history forever.
        """
        running = {t.number for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
        known = set()
        for configuration in self._configurations.values():
            known |= {t.number for t in configuration.reused_by}
            if configuration.optuna_trial is None:
                continue
            known.add(configuration.optuna_trial.number)
            configuration.told = configuration.told or configuration.optuna_trial.number not in running
            if configuration.told:
                original = self.study.get_trials(deepcopy=False)[configuration.optuna_trial.number]
                for reuser in configuration.reused_by:
                    if reuser.number in running:
                        _tell_as(self.study, reuser, original)
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


def _tell_as(study: optuna.Study, trial: optuna.Trial, original: optuna.trial.FrozenTrial) -> None:
    """Tell `trial` what the study recorded for `original`: its values and constraints, or its failure."""
    if original.state != optuna.trial.TrialState.COMPLETE:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    for key, value in (original.constraints or {}).items():
        trial.set_constraint(key, value)
    study.tell(trial, original.values)
