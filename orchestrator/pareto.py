"""The accuracy / shape-bias Pareto front over configurations: the maths, nothing else.

A configuration's point is the mean over its seeds; its spread is the sample standard deviation
(none for one seed). Which trials count is `search_spaces.params.outcome`'s rule, applied where
the runs are read (`tracking.collect`). Both objectives are maximised; the hypervolume is the area
the front dominates above a reference point. A configuration that misses one of the search's
floors (`search_spaces.constraints`) is infeasible: it is shown, but never on the front.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from search_spaces.constraints import CONSTRAINABLE, Floor, violations
from search_spaces.params import Params
from trainables.metrics import ACCURACY, SHAPE_BIAS, SHAPE_BIAS_HOLDOUT


@dataclass(frozen=True)
class Replicate:
    """One seed of a configuration: its child run, final objectives and report-set numbers."""

    run_id: str
    seed: int
    accuracy: float
    shape_bias: float
    # On the report set, which nothing selects on (NaN / empty when the search ran with split: none).
    shape_bias_holdout: float = math.nan
    per_category: tuple[tuple[str, float], ...] = ()
    # The share of scored conflict images whose decision names a cue (NaN for runs from before it was logged).
    cue_decision_rate: float = math.nan
    cue_decision_rate_holdout: float = math.nan
    artifact_uri: str = ""  # where its per-image outcomes are, read without asking the server for the run again


@dataclass(frozen=True)
class ConfigurationResult:
    """One configuration's seed mean and spread, and the replicates behind it."""

    configuration: str
    params: Params
    replicates: tuple[Replicate, ...]
    # (placement, k, positions) per placement, in the set's order: the network the fractions give
    # (empty for the dense reference, and for runs from before k was logged).
    kept: tuple[tuple[str, int, int], ...] = ()

    @property
    def dense(self) -> bool:
        return self.params.dense

    @property
    def seeds(self) -> int:
        return len(self.replicates)

    @property
    def run_ids(self) -> tuple[str, ...]:
        return tuple(sorted(r.run_id for r in self.replicates))

    def mean(self, metric: str) -> float:
        """Seed mean of a replicate's metric by name (`accuracy`, `shape_bias_holdout`, ...)."""
        return statistics.fmean(getattr(r, metric) for r in self.replicates)

    def std(self, metric: str) -> float:
        """Sample standard deviation over seeds of a metric by name (NaN for one seed)."""
        values = [getattr(r, metric) for r in self.replicates]
        # statistics.stdev fails on NaN (a metric some run did not log): then there is no spread either.
        if len(values) < 2 or not all(math.isfinite(v) for v in values):
            return math.nan
        return statistics.stdev(values)

    @property
    def accuracy(self) -> float:
        return self.mean(ACCURACY)

    @property
    def accuracy_std(self) -> float:
        return self.std(ACCURACY)

    @property
    def shape_bias(self) -> float:
        return self.mean(SHAPE_BIAS)

    @property
    def shape_bias_std(self) -> float:
        return self.std(SHAPE_BIAS)

    @property
    def shape_bias_holdout(self) -> float:
        """Seed mean of the report set's shape bias: the number to quote (NaN without a report set)."""
        return self.mean(SHAPE_BIAS_HOLDOUT)

    @property
    def shape_bias_holdout_std(self) -> float:
        return self.std(SHAPE_BIAS_HOLDOUT)

    @property
    def has_holdout(self) -> bool:
        """Whether every seed reported the report set (a search with data.split: half)."""
        return not math.isnan(self.shape_bias_holdout)

    def kept_label(self) -> str:
        """The share each placement keeps, in the placement set's order: '6.2%+9.4%' ('-' if dense or unknown)."""
        return "+".join(f"{100 * k / positions:.1f}%" for _, k, positions in self.kept) or "-"

    def per_category(self) -> dict[str, float]:
        """Seed mean of each category's shape bias, over the categories every seed reports."""
        shared = set.intersection(*(set(dict(r.per_category)) for r in self.replicates))
        return {c: statistics.fmean(dict(r.per_category)[c] for r in self.replicates) for c in sorted(shared)}


