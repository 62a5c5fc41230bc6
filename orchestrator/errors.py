"""The one error a command reports as a line: what it cannot find or do."""

from __future__ import annotations


class SearchError(RuntimeError):
    """What a command cannot find or do (a search, a configuration, a model), in one line."""


class SearchInterrupted(SearchError):
    """Ctrl+C or SIGTERM: the search is KILLED and can be resumed."""

    def __init__(self, search_id: str) -> None:
        super().__init__(f"search {search_id} was interrupted")
        self.search_id = search_id
