"""One readable progress line per change, instead of Ray's per-trial tables."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from ray.tune import Callback


class SearchProgress(Callback):
    """Prints configurations and trials done / running / failed, elapsed time, best objectives."""

    def __init__(self, configurations: int, seeds: int, stream: TextIO | None = None) -> None:
        self.configurations, self.seeds = configurations, seeds
        self.stream = stream
        self.start = time.monotonic()
        self.running: set[str] = set()
        self.done: dict[str, str] = {}  # trial id -> configuration
        self.failed: set[str] = set()
        self.best = {"accuracy": -math.inf, "shape_bias": -math.inf}

    def __getstate__(self) -> dict:
        # The stream is not picklable; Tune pickles callbacks with the experiment state.
        return {k: v for k, v in self.__dict__.items() if k != "stream"} | {"stream": None}

    def _print(self) -> None:
        finished_configs = {c for c in self.done.values() if list(self.done.values()).count(c) == self.seeds}
        best = " · ".join(
            f"best {name.replace('_', ' ')} {value:.3f}" for name, value in self.best.items() if math.isfinite(value)
        )
        elapsed = int(time.monotonic() - self.start)
        line = (
            f"[{elapsed // 60:>2}m{elapsed % 60:02d}s] configurations {len(finished_configs)}/{self.configurations} done"
            f" · trials {len(self.done)} done, {len(self.running)} running, {len(self.failed)} failed"
            f" (of {self.configurations * self.seeds})" + (f" · {best}" if best else "")
        )
        print(line, file=self.stream or sys.stdout, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.running.add(trial.trial_id)
        self._print()

    def on_trial_restore(self, iteration, trials, trial, **info) -> None:
        self.running.add(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.running.discard(trial.trial_id)
        self.done[trial.trial_id] = trial.config.get("configuration", trial.trial_id)
        for name in self.best:
            value = trial.last_result.get(name)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.best[name] = max(self.best[name], value)
        self._print()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.running.discard(trial.trial_id)
        self.failed.add(trial.trial_id)
        self._print()
