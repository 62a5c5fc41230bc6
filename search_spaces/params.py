"""The search's vocabulary, defined once: a configuration's parameters and a trial's outcome.

Optuna proposes a configuration as a flat dict (`placement`, `fraction`, optional training knobs);
Ray carries it as a plain dict; MLflow stores it as string params; the front reads it back. Each
of those crossings goes through `Params`, so a knob added to `KNOBS` reaches all of them (the
search space samples and grids it from the same table: `search_spaces.space`). `outcome` is the
one rule for "this trial is complete", and `configuration_outcome` the one rule for "every seed
of this configuration is": the searcher applies them to Ray results, the progress line and the
hypervolume chart to Tune's trials, the front to MLflow runs.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from trainables.metrics import ACCURACY, EPOCH, SHAPE_BIAS

OBJECTIVES = (ACCURACY, SHAPE_BIAS)  # both maximised
DENSE = "dense"  # the placement-set name of the reference model without Top-K
DENSE_LABEL = "dense (no Top-K)"  # how tables and texts name it


@dataclass(frozen=True)
class Knob:
    """A training knob a search may vary: its name (in YAML, Optuna, Ray and MLflow) and its type.

    A float knob is searched over a range (`FloatRange`); an int knob over a list of choices.
    """

    name: str
    kind: type


# The one table of searched training knobs; each is also a field of `TrainingConfig` and of
# `SearchSpace`, and of `Params` below.
KNOBS = (Knob("lr", float), Knob("weight_decay", float), Knob("batch_size", int))
KNOB_NAMES = tuple(knob.name for knob in KNOBS)


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
    def dense_reference(cls) -> Params:
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
        return dict(self.fractions) if self.fractions else dict.fromkeys(self.placements, self.fraction)

    def fraction_label(self, digits: int = 3) -> str:
        """The fraction(s) for tables and plots: '0.100', or 'layer2 0.100, layer3 0.200'."""
        if self.dense:
            return "-"
        if self.fractions:
            return ", ".join(f"{name} {value:.{digits}f}" for name, value in self.fractions)
        return f"{self.fraction:.{digits}f}"

    def describe(self) -> str:
        """What the network is, in words: 'dense (no Top-K)', 'Top-K 0.100 after layer1+layer2'."""
        return DENSE_LABEL if self.dense else f"Top-K {self.fraction_label()} after {self.placement}"

    def knobs(self) -> dict[str, Any]:
        """The training knobs this configuration sets (the others stay at the base recipe)."""
        return {k: getattr(self, k) for k in KNOB_NAMES if getattr(self, k) is not None}

    def to_dict(self) -> dict[str, Any]:
        """Plain, flat data for Ray's trial config and Optuna: only what is set."""
        values = {k: v for k, v in asdict(self).items() if v is not None and k != "fractions"}
        if self.fractions:
            del values["fraction"]
            values.update({f"fraction.{name}": value for name, value in self.fractions})
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Params:
        """From Optuna's suggestion or `to_dict`; the dense reference has no fraction."""
        per = {k.removeprefix("fraction."): float(v) for k, v in values.items() if k.startswith("fraction.")}
        unknown = set(values) - {"placement", "fraction", *KNOB_NAMES} - {f"fraction.{name}" for name in per}
        if unknown:
            raise ValueError(
                f"unknown search parameters {sorted(unknown)}; known: placement, fraction, "
                f"fraction.<placement>, {', '.join(KNOB_NAMES)}"
            )
        placement = str(values["placement"])
        order = [] if placement == DENSE else placement.split("+")
        if per and sorted(per) != sorted(order):
            raise ValueError(f"per-placement fractions {sorted(per)} do not match the placement set {placement}")
        # MLflow hands every value back as a string: each knob's type restores it.
        knobs = {knob.name: knob.kind(values[knob.name]) for knob in KNOBS if values.get(knob.name) is not None}
        return cls(
            placement=placement,
            fraction=float(values.get("fraction", 1.0)),
            fractions=tuple((name, per[name]) for name in order if per),
            **knobs,
        )

    def to_mlflow(self) -> dict[str, str]:
        """MLflow run params (strings); a child run logs its effective knobs, so all are set there."""
        return {k: str(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_mlflow(cls, params: Mapping[str, str]) -> Params:
        """Back from a child run's params (the keys `to_mlflow` wrote)."""
        return cls.from_dict(
            {
                k: v
                for k, v in params.items()
                if k in ("placement", "fraction", *KNOB_NAMES) or k.startswith("fraction.")
            }
        )


class Outcome(enum.Enum):
    COMPLETE = "complete"  # every epoch trained, both objectives finite: a result
    STOPPED = "stopped"  # ended before its last epoch (stopped early, or killed): partial
    FAILED = "failed"  # errored, or an objective is missing or not finite


def outcome(metrics: Mapping[str, Any] | None, epochs: int, error: bool = False) -> Outcome:
    """Whether a trial's last metrics are a final result; partial scores never are."""
    if error or metrics is None or not all(_finite(metrics.get(m)) for m in OBJECTIVES):
        return Outcome.FAILED
    if not _finite(metrics.get(EPOCH)) or metrics[EPOCH] < epochs:
        return Outcome.STOPPED
    return Outcome.COMPLETE


def configuration_outcome(seeds: Sequence[Outcome], replicates: int) -> Outcome | None:
    """A configuration's outcome from its seeds' outcomes: None until `replicates` seeds have ended.

    Complete only if every seed is: a mean over the survivors of a failed seed would flatter it,
    and a stopped seed's scores are partial. Stopped if early stopping ended any seed (and none
    failed), failed otherwise.
    """
    if len(seeds) < replicates:
        return None
    if all(s is Outcome.COMPLETE for s in seeds):
        return Outcome.COMPLETE
    return Outcome.FAILED if Outcome.FAILED in seeds else Outcome.STOPPED


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
