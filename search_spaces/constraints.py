"""Floors on a configuration's seed means: `accuracy=0.75`, `cue_decision_rate=dense-0.2`.

One grammar serves the search's `constraints:` (told to Optuna, and applied to the front: a
configuration below one is infeasible, shown but never on the front) and `promote --floor`. A
floor is absolute, or relative to the dense reference's seed mean of the same metric.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from search_spaces.params import OBJECTIVES
from trainables.metrics import ACCURACY, CUE_DECISION_RATE

# What a floor may bound: the two objectives, and the validity of shape bias (the share of
# cue-conflict images whose decision names the shape or the texture).
CONSTRAINABLE = (*OBJECTIVES, CUE_DECISION_RATE)

_FLOOR = re.compile(r"^(?P<metric>[a-z_]+)=(?:(?P<dense>dense)(?P<offset>[-+]\d*\.?\d+)?|(?P<value>\d*\.?\d+))$")


@dataclass(frozen=True)
class Floor:
    """metric >= value, or metric >= the dense reference's mean + offset."""

    metric: str
    value: float
    relative: bool = False

    def __str__(self) -> str:
        if not self.relative:
            return f"{self.metric} >= {self.value:g}"
        return f"{self.metric} >= dense{self.value:+g}"

    def setting(self) -> str:
        """As the YAML and `--floor` write it: '0.5' or 'dense-0.2'."""
        return f"dense{self.value:+g}" if self.relative else f"{self.value:g}"

    def threshold(self, dense_means: Mapping[str, float] | None) -> float | None:
        """The absolute bound; for a relative floor None while the dense reference is not complete."""
        if not self.relative:
            return self.value
        if dense_means is None or not math.isfinite(dense_means.get(self.metric, math.nan)):
            return None
        return dense_means[self.metric] + self.value


def parse_floor(text: str) -> Floor:
    """'accuracy=0.75', 'accuracy=dense-0.01' or 'cue_decision_rate=dense-0.2' -> Floor (ValueError if malformed)."""
    match = _FLOOR.match(text.replace(" ", ""))
    if match is None or match["metric"] not in CONSTRAINABLE:
        raise ValueError(
            f"bad floor {text!r}: expected METRIC=VALUE or METRIC=dense-OFFSET, with METRIC one of "
            f"{', '.join(CONSTRAINABLE)} (e.g. accuracy=0.75, cue_decision_rate=dense-0.2)"
        )
    if match["dense"]:
        return Floor(match["metric"], float(match["offset"] or 0.0), relative=True)
    value = float(match["value"])
    if value > 1:
        raise ValueError(f"bad floor {text!r}: {match['metric']} lies in [0, 1], so a floor of {value:g} excludes all")
    return Floor(match["metric"], value)


def floors_of(settings: Mapping[str, float | str], accuracy_floor: float | None = None) -> list[Floor]:
    """The floors of a search's `constraints:` mapping (and its older `accuracy_floor`)."""
    floors = [parse_floor(f"{metric}={value}") for metric, value in settings.items()]
    if accuracy_floor is not None and ACCURACY not in settings:
        floors.insert(0, Floor(ACCURACY, accuracy_floor))
    return floors


def violations(
    floors: list[Floor], means: Mapping[str, float], dense_means: Mapping[str, float] | None
) -> dict[Floor, float]:
    """Each floor these seed means miss, with its bound.

    A relative floor without a dense reference is not applied, nor a floor on a metric the runs
    did not measure (runs from before it was logged): unknown is not the same as below.
    """
    missed = {}
    for floor in floors:
        bound, value = floor.threshold(dense_means), means.get(floor.metric, math.nan)
        if bound is not None and math.isfinite(value) and value < bound:
            missed[floor] = bound
    return missed
