"""The one error a command reports as a line (what it cannot find or do), and signals treated as errors."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


class SearchError(RuntimeError):
    """What a command cannot find or do (a search, a configuration, a model), in one line."""


class SearchInterrupted(SearchError):
    """Ctrl+C or SIGTERM: the search is KILLED and can be resumed."""

    def __init__(self, search_id: str) -> None:
        super().__init__(f"search {search_id} was interrupted")
        self.search_id = search_id


class CommandInterrupted(SearchError):
    """Ctrl+C or SIGTERM during a registry command, after its undo: one line and exit code 130."""


def sigterm_as_keyboard_interrupt() -> None:
    """SIGTERM (a scheduler, `kill`, a container stop) raises KeyboardInterrupt, as Ctrl+C does."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Ctrl+C and SIGTERM are ignored meanwhile (an undo that must finish); outside the main thread, nothing changes."""
    try:
        kept = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals reach only the main thread anyway
        yield
        return
    try:
        yield
    finally:
        for number, handler in kept.items():
            signal.signal(number, handler)
