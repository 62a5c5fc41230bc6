"""The one error a command reports as a line (what it cannot find or do), and signals treated as errors."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType


class SearchError(RuntimeError):
    """What a command cannot find or do (a search, a configuration, a model), in one line."""


class SearchInterrupted(SearchError):
    """Ctrl+C or SIGTERM: the search is KILLED and can be resumed."""

    def __init__(self, search_id: str) -> None:
        super().__init__(f"search {search_id} was interrupted")
        self.search_id = search_id


class StorageLost(SearchError):
    """The search's folder in the trial storage cannot hold checkpoints: every trial would fail there."""


class CommandInterrupted(SearchError):
    """Ctrl+C or SIGTERM during a registry command, after its undo: one line and exit code 130."""


def own_error(error: BaseException) -> BaseException:
    """The SearchError behind `error` (Tune re-raises a callback's as a TuneError of its traceback), else `error`."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, SearchError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return error


_interrupted: list[int] = []  # the signals received since the last `raise_if_interrupted`


def sigterm_as_keyboard_interrupt() -> None:
    """SIGTERM (a scheduler, `kill`, a container stop) and Ctrl+C raise KeyboardInterrupt, and are remembered.

    Remembered because Python runs a handler wherever the main thread is, a garbage collector's
    callback included, where the exception is printed and dropped: `raise_if_interrupted` raises it
    again at the next step that checks.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        _interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    default = sys.unraisablehook

    def drop_swallowed_interrupt(unraisable: sys.UnraisableHookArgs) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):  # one is raised again at the next check
            default(unraisable)

    sys.unraisablehook = drop_swallowed_interrupt


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if a signal arrived whose exception something swallowed."""
    if _interrupted:
        _interrupted.clear()
        raise KeyboardInterrupt


def forget_interrupts() -> None:
    """The signals so far are handled (their KeyboardInterrupt was caught)."""
    _interrupted.clear()


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
