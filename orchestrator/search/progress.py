"""What the driver shows of a running search: one progress line per change instead of Ray's
per-trial tables, and the front's hypervolume charted on the parent run as configurations finish.

Both count trials the same way (`Tally`), by the searcher's and the front's rules
(`search_spaces.params.outcome` and `configuration_outcome`).
"""

from __future__ import annotations

import math
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pyarrow.fs import FileType
from ray import cloudpickle
from ray.exceptions import (
    LocalRayletDiedError,
    NodeDiedError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)
from ray.tune import Callback
from ray.tune.experiment import Trial

from orchestrator import names
from orchestrator.errors import StorageLost
from orchestrator.pareto import ConfigurationResult, Replicate, front_hypervolume
from orchestrator.search.background import BackgroundWrites
from search_spaces.constraints import Floor
from search_spaces.params import OBJECTIVES, Outcome, Params, configuration_outcome, outcome
from trainables.messages import one_line, redact

# The file Ray writes in an experiment's folder when it starts, and looks for before each checkpoint.
_RAY_MARKER = ".validate_storage_marker"


def _assignment(trial: Trial) -> dict[str, Any]:
    """What the searcher assigned a trial: its config, or for a confirmation trial the assignment inside it."""
    config: dict[str, Any] = trial.config
    return dict(config.get(names.ASSIGNMENT, config))


class Tally:
    """How every trial that ended, ended, by configuration; and what the complete ones scored.

    Its counts, verdicts, best values and front results are kept as trials are added, so that a
    progress line or a hypervolume point costs the same at the 2,000th trial as at the first.
    """

    def __init__(self, seeds: int, epochs: int) -> None:
        self.seeds, self.epochs = seeds, epochs
        self.outcomes: dict[str, dict[str, Outcome]] = {}  # configuration -> trial id -> outcome
        self.points: dict[str, dict[str, dict[str, float]]] = {}  # configuration -> trial id -> what the front reads
        self.params: dict[str, Params] = {}
        self.counts: Counter[Outcome] = Counter()  # trials by outcome
        self.verdicts: dict[str, Outcome] = {}  # configurations whose every seed ended
        self.best: dict[str, float] = {}  # objective -> the best a complete trial scored
        self.results: dict[str, ConfigurationResult] = {}  # complete configurations, as the front reads them

    def add(self, trial: Trial, error: bool = False) -> Outcome:
        """Count an ended trial (`error`: Tune errored it) and return its outcome."""
        configuration = self.configuration_of(trial)
        ended = outcome(trial.last_result, self.epochs, error)
        seeds = self.outcomes.setdefault(configuration, {})
        if trial.trial_id in seeds:  # counted before (a trial restored after it ended): counted again
            self.counts[seeds[trial.trial_id]] -= 1
        seeds[trial.trial_id] = ended
        self.counts[ended] += 1
        if ended is Outcome.COMPLETE:
            self.params[configuration] = Params.from_dict(_assignment(trial)[names.PARAMS])
            point = {m: trial.last_result.get(m, math.nan) for m in (*OBJECTIVES, names.CUE_DECISION_RATE)}
            self.points.setdefault(configuration, {})[trial.trial_id] = point
            for name in OBJECTIVES:
                self.best[name] = max(self.best.get(name, -math.inf), point[name])
        verdict = configuration_outcome(list(seeds.values()), self.seeds)
        if verdict is not None:
            self.verdicts[configuration] = verdict
        if verdict is not Outcome.COMPLETE:
            self.results.pop(configuration, None)
        else:
            self.results[configuration] = ConfigurationResult(
                configuration,
                self.params[configuration],
                tuple(Replicate(t, i, **p) for i, (t, p) in enumerate(self.points[configuration].items())),  # type: ignore[arg-type]
            )
        return ended

    def configuration_of(self, trial: Trial) -> str:
        """The configuration a trial runs (its Ray trial id, for a trial the searcher did not make)."""
        return str(_assignment(trial).get(names.CONFIGURATION, trial.trial_id))

    def verdict(self, configuration: str) -> Outcome | None:
        """The configuration's outcome, None while a seed has not ended."""
        return self.verdicts.get(configuration)

    def trials(self, ended: Outcome) -> int:
        return self.counts[ended]

    def finished(self) -> int:
        """Configurations whose every seed ended, whatever the outcome."""
        return len(self.verdicts)

    def complete(self) -> list[ConfigurationResult]:
        """Configurations whose every seed is complete, as the front reads them."""
        return [self.results[c] for c in sorted(self.results)]

    def recount(self, trials: list[Trial]) -> None:
        """Count the trials that ended before a resume (a restored callback starts empty)."""
        for trial in trials:
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                self.add(trial, error=trial.status == Trial.ERROR)


