"""What Tune keeps of every trial in the driver for the whole search, made smaller.

The driver holds one `Trial` per trial until the search ends (ray#64231), and Tune's run metadata
keeps, for every number a trial reports, a last-5 and a last-10 rolling average, each with its
own deque: about 1.9 KB a metric, 25 KB a trial at 13 metrics, a fifth of the driver's growth per
trial (bench/scale.py). Nothing in a search reads those averages (the searcher, early stopping
and the report read the last result, and MLflow keeps every epoch), so they are not kept.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial


class NoRollingAverages(Callback):
    """Starts each trial's run metadata without Tune's last-n averages of every metric."""

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        # `_n_steps` is read by `_TrainingRunMetadata.update_metric` (ray 2.60, pinned) at each
        # result: with none, it keeps max / min / avg / last only. It is saved with the
        # experiment state, so a resumed search keeps it.
        trial.run_metadata._n_steps = ()  # type: ignore[assignment]  # typed Tuple[int], read as any length
