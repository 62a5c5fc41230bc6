"""How errors and user values are shown: one line, passwords hidden, size bounded.

Every layer reports what it cannot do as one line (`error: ...` on the command line, a child
run's `error` tag, a parent run's `failure_reason`); these helpers make that line.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

from pydantic import ValidationError

_PASSWORD = re.compile(r"(?<=://)([^/@\s:]*):[^/@\s]*@")
_SECRET_QUERY = re.compile(r"([?&][\w.-]*(?:secret|password|token|credential)[\w.-]*=)[^&\s]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with URL passwords (scheme://user:password@host, ?secret_key=...) replaced by ***."""
    return _SECRET_QUERY.sub(r"\1***", _PASSWORD.sub(r"\1:***@", text))


def redacted(value: Any) -> Any:
    """Plain data (dicts, lists, strings) with every string passed through `redact`."""
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return redact(value) if isinstance(value, str) else value


_REPR = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 2, 4, 4, 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80


def bounded(value: Any) -> str:
    """repr of an input quoted in an error, cut to about a line whatever its size or nesting."""
    return _REPR.repr(value)


def describe(error: ValidationError) -> str:
    """pydantic's report folded into one line: 'key: message (got value)' per problem."""
    parts = []
    for item in error.errors():
        # Drop the union-branch names pydantic inserts ('synthetic', 'folder'); keep the user's keys.
        where = ".".join(str(p) for p in item["loc"] if p not in ("synthetic", "folder")) or "config"
        message = item["msg"].removeprefix("Value error, ")
        given = item.get("input")
        shown = "" if isinstance(given, dict) or given is None else redact(bounded(given))
        if shown in message:  # our own validators already quote it
            shown = ""
        parts.append(f"{where}: {message}" + (f" (got {shown})" if shown else ""))
    return "; ".join(parts)


def one_line(error: BaseException) -> str:
    """An error as one readable line, passwords hidden."""
    text = describe(error) if isinstance(error, ValidationError) else " ".join(str(error).split())
    return redact(text)
