"""Replicate-aware multi-objective early stopping: asynchronous successive halving on two objectives.

At each rung epoch a configuration is compared with every configuration that reached the same
rung before it, by the seed means of both objectives at that epoch. They are ranked by
non-dominated sorting, ties within a front broken by hypervolume contribution (the area a
configuration alone adds to its front's hypervolume, above the rung's worst values; then the
configuration id), and the best ceil(n / reduction_factor) continue. So, as in ASHA, the first
configurations to reach a rung always continue, and later ones must beat what came before.
Hypervolume contribution replaced NSGA-II's crowding distance after replays measured it better:
it keeps the configurations that carry the front, where crowding distance keeps every extreme.

Seeds are replicates, so a configuration continues or stops as one:
- It is judged once per rung, when its first seed reaches that rung, on the seeds that have
  reached it by then (usually that one seed). The decision is final, and every later seed follows
  it at that rung; a seed of a stopped configuration stops at its first result.
- Later seeds' rung values still join the configuration's mean, which later configurations are
  compared against.
The dense reference is never stopped and never ranked: it is the reference, not a candidate.

A stopped configuration's trials end with partial results, so the searcher never tells Optuna
their partial scores (it fails the Optuna trial, see `ReplicateSearcher`) and the front never
shows them (`search_spaces.params.outcome`). Their child runs end FINISHED with a
`stopped_at_epoch` tag: the worker writes it as Tune stops it, and `StoppedRuns` on the driver
makes sure of it, because Tune may end a stopped trial's worker before the worker has written it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from orchestrator import names
from orchestrator.pareto import hypervolume, non_dominated_ranks
from orchestrator.search.background import BackgroundWrites
from search_spaces.params import OBJECTIVES, Outcome, Params, outcome

Point = tuple[float, float]


def hypervolume_contributions(points: list[Point], reference: Point) -> list[float]:
    """The hypervolume each point alone adds to the set's, above `reference` (a duplicate adds nothing)."""
    counts = Counter(points)
    above = sorted((p for p in counts if p[0] > reference[0] and p[1] > reference[1]), key=lambda p: (-p[0], -p[1]))
    if any(later[1] <= earlier[1] for earlier, later in zip(above, above[1:], strict=False)):
        # Some point is dominated, so a point's removal may uncover area of the ones it dominates.
        total = hypervolume(points, reference)
        return [total - hypervolume(points[:i] + points[i + 1 :], reference) for i in range(len(points))]
    # One front (what `rank_order` asks about): each point's own area is the rectangle between its
    # neighbours, one sort where removing each point in turn and recomputing is O(n^2 log n).
    own = {}
    for i, (x, y) in enumerate(above):
        right = above[i + 1][0] if i + 1 < len(above) else reference[0]
        below = above[i - 1][1] if i > 0 else reference[1]
        own[(x, y)] = (x - right) * (y - below) if counts[(x, y)] == 1 else 0.0
    return [own.get(p, 0.0) for p in points]


def rank_order(points: dict[str, Point]) -> list[str]:
    """Configurations best first: by non-dominated front, then hypervolume contribution, then id."""
    names = sorted(points)
    ranks = dict(zip(names, non_dominated_ranks([points[c] for c in names]), strict=True))
    # Just below the worst values at the rung, so that every front member adds some area.
    reference = (min(p[0] for p in points.values()) - 1e-3, min(p[1] for p in points.values()) - 1e-3)
    fronts: dict[int, list[str]] = {}
    for c in names:
        fronts.setdefault(ranks[c], []).append(c)
    contribution: dict[str, float] = {}
    for members in fronts.values():
        contributions = hypervolume_contributions([points[c] for c in members], reference)
        contribution.update(zip(members, contributions, strict=True))
    return sorted(names, key=lambda c: (ranks[c], -contribution[c], c))


@dataclass
class RungLadder:
    """The decisions themselves, free of Ray: the Tune scheduler and the replay benchmark share them."""

    rungs: tuple[int, ...]
    reduction_factor: float
    values: dict[int, dict[str, dict[int, Point]]] = field(
        default_factory=dict
    )  # rung -> configuration -> seed -> point
    decisions: dict[tuple[str, int], bool] = field(default_factory=dict)  # (configuration, rung) -> continue
    stopped_at: dict[str, int] = field(default_factory=dict)  # configuration -> the rung that stopped it

    def observe(self, configuration: str, seed: int, epoch: int, point: Point) -> bool:
        """One seed's objectives at `epoch`; False if this seed must stop now."""
        if configuration in self.stopped_at:
            return False
        if epoch not in self.rungs:
            return True
        at_rung = self.values.setdefault(epoch, {})
        at_rung.setdefault(configuration, {})[seed] = point
        key = (configuration, epoch)
        if key not in self.decisions:
            means = {c: _mean(list(seeds.values())) for c, seeds in at_rung.items()}
            keep = math.ceil(len(means) / self.reduction_factor)
            self.decisions[key] = configuration in rank_order(means)[:keep]
            if not self.decisions[key]:
                self.stopped_at[configuration] = epoch
        return self.decisions[key]


