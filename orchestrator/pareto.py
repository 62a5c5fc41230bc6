"""The accuracy / shape-bias Pareto front over configurations: the maths, nothing else.

A configuration's point is the mean over its seeds (standard deviation shown). Which trials
count is `search_spaces.params.outcome`'s rule, applied where the runs are read
(`tracking.collect`). Both objectives are maximised; the hypervolume is the area the front
dominates above the reference point (0, 0).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from search_spaces.params import Params
from trainables.metrics import ACCURACY, SHAPE_BIAS


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


@dataclass(frozen=True)
class ConfigurationResult:
    """One configuration's seed mean and spread, and the replicates behind it."""

    configuration: str
    params: Params
    replicates: tuple[Replicate, ...]

    @property
    def dense(self) -> bool:
        return self.params.dense

    @property
    def seeds(self) -> int:
        return len(self.replicates)

    @property
    def run_ids(self) -> tuple[str, ...]:
        return tuple(sorted(r.run_id for r in self.replicates))

    @property
    def accuracy(self) -> float:
        return statistics.fmean(r.accuracy for r in self.replicates)

    @property
    def accuracy_std(self) -> float:
        return statistics.pstdev(r.accuracy for r in self.replicates)

    @property
    def shape_bias(self) -> float:
        return statistics.fmean(r.shape_bias for r in self.replicates)

    @property
    def shape_bias_std(self) -> float:
        return statistics.pstdev(r.shape_bias for r in self.replicates)

    @property
    def shape_bias_holdout(self) -> float:
        """Seed mean of the report set's shape bias: the number to quote (NaN without a report set)."""
        return statistics.fmean(r.shape_bias_holdout for r in self.replicates)

    @property
    def shape_bias_holdout_std(self) -> float:
        return statistics.pstdev(r.shape_bias_holdout for r in self.replicates)

    @property
    def has_holdout(self) -> bool:
        """Whether every seed reported the report set (a search with data.split: half)."""
        return not math.isnan(self.shape_bias_holdout)

    def per_category(self) -> dict[str, float]:
        """Seed mean of each category's shape bias, over the categories every seed reports."""
        shared = set.intersection(*(set(dict(r.per_category)) for r in self.replicates))
        return {c: statistics.fmean(dict(r.per_category)[c] for r in self.replicates) for c in sorted(shared)}

    def mean(self, objective: str) -> float:
        """Seed mean of one objective by name."""
        return self.accuracy if objective == ACCURACY else self.shape_bias

    def std(self, objective: str) -> float:
        """Seed standard deviation of one objective by name."""
        return self.accuracy_std if objective == ACCURACY else self.shape_bias_std


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a dominates b (maximising both): no worse in both, better in one."""
    return a[0] >= b[0] and a[1] >= b[1] and a != b


def non_dominated_ranks(points: list[tuple[float, float]]) -> list[int]:
    """Non-dominated sorting: rank 0 is the Pareto front, rank 1 the front once 0 is removed, ..."""
    ranks = [-1] * len(points)
    remaining = set(range(len(points)))
    rank = 0
    while remaining:
        front = {i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining)}
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
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


def front_of(results: list[ConfigurationResult]) -> list[ConfigurationResult]:
    """The non-dominated configurations, most accurate first."""
    ranks = non_dominated_ranks([(r.accuracy, r.shape_bias) for r in results])
    return sorted((r for r, k in zip(results, ranks, strict=True) if k == 0), key=lambda r: -r.accuracy)


def reference_of(setting: str | dict[str, float], results: list[ConfigurationResult]) -> tuple[float, float] | None:
    """The hypervolume's reference point: given, or (`dense`) the dense reference's means; None until it is complete."""
    if isinstance(setting, str):  # "dense", the only word the spec accepts
        dense = next((r for r in results if r.dense), None)
        return None if dense is None else (dense.accuracy, dense.shape_bias)
    return (setting[ACCURACY], setting[SHAPE_BIAS])


def front_hypervolume(results: list[ConfigurationResult], setting: str | dict[str, float]) -> float | None:
    """Hypervolume of the front of `results` above the reference `setting` (None while `dense` is not complete)."""
    reference = reference_of(setting, results)
    if reference is None:
        return None
    return hypervolume([(r.accuracy, r.shape_bias) for r in front_of(results)], reference)
