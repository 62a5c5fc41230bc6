"""The search's vocabulary, defined once: a configuration's parameters and a trial's outcome.

Optuna proposes a configuration as a flat dict (`placement`, `fraction`, optional training knobs);
Ray carries it as a plain dict; MLflow stores it as string params; the front reads it back. Each
of those crossings goes through `Params`, so a knob added here reaches all of them. `outcome`
is the one rule for "this trial is complete": the searcher applies it to Ray results, the front
to MLflow runs.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

OBJECTIVES = ("accuracy", "shape_bias")  # both maximised
DENSE = "dense"  # the placement-set name of the reference model without Top-K
KNOBS = ("lr", "weight_decay", "batch_size")  # training knobs a search may vary


def placement_key(names: list[str]) -> str:
    """A placement set as one categorical value, e.g. 'layer1+layer2'."""
    return "+".join(names)


@dataclass(frozen=True)
class Params:
    """One configuration: where Top-K sits, its fraction, and any searched training knobs."""

    placement: str  # a placement_key, or DENSE
    fraction: float = 1.0
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    # Per placement, in the set's order, when the search gives each its own (`fraction.layer2`, ...);
    # then `fraction` is unused.
    fractions: tuple[tuple[str, float], ...] = ()

    @classmethod
    def dense_reference(cls) -> "Params":
        """The reference every front is read against: no Top-K anywhere."""
        return cls(placement=DENSE)

    @property
    def dense(self) -> bool:
        return self.placement == DENSE

    @property
    def placements(self) -> list[str]:
        return [] if self.dense else self.placement.split("+")

    def topk(self) -> dict[str, float]:
        """The trial's `model.topk`: each placement's own fraction, or the one fraction at every placement."""
        return dict(self.fractions) if self.fractions else {name: self.fraction for name in self.placements}

    def fraction_label(self, digits: int = 3) -> str:
        """The fraction(s) for tables and plots: '0.100', or 'layer2 0.100, layer3 0.200'."""
        if self.dense:
            return "-"
        if self.fractions:
            return ", ".join(f"{name} {value:.{digits}f}" for name, value in self.fractions)
        return f"{self.fraction:.{digits}f}"

    def knobs(self) -> dict[str, Any]:
        """The training knobs this configuration sets (the others stay at the base recipe)."""
        return {k: getattr(self, k) for k in KNOBS if getattr(self, k) is not None}

    def to_dict(self) -> dict[str, Any]:
        """Plain, flat data for Ray's trial config and Optuna: only what is set."""
        values = {k: v for k, v in asdict(self).items() if v is not None and k != "fractions"}
        if self.fractions:
            del values["fraction"]
            values.update({f"fraction.{name}": value for name, value in self.fractions})
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Params":
        """From Optuna's suggestion or `to_dict`; the dense reference has no fraction."""
        per = {k.removeprefix("fraction."): float(v) for k, v in values.items() if k.startswith("fraction.")}
        unknown = set(values) - {"placement", "fraction", *KNOBS} - {f"fraction.{name}" for name in per}
        if unknown:
            raise ValueError(f"unknown search parameters {sorted(unknown)}; known: placement, fraction, "
                             f"fraction.<placement>, {', '.join(KNOBS)}")
        placement = str(values["placement"])
        order = [] if placement == DENSE else placement.split("+")
        if per and sorted(per) != sorted(order):
            raise ValueError(f"per-placement fractions {sorted(per)} do not match the placement set {placement}")
        batch_size = values.get("batch_size")
        return cls(
            placement=placement,
            fraction=float(values.get("fraction", 1.0)),
            lr=None if values.get("lr") is None else float(values["lr"]),
            weight_decay=None if values.get("weight_decay") is None else float(values["weight_decay"]),
            batch_size=None if batch_size is None else int(batch_size),
            fractions=tuple((name, per[name]) for name in order if per),
        )

    def to_mlflow(self) -> dict[str, str]:
        """MLflow run params (strings); a child run logs its effective knobs, so all are set there."""
        return {k: str(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_mlflow(cls, params: Mapping[str, str]) -> "Params":
        """Back from a child run's params (the keys `to_mlflow` wrote)."""
        return cls.from_dict({k: v for k, v in params.items()
                              if k in ("placement", "fraction", *KNOBS) or k.startswith("fraction.")})


class Outcome(enum.Enum):
    COMPLETE = "complete"  # every epoch trained, both objectives finite: a result
    STOPPED = "stopped"  # ended before its last epoch (stopped early, or killed): partial
    FAILED = "failed"  # errored, or an objective is missing or not finite


def outcome(metrics: Mapping[str, Any] | None, epochs: int, error: bool = False) -> Outcome:
    """Whether a trial's last metrics are a final result; partial scores never are."""
    if error or metrics is None or not all(_finite(metrics.get(m)) for m in OBJECTIVES):
        return Outcome.FAILED
    if not _finite(metrics.get("epoch")) or metrics["epoch"] < epochs:
        return Outcome.STOPPED
    return Outcome.COMPLETE


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