def _mean(points: list[Point]) -> Point:
    return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))


class ReplicateSuccessiveHalving(FIFOScheduler):
    """The Tune scheduler: stops every seed of a configuration that falls out at a rung."""

    def __init__(self, rungs: list[int], reduction_factor: float, epochs: int) -> None:
        super().__init__()
        self.ladder = RungLadder(tuple(rungs), reduction_factor)
        self.epochs = epochs

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        # A resumed search gets this scheduler as it was pickled at the start, its ladder empty.
        # Its finished trials are added again first: a seed that ended short of the last epoch
        # was stopped, so its configuration is out, and that configuration's unfinished seeds
        # stop at their next result instead of training to the end for nothing. (The rung values
        # themselves are not in a trial's last result: later rungs rank afresh.)
        result = trial.last_result or {}
        epochs = getattr(self, "epochs", None)  # absent in a scheduler pickled before it was kept
        if epochs and trial.status == "TERMINATED" and outcome(result, epochs) is Outcome.STOPPED:
            self.ladder.stopped_at.setdefault(trial.config[names.CONFIGURATION], int(result[names.EPOCH]))

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        params = Params.from_dict(trial.config[names.PARAMS])
        if params.dense or names.EPOCH not in result or any(m not in result for m in OBJECTIVES):
            return TrialScheduler.CONTINUE
        point = (float(result[OBJECTIVES[0]]), float(result[OBJECTIVES[1]]))
        if any(math.isnan(v) for v in point):
            return TrialScheduler.CONTINUE  # a failing trial ends by itself, as failed
        keep = self.ladder.observe(
            trial.config[names.CONFIGURATION], trial.config[names.SEED], int(result[names.EPOCH]), point
        )
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP

    def debug_string(self) -> str:
        return f"ReplicateSuccessiveHalving: {len(self.ladder.stopped_at)} configurations stopped"


class StoppedRuns(Callback):
    """Closes a stopped trial's child run FINISHED with `stopped_at_epoch`, if its worker could not.

    Tune ends a stopped trial inside `tune.report`; the worker then records the stop and closes
    its run, but Tune tears the worker down (or reuses it for the next trial) after waiting at
    most 2 s, so on a slow tracking store the run could stay RUNNING and end the search as
    KILLED. The driver sees every stop, so it closes whatever the worker left open.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str, epochs: int) -> None:
        self.tracking_uri, self.parent_run_id, self.epochs = tracking_uri, parent_run_id, epochs
        self.client: Any = None  # an MlflowClient, made at the first stop
        self.experiment = ""
        self.writes = BackgroundWrites()

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("tracking_uri", "parent_run_id", "epochs")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        result = trial.last_result or {}
        if outcome(result, self.epochs) is Outcome.STOPPED:
            # Off Tune's event loop: three requests to the tracking server that nothing waits for.
            self.writes.submit(self._close, trial.config[names.CONFIGURATION], trial.config[names.SEED], dict(result))

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.writes.drain()  # the search's report reads these runs next

    def _close(self, configuration: str, seed: int, result: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        from orchestrator.tracking import replicate_runs

        try:
            if self.client is None:
                self.client = MlflowClient(self.tracking_uri)
            # The worker reports its run's id with every epoch; a search among the experiment's
            # runs (whose cost grows with them) is left for a trial that never reported one.
            run_id = result.get(names.MLFLOW_RUN_ID)
            if run_id:
                runs = [self.client.get_run(run_id)]
            else:
                if not self.experiment:
                    self.experiment = self.client.get_run(self.parent_run_id).info.experiment_id
                runs = replicate_runs(self.client, self.experiment, self.parent_run_id, configuration, seed)
            for run in runs:
                if run.info.status == "RUNNING":
                    self.client.set_tag(run.info.run_id, names.STOPPED_AT_EPOCH, str(int(result[names.EPOCH])))
                    self.client.set_terminated(run.info.run_id, status="FINISHED")
        except Exception as error:  # MlflowException, OSError: the search's end marks it KILLED instead
            print(
                f"warning: could not close the stopped run of {configuration} seed {seed} "
                f"({type(error).__name__}); the search goes on",
                flush=True,
            )