def spread(result: ConfigurationResult, metric: str, digits: int = 3) -> str:
    """'0.805 +- 0.025' (seed mean +- sample standard deviation), the mean alone for one seed, '-' if unmeasured."""
    mean, std = result.mean(metric), result.std(metric)
    if math.isnan(mean):
        return "-"  # e.g. the held-out bias of a search with data.split: none
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} +- {std:.{digits}f}"


def infeasible(results: list[ConfigurationResult], floors: Sequence[Floor]) -> dict[str, dict[Floor, float]]:
    """The configurations that miss a floor, each with the floors it misses and their bounds."""
    if not floors:
        return {}
    dense = next((r for r in results if r.dense), None)
    dense_means = {m: dense.mean(m) for m in CONSTRAINABLE} if dense is not None else None
    missed = {}
    for r in results:
        misses = violations(list(floors), {m: r.mean(m) for m in CONSTRAINABLE}, dense_means)
        if misses:
            missed[r.configuration] = misses
    return missed


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a dominates b (maximising both): no worse in both, better in one."""
    return a[0] >= b[0] and a[1] >= b[1] and a != b


def non_dominated_ranks(points: list[tuple[float, float]]) -> list[int]:
    """Non-dominated sorting: rank 0 is the Pareto front, rank 1 the front once 0 is removed, ..."""
    # One sweep, most accurate first: only a point already swept can dominate the next, and the
    # next joins the first front whose latest member (the highest shape bias in it so far) does not
    # dominate it. That is O(n x fronts); removing front after front was O(n^2) each, seconds
    # per early-stopping decision at a rung of 1,000 configurations. A point with a NaN neither
    # dominates nor is dominated: it is on the front.
    ranks = [0] * len(points)
    swept = sorted(
        (i for i, p in enumerate(points) if not (math.isnan(p[0]) or math.isnan(p[1]))),
        key=lambda i: (-points[i][0], -points[i][1]),
    )
    latest: list[tuple[float, float]] = []  # front -> its latest member
    for i in swept:
        rank = next((k for k, member in enumerate(latest) if not dominates(member, points[i])), len(latest))
        latest[rank : rank + 1] = [points[i]]
        ranks[i] = rank
    return ranks


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float] = (0.0, 0.0)) -> float:
    """Area dominated by `points` (maximising both) and bounded below by `reference`."""
    front = sorted({p for p in points if p[0] > reference[0] and p[1] > reference[1]}, key=lambda p: -p[0])
    area, best_y = 0.0, reference[1]
    for x, y in front:  # sweep from the most accurate point leftwards
        if y > best_y:
            area += (x - reference[0]) * (y - best_y)
            best_y = y
    return area


def front_of(results: list[ConfigurationResult], floors: Sequence[Floor] = ()) -> list[ConfigurationResult]:
    """The non-dominated configurations among those meeting every floor, most accurate first."""
    excluded = infeasible(results, floors)
    feasible = [r for r in results if r.configuration not in excluded]
    ranks = non_dominated_ranks([(r.accuracy, r.shape_bias) for r in feasible])
    return sorted((r for r, k in zip(feasible, ranks, strict=True) if k == 0), key=lambda r: -r.accuracy)


def reference_of(setting: str | dict[str, float], results: list[ConfigurationResult]) -> tuple[float, float] | None:
    """The hypervolume's reference point: given, or (`dense`) the dense reference's means; None until it is complete."""
    if isinstance(setting, str):  # "dense", the only word the spec accepts
        dense = next((r for r in results if r.dense), None)
        return None if dense is None else (dense.accuracy, dense.shape_bias)
    return (setting[ACCURACY], setting[SHAPE_BIAS])


def front_hypervolume(
    results: list[ConfigurationResult], setting: str | dict[str, float], floors: Sequence[Floor] = ()
) -> float | None:
    """Hypervolume of the feasible front of `results` above the reference `setting` (None until `dense` is complete)."""
    reference = reference_of(setting, results)
    if reference is None:
        return None
    return hypervolume([(r.accuracy, r.shape_bias) for r in front_of(results, floors)], reference)
