"""The rules every settings model follows (trial, data source, search spec)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Frozen settings that refuse unknown keys and inf / nan numbers.

    An unknown key is an error, so a typo never silently falls back to a default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
