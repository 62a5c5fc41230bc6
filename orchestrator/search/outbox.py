"""What a trial owes the tracking server while the server is away.

A worker writes its own child run. When the MLflow server stops answering (a restart, a network
blip), training must go on and no epoch may be lost, so:

- epoch metrics queue in `pending` (plain lists, so they ride in every checkpoint: a worker lost
  with metrics still queued hands them to its restarted attempt) and are sent as soon as the
  server answers again; exact re-sends are harmless, the store keeps one copy of a metric;
- writes that cannot wait (creating the run, closing it) retry until the server answers or
  `patience_s` passes;
- the queue is bounded: past `max_pending` values, the next epoch waits for the server instead of
  growing memory;
- one warning when the server goes away, one when it is back, one every 30 s while a write waits.

MLflow's own client retries a refused request for minutes (7 retries with backoff), blocking
training; workers get 2 quick retries instead (`preflight.worker_env`) and this queue does the rest.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from trainables.messages import one_line

T = TypeVar("T")
BATCH = 1000  # MLflow's limit of metrics per log_batch
WARN_EVERY_S = 30.0
PATIENCE_S = 900.0  # how long a write that cannot wait retries before the trial fails


def server_away(error: BaseException) -> bool:
    """True for errors a later retry can cure: no answer, a timeout, a 5xx."""
    if isinstance(error, RestException):
        return error.get_http_status_code() >= 500
    return isinstance(error, (MlflowException, OSError))  # requests' errors are OSErrors


class Outbox:
    """Epoch metrics on their way to one MLflow run, and patient retries of the writes around them."""

    def __init__(
        self,
        client: MlflowClient,
        label: str,
        pending: list[list] | None = None,
        max_pending: int = 100_000,
        patience_s: float = PATIENCE_S,
        retry_every_s: float = 2.0,
    ) -> None:
        self.client, self.label = client, label
        self.pending: list[list] = pending if pending is not None else []  # [key, value, timestamp, step]
        self.max_pending, self.patience_s, self.retry_every_s = max_pending, patience_s, retry_every_s
        self.away_since: float | None = None

    def send(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """Queue one epoch's metrics and send everything queued, unless the server is away."""
        now = int(time.time() * 1000)  # fixed here, so a re-sent metric is an exact duplicate
        self.pending.extend([key, float(value), now, step] for key, value in metrics.items())
        if len(self.pending) > self.max_pending:
            self.flush(run_id)  # bounded: past it, this epoch waits for the server
            return
        try:
            self._flush(run_id)
        except Exception as error:
            if not server_away(error):
                raise
            self._went_away(error)

    def flush(self, run_id: str) -> None:
        """Send everything queued, waiting for the server if it is away."""
        if self.pending:
            self.call(f"write {len(self.pending)} queued metric values", self._flush, run_id)

    def call(self, what: str, write: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`write(*args, **kwargs)`, retried while the server is away, for up to `patience_s`."""
        start = time.monotonic()
        warned = start
        while True:
            try:
                result = write(*args, **kwargs)
            except Exception as error:
                if not server_away(error):
                    raise
                self._went_away(error)
                waited = time.monotonic() - start
                if waited > self.patience_s:
                    raise ConnectionError(
                        f"the MLflow tracking server did not answer for {waited:.0f} s while trial {self.label} "
                        f"tried to {what}: {_short(error)}"
                    ) from None
                if time.monotonic() - warned >= WARN_EVERY_S:
                    warned = time.monotonic()
                    _warn(f"trial {self.label} still waits to {what} ({waited:.0f} s of {self.patience_s:.0f} s)")
                time.sleep(self.retry_every_s)
                continue
            self._came_back()
            return result

    def _flush(self, run_id: str) -> None:
        while self.pending:
            chunk = self.pending[:BATCH]
            self.client.log_batch(run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in chunk])
            del self.pending[: len(chunk)]  # in place: the checkpoint slot holds this same list
        self._came_back()

    def _went_away(self, error: BaseException) -> None:
        if self.away_since is None:
            self.away_since = time.monotonic()
            _warn(
                f"the MLflow tracking server is not answering ({_short(error)}); trial {self.label} keeps "
                f"training and holds {len(self.pending)} metric values until it answers"
            )

    def _came_back(self) -> None:
        if self.away_since is not None:
            _warn(
                f"the MLflow tracking server answers again after {time.monotonic() - self.away_since:.0f} s; "
                f"trial {self.label} is writing what it held"
            )
            self.away_since = None


def _short(error: BaseException) -> str:
    text = one_line(error)
    return text if len(text) <= 200 else text[:200] + "..."


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
