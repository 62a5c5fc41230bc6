"""The search space: what Optuna varies (placement sets, the Top-K fraction, training knobs).

Validated as part of an experiment YAML (`search_spaces.spec`). Its two forms, `suggest` (Optuna's
define-by-run: a trial's `Params`) and `grid_space` (`sampler: grid`), walk the same parameters:
the placement set, the fraction (one, or one per placement), and the knobs of `params.KNOBS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, field_validator, model_validator

from search_spaces.params import KNOBS, Params, placement_key
from trainables.messages import bounded
from trainables.schema import Strict

if TYPE_CHECKING:
    import optuna


class FloatRange(Strict):
    """A float searched in [low, high], on a log scale if `log`; `grid` is its points for `sampler: grid`."""

    low: float
    high: float
    log: bool = False
    # sampler: grid only. A count spaces that many points from low to high (log-spaced when
    # `log`, 4 significant digits); a list gives the points.
    grid: Annotated[int, Field(ge=2, le=1000)] | list[float] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if isinstance(self.grid, list):
            outside = [v for v in self.grid if not self.low <= v <= self.high]
            if outside or not self.grid or len(set(self.grid)) != len(self.grid):
                raise ValueError(
                    f"grid {bounded(self.grid)} must list distinct values within [{self.low}, {self.high}]"
                )
        return self

    def grid_values(self) -> list[float]:
        """The points `sampler: grid` tries, in increasing order."""
        if isinstance(self.grid, list):
            return sorted(self.grid)
        n = self.grid or 0
        if self.log:
            ratio = (self.high / self.low) ** (1 / (n - 1))
            points = [self.low * ratio**i for i in range(n)]
        else:
            points = [self.low + (self.high - self.low) * i / (n - 1) for i in range(n)]
        # Rounded for readable parameters; the ends stay exact so the range is covered.
        return [self.low] + [float(f"{v:.4g}") for v in points[1:-1]] + [self.high]


class FractionRange(FloatRange):
    low: Annotated[float, Field(gt=0.0, le=1.0)]
    high: Annotated[float, Field(gt=0.0, le=1.0)]


class SearchSpace(Strict):
    """What Optuna varies. Unset training knobs stay at the base `training` values."""

    fraction: FractionRange
    placements: list[list[str]] = Field(min_length=1)
    # Per-layer K: each placement of the chosen set gets its own fraction (`fraction.layer2`, ...).
    fraction_per_placement: bool = False
    lr: FloatRange | None = None
    weight_decay: FloatRange | None = None
    batch_size: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=1)

    @field_validator("placements")
    @classmethod
    def _known(cls, placements: list[list[str]]) -> list[list[str]]:
        for i, names in enumerate(placements):
            if not names:
                raise ValueError(f"placement set {i} is empty; the dense reference is always run anyway")
            if len(set(names)) != len(names):
                raise ValueError(f"placement set {i} names a placement twice: {names}")
        keys = [placement_key(sorted(names)) for names in placements]
        if len(set(keys)) != len(keys):
            raise ValueError(f"placement sets repeat: {keys}")
        return placements

    def knob_domains(self) -> dict[str, FloatRange | list[int]]:
        """The searched knobs (`params.KNOBS` this space sets) and their domains: a range or choices."""
        domains = {knob.name: getattr(self, knob.name) for knob in KNOBS}
        return {name: domain for name, domain in domains.items() if domain is not None}

    def float_ranges(self) -> dict[str, FloatRange]:
        """Every searched range, the fraction first: what `sampler: grid` needs grid points for."""
        ranges = {name: d for name, d in self.knob_domains().items() if isinstance(d, FloatRange)}
        return {"fraction": self.fraction, **ranges}

    def suggest(self, trial: optuna.Trial) -> Params:
        """Optuna's define-by-run form: ask `trial` for every parameter, in one fixed order."""
        placement = trial.suggest_categorical("placement", [placement_key(p) for p in self.placements])
        low, high, log = self.fraction.low, self.fraction.high, self.fraction.log
        values: dict[str, Any] = {"placement": placement}
        if self.fraction_per_placement:  # per-layer K: one parameter per placement of the chosen set
            for name in placement.split("+"):
                values[f"fraction.{name}"] = trial.suggest_float(f"fraction.{name}", low, high, log=log)
        else:
            values["fraction"] = trial.suggest_float("fraction", low, high, log=log)
        for name, domain in self.knob_domains().items():
            if isinstance(domain, FloatRange):
                values[name] = trial.suggest_float(name, domain.low, domain.high, log=domain.log)
            else:
                values[name] = trial.suggest_categorical(name, domain)
        return Params.from_dict(values)

    def grid_space(self) -> dict[str, list[Any]]:
        """Optuna GridSampler's form: every parameter and its points (per placement, each takes the fraction's)."""
        grid: dict[str, list[Any]] = {"placement": [placement_key(p) for p in self.placements]}
        if self.fraction_per_placement:  # one placement set (the spec checks): its placements are the grid's axes
            for name in self.placements[0]:
                grid[f"fraction.{name}"] = self.fraction.grid_values()
        else:
            grid["fraction"] = self.fraction.grid_values()
        for name, domain in self.knob_domains().items():
            grid[name] = domain.grid_values() if isinstance(domain, FloatRange) else list(domain)
        return grid


def grid_size(grid: Mapping[str, list[Any]]) -> int:
    """How many points a grid holds (the product of its parameters' point counts)."""
    return math.prod(len(points) for points in grid.values())
