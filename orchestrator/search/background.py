"""MLflow writes the driver makes as trials end, taken off Ray Tune's event loop.

Tune runs every callback on its one driver thread, between scheduling trials: a write that waits
on the tracking server (closing a stopped trial's run, charting the hypervolume) holds up every
other trial's next step, by tens of milliseconds each at thousands of runs. These writes need no
answer, so they go to one background thread, in the order they were made, and the callback
drains it when the experiment ends, before the search's report reads the runs back.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class BackgroundWrites:
    """One thread running submitted writes in order; `drain` waits for all of them (and can start over)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, write: Callable[..., Any], *args: Any) -> None:
        """Run `write(*args)` after the writes before it; it reports its own failures (a warning line)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writes")
        self._pool.submit(write, *args)

    def drain(self) -> None:
        """Wait until every submitted write has run."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
