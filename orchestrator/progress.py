"""One readable progress line per change, instead of Ray's per-trial tables."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from ray.tune import Callback

from orchestrator.pareto import ConfigurationResult, Replicate, front_hypervolume
from search_spaces.params import Outcome, Params, outcome


class SearchProgress(Callback):
    """Prints configurations and trials done / running / failed, elapsed time, best objectives."""

    def __init__(self, configurations: int, seeds: int, epochs: int, stream: TextIO | None = None) -> None:
        self.configurations, self.seeds, self.epochs = configurations, seeds, epochs
        self.stream = stream
        self.start = time.monotonic()
        self.running: set[str] = set()
        self.done: dict[str, str] = {}  # trial id -> configuration
        self.failed: set[str] = set()
        self.stopped: set[str] = set()
        self.best = {"accuracy": -math.inf, "shape_bias": -math.inf}
        self.counted_earlier = False
        self.holding: set[str] = set()  # trials whose metrics wait for the MLflow server

    # Tune pickles callbacks with the experiment state when a search starts, so a restored copy
    # would carry that moment's (empty) counts: it starts afresh and counts the trials that
    # ended before the resume on its first step (`on_step_begin`).
    def __getstate__(self) -> dict:
        return {"configurations": self.configurations, "seeds": self.seeds, "epochs": self.epochs}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["configurations"], state["seeds"], state["epochs"])

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self.counted_earlier:
            return
        self.counted_earlier = True
        for trial in trials:
            if trial.status == "TERMINATED":
                self._ended(trial)
            elif trial.status == "ERROR":
                self.failed.add(trial.trial_id)

    def _print(self) -> None:
        finished_configs = {c for c in self.done.values() if list(self.done.values()).count(c) == self.seeds}
        best = " · ".join(
            f"best {name.replace('_', ' ')} {value:.3f}" for name, value in self.best.items() if math.isfinite(value)
        )
        elapsed = int(time.monotonic() - self.start)
        line = (
            f"[{elapsed // 60:>2}m{elapsed % 60:02d}s] configurations {len(finished_configs)}/{self.configurations} done"
            f" · trials {len(self.done)} done, {len(self.running)} running, {len(self.failed)} failed"
            + (f", {len(self.stopped)} stopped early" if self.stopped else "")
            + f" (of {self.configurations * self.seeds})" + (f" · {best}" if best else "")
        )
        print(line, file=self.stream or sys.stdout, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.running.add(trial.trial_id)
        self._print()

    def on_trial_restore(self, iteration, trials, trial, **info) -> None:
        self.running.add(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        # Workers write MLflow themselves; their epoch results tell the driver when they cannot.
        if result.get("tracking_unsent", 0) > 0:
            if not self.holding:
                self._warn("the MLflow tracking server is not answering: trials keep training and hold their "
                           "metrics until it answers")
            self.holding.add(trial.trial_id)
        else:
            self._released(trial)

    def _released(self, trial) -> None:
        if trial.trial_id in self.holding:
            self.holding.discard(trial.trial_id)
            if not self.holding:
                self._warn("the MLflow tracking server answers again: the metrics trials held are written")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        name = f"{trial.config.get('configuration', trial.trial_id)}-seed{trial.config.get('seed', '?')}"
        self._warn(f"trial {name} lost its worker (failure {trial.num_failures}); Ray restarts it "
                   "from its last checkpoint")

    def _warn(self, message: str) -> None:
        print(f"warning: {message}", file=self.stream or sys.stdout, flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.running.discard(trial.trial_id)
        self._released(trial)  # a trial completes only once everything it held is written
        self._ended(trial)
        self._print()

    def _ended(self, trial) -> None:
        # The searcher's and the front's rule: a partial or non-finite result is not a result.
        ended = outcome(trial.last_result, self.epochs)
        if ended is Outcome.STOPPED:
            self.stopped.add(trial.trial_id)  # early stopping's doing: not a failure
            return
        if ended is not Outcome.COMPLETE:
            self.failed.add(trial.trial_id)
            return
        self.done[trial.trial_id] = trial.config.get("configuration", trial.trial_id)
        for name in self.best:
            self.best[name] = max(self.best[name], trial.last_result[name])

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.running.discard(trial.trial_id)
        self.failed.add(trial.trial_id)
        self._print()


class HypervolumeLog(Callback):
    """Logs the front's hypervolume to the parent run as each configuration finishes (step = configurations finished).

    The MLflow UI then charts the search's progress. A configuration has finished once every seed
    has ended, complete, stopped early or failed, so searches with and without early stopping
    share one x axis; only complete configurations are on the front (its rule), so a stopped or
    failed one logs the front's unchanged hypervolume. With `reference_point: dense` nothing is
    logged until the dense reference is complete. A tracking server that does not answer costs
    the chart a point, never the search.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str, reference: str | dict[str, float], seeds: int, epochs: int) -> None:
        self.tracking_uri, self.parent_run_id, self.reference = tracking_uri, parent_run_id, reference
        self.seeds, self.epochs = seeds, epochs
        self.results: dict[str, dict[str, tuple[float, float]]] = {}  # configuration -> trial id -> objectives
        self.ended: dict[str, set[str]] = {}  # configuration -> trial ids that ended, whatever the outcome
        self.params: dict[str, Params] = {}
        self.counted_earlier = False
        self.client = None

    def __getstate__(self) -> dict:  # as SearchProgress: a restored copy recounts on its first step
        return {k: getattr(self, k) for k in ("tracking_uri", "parent_run_id", "reference", "seeds", "epochs")}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def on_step_begin(self, iteration, trials, **info) -> None:
        if not self.counted_earlier:
            self.counted_earlier = True
            for trial in trials:
                if trial.status in ("TERMINATED", "ERROR"):
                    self._add(trial, failed=trial.status == "ERROR")  # logged before the resume: counted, not logged again

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, failed=True)

    def _end(self, trial, failed: bool) -> None:
        configuration = self._add(trial, failed)
        if len(self.ended[configuration]) == self.seeds:
            self._log()

    def _add(self, trial, failed: bool) -> str:
        configuration = trial.config.get("configuration", trial.trial_id)
        self.ended.setdefault(configuration, set()).add(trial.trial_id)
        if not failed and outcome(trial.last_result, self.epochs) is Outcome.COMPLETE:
            self.params[configuration] = Params.from_dict(trial.config["params"])
            result = trial.last_result
            self.results.setdefault(configuration, {})[trial.trial_id] = (result["accuracy"], result["shape_bias"])
        return configuration

    def _log(self) -> None:
        finished = sum(len(trials) == self.seeds for trials in self.ended.values())
        complete = [
            ConfigurationResult(c, self.params[c], tuple(Replicate(t, i, *point) for i, (t, point) in enumerate(seeds.items())))
            for c, seeds in sorted(self.results.items()) if len(seeds) == self.seeds
        ]
        volume = front_hypervolume(complete, self.reference)
        if volume is None:
            return
        try:
            if self.client is None:
                from mlflow.tracking import MlflowClient

                self.client = MlflowClient(self.tracking_uri)
            self.client.log_metric(self.parent_run_id, "hypervolume", volume, step=finished)
        except Exception as error:  # MlflowException, OSError: the chart misses a point
            print(f"warning: could not log the hypervolume after {finished} configurations "
                  f"({type(error).__name__}); the search goes on", flush=True)