class SearchProgress(Callback):
    """Prints configurations and trials done / running / failed, elapsed time, best objectives."""

    def __init__(self, configurations: int, seeds: int, epochs: int, stream: TextIO | None = None) -> None:
        self.configurations, self.seeds, self.epochs = configurations, seeds, epochs
        self.stream = stream
        self.start = time.monotonic()
        self.running: set[str] = set()
        self.tally = Tally(seeds, epochs)
        self.counted_earlier = False
        self.holding: set[str] = set()  # trials whose metrics wait for the MLflow server

    # Tune pickles callbacks with the experiment state when a search starts, so a restored copy
    # would carry that moment's (empty) counts: it starts afresh and counts the trials that
    # ended before the resume on its first step (`on_step_begin`).
    def __getstate__(self) -> dict[str, Any]:
        return {"configurations": self.configurations, "seeds": self.seeds, "epochs": self.epochs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["configurations"], state["seeds"], state["epochs"])  # type: ignore[misc]

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if not self.counted_earlier:
            self.counted_earlier = True
            self.tally.recount(trials)

    def _print(self) -> None:
        best = " · ".join(f"best {name.replace('_', ' ')} {value:.3f}" for name, value in self.tally.best.items())
        elapsed = int(time.monotonic() - self.start)
        complete = len(self.tally.results)
        stopped = self.tally.trials(Outcome.STOPPED)
        line = (
            f"[{elapsed // 60:>2}m{elapsed % 60:02d}s] configurations {complete}/{self.configurations} done"
            f" · trials {self.tally.trials(Outcome.COMPLETE)} done, {len(self.running)} running, "
            f"{self.tally.trials(Outcome.FAILED)} failed"
            + (f", {stopped} stopped early" if stopped else "")
            + f" (of {self.configurations * self.seeds})"
            + (f" · {best}" if best else "")
        )
        print(line, file=self.stream or sys.stdout, flush=True)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._print()

    def on_trial_restore(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.running.add(trial.trial_id)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        # Workers write MLflow themselves; their epoch results tell the driver when they cannot.
        if result.get(names.TRACKING_UNSENT, 0) > 0:
            if not self.holding:
                self._warn(
                    "the MLflow tracking server is not answering: trials keep training and hold their "
                    "metrics until it answers"
                )
            self.holding.add(trial.trial_id)
        else:
            self._released(trial)

    def _released(self, trial: Trial) -> None:
        if trial.trial_id in self.holding:
            self.holding.discard(trial.trial_id)
            if not self.holding:
                self._warn("the MLflow tracking server answers again: the metrics trials held are written")

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._stop_if_storage_lost(trial)
        name = f"{self.tally.configuration_of(trial)}-seed{trial.config.get(names.SEED, '?')}"
        self._warn(
            f"trial {name} {failure_of(trial)} (failure {trial.num_failures}); Ray restarts it from its last checkpoint"
        )

    def _warn(self, message: str) -> None:
        print(f"warning: {message}", file=self.stream or sys.stdout, flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self._released(trial)  # a trial completes only once everything it held is written
        self.tally.add(trial)
        self._print()

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.tally.add(trial, error=True)
        self._print()
        self._stop_if_storage_lost(trial)

    def _stop_if_storage_lost(self, trial: Trial) -> None:
        """Stop the search (StorageLost, out of Tune's loop) when a trial failed because no checkpoint can be saved."""
        # Every later trial and retry would fail the same way, each after its first epoch.
        fault = storage_fault(trial)
        if fault:
            raise StorageLost(
                f"{fault}: every trial would fail there, so the search stopped; the trials finished so far "
                "are kept, and once the folder is back and writable it resumes from them"
            )


class HypervolumeLog(Callback):
    """Logs the front's hypervolume to the parent run as each configuration finishes (step = configurations finished).

    The MLflow UI then charts the search's progress. A configuration has finished once every seed
    has ended, complete, stopped early or failed, so searches with and without early stopping
    share one x axis; only complete configurations are on the front (its rule), so a stopped or
    failed one logs the front's unchanged hypervolume. With `reference_point: dense` nothing is
    logged until the dense reference is complete. A tracking server that does not answer costs
    the chart a point, never the search.
    """

    def __init__(
        self,
        tracking_uri: str,
        parent_run_id: str,
        reference: str | dict[str, float],
        seeds: int,
        epochs: int,
        floors: Sequence[Floor] = (),
    ) -> None:
        self.tracking_uri, self.parent_run_id, self.reference = tracking_uri, parent_run_id, reference
        self.seeds, self.epochs, self.floors = seeds, epochs, list(floors)
        self.tally = Tally(seeds, epochs)
        self.counted_earlier = False
        self.client: Any = None  # an MlflowClient, made at the first point
        self.writes = BackgroundWrites()

    def __getstate__(self) -> dict[str, Any]:  # as SearchProgress: a restored copy recounts on its first step
        return {
            k: getattr(self, k) for k in ("tracking_uri", "parent_run_id", "reference", "seeds", "epochs", "floors")
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if not self.counted_earlier:
            self.counted_earlier = True
            self.tally.recount(trials)  # logged before the resume: counted, not logged again

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial, error=True)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.writes.drain()

    def _end(self, trial: Trial, error: bool) -> None:
        self.tally.add(trial, error)
        if self.tally.verdict(self.tally.configuration_of(trial)) is not None:
            volume = front_hypervolume(self.tally.complete(), self.reference, self.floors)
            if volume is not None:  # off Tune's event loop: a request nothing waits for
                self.writes.submit(self._log, volume, self.tally.finished())

    def _log(self, volume: float, finished: int) -> None:
        try:
            if self.client is None:
                from mlflow.tracking import MlflowClient

                self.client = MlflowClient(self.tracking_uri)
            self.client.log_metric(self.parent_run_id, names.HYPERVOLUME, volume, step=finished)
        except Exception as error:  # MlflowException, OSError: the chart misses a point
            print(
                f"warning: could not log the hypervolume after {finished} configurations "
                f"({type(error).__name__}); the search goes on",
                flush=True,
            )


# What Ray raises in a trial when the experiment's folder in the trial storage is gone or unusable.
_STORAGE_LOST = "Unable to set up cluster storage"


def failure_of(trial: Trial) -> str:
    """What a trial's latest failure was, from the error Tune recorded: its own exception, or 'lost its worker'."""

    error = _latest_error(trial)
    # None is what a lost node leaves when Tune recorded nothing; the rest are Ray's own for a
    # process or node that is gone (ActorDiedError, ActorUnavailableError are RayActorErrors).
    if error is None or isinstance(
        error, (RayActorError, WorkerCrashedError, NodeDiedError, OutOfMemoryError, LocalRayletDiedError)
    ):
        return "lost its worker"
    cause = error.cause if isinstance(error, RayTaskError) else error  # what the trial itself raised
    if _STORAGE_LOST in str(cause):
        return "could not save its checkpoint in the trial storage"
    return f"failed ({type(cause).__name__}: {one_line(cause)[:200]})"


def _latest_error(trial: Trial) -> BaseException | None:
    """The trial's latest failure, from the file Tune pickles it to on the driver before callbacks run."""
    # Tune also copies the file to the trial storage (`trial.get_pickled_error()` reads it there),
    # but only later, and never when the storage is what failed. The file is this process's own,
    # written a moment ago into Ray's local session folder: not input from anyone else.
    path = trial.pickled_error_file
    if not path or not Path(path).is_file():
        return None
    try:
        with open(path, "rb") as file:
            error = cloudpickle.load(file)
    except Exception:  # an exception class that does not unpickle here: say nothing rather than guess
        return None
    return error if isinstance(error, BaseException) else None


def storage_fault(trial: Trial) -> str | None:
    """Why the trial storage of `trial`'s experiment cannot hold checkpoints now, as a clause; None when it can."""
    storage = trial.storage
    if storage is None:
        return None
    fs, folder = storage.storage_filesystem, storage.experiment_fs_path
    probe = f"{folder}/.write-check-{uuid.uuid4().hex}"
    cannot = f"the trial storage {redact(folder)} cannot hold checkpoints"
    try:
        found = fs.get_file_info(folder).type
        if found != FileType.Directory:
            return f"{cannot} ({'the folder is gone' if found == FileType.NotFound else 'a file replaced the folder'})"
        # Ray checks its marker before every checkpoint: without it, a writable folder still fails.
        if fs.get_file_info(f"{folder}/{_RAY_MARKER}").type != FileType.File:
            return f"{cannot} (Ray's marker file {_RAY_MARKER} is gone from it: emptied, replaced or remounted)"
        with fs.open_output_stream(probe) as stream:
            stream.write(b"ok")
        fs.delete_file(probe)
    except OSError as error:  # pyarrow raises OSError subclasses for every file system
        return f"{cannot} ({type(error).__name__}: {one_line(error)[:300]})"
    return None
