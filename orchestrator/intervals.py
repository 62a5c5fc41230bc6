"""How sure the front is: a bootstrap over seeds and images for every configuration.

One resample draws, for each configuration, its seeds with replacement (configurations were
trained independently, so each draws its own), and, once for all configurations, the test images
and the cue-conflict stimuli with replacement: every configuration is scored on the same
resampled images, so differences between them are paired on images. Each seed's accuracy, shape
bias and cue-decision rate are recomputed on the resampled images from its per-image outcomes
(`trainables.per_image`), and the configuration's value is the mean over its resampled seeds, as
its point estimate is the mean over its seeds. From `RESAMPLES` resamples:

- a 95% percentile interval for each metric;
- the difference from the dense reference on each metric, with its percentile interval;
- `p_front`: the share of resamples in which the configuration meets every floor and no other
  that does dominates it (floors relative to the dense reference read the resampled dense means).

A seed whose run logged no per-image outcomes (runs from before they were) keeps its recorded
value in every resample: then only its seeds vary. With two or three seeds the seed part of the
bootstrap is coarse and its intervals too narrow (docs/confirmation.md measures how much); the confirmation
stage (`orchestrator.confirmation`) is the test that is calibrated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from orchestrator.pareto import ConfigurationResult, Replicate
from search_spaces.constraints import CONSTRAINABLE, Floor
from trainables.metrics import ACCURACY, CUE_DECISION_RATE, HOLDOUT, SHAPE_BIAS
from trainables.per_image import PerImage

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0  # the same runs always give the same intervals
# What gets an interval: the objectives, their held-out and validity companions.
METRICS = (ACCURACY, SHAPE_BIAS, CUE_DECISION_RATE, SHAPE_BIAS + HOLDOUT, CUE_DECISION_RATE + HOLDOUT)
_CHUNK_CELLS = 4_000_000  # resampled image weights held at once (resamples x images)


@dataclass(frozen=True)
class Uncertainty:
    """One configuration's bootstrap: intervals, its difference from dense, and p_front."""

    intervals: dict[str, tuple[float, float]]  # metric -> (low, high)
    vs_dense: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # metric -> (diff, low, high)
    p_front: float = math.nan
    images_resampled: bool = False  # every seed logged its per-image outcomes

    def interval(self, metric: str) -> tuple[float, float]:
        return self.intervals.get(metric, (math.nan, math.nan))


def bootstrap(
    results: Sequence[ConfigurationResult],
    per_image: Mapping[str, PerImage],
    floors: Sequence[Floor] = (),
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, Uncertainty]:
    """Each configuration's `Uncertainty` from `resamples` resamples of seeds and (paired) images."""
    if not results:
        return {}
    rng = np.random.default_rng(seed)
    sizes = _image_counts(results, per_image)
    draws: dict[str, dict[str, list[np.ndarray]]] = {r.configuration: {m: [] for m in METRICS} for r in results}
    largest = max(sizes.values(), default=1)
    chunk = max(1, min(resamples, _CHUNK_CELLS // max(largest, 1)))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        weights = {name: rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(float) for name, n in sizes.items()}
        for r in results:
            seeds = rng.integers(0, r.seeds, size=(size, r.seeds))
            for metric in METRICS:
                per_seed = np.stack(
                    [_seed_values(rep, per_image.get(rep.run_id), metric, weights, size) for rep in r.replicates],
                    axis=1,
                )
                draws[r.configuration][metric].append(np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1))
        done += size
    values = {c: {m: np.concatenate(parts) for m, parts in by_metric.items()} for c, by_metric in draws.items()}
    on_front = _front_share(results, values, floors)
    dense = next((r for r in results if r.dense), None)
    tail = 100 * (1 - LEVEL) / 2
    out = {}
    for r in results:
        mine = values[r.configuration]
        intervals = {m: _percentiles(mine[m], tail) for m in METRICS if math.isfinite(r.mean(m))}
        vs_dense = {}
        if dense is not None and not r.dense:
            for m in intervals:
                if math.isfinite(dense.mean(m)):
                    low, high = _percentiles(mine[m] - values[dense.configuration][m], tail)
                    vs_dense[m] = (r.mean(m) - dense.mean(m), low, high)
        resampled = all(rep.run_id in per_image for rep in r.replicates) and bool(sizes)
        out[r.configuration] = Uncertainty(intervals, vs_dense, on_front[r.configuration], resampled)
    return out


def _image_counts(results: Sequence[ConfigurationResult], per_image: Mapping[str, PerImage]) -> dict[str, int]:
    """How many images each set has ('test', '' and '_holdout'), from the first seed that logged them."""
    sizes: dict[str, int] = {}
    for r in results:
        for rep in r.replicates:
            outcomes = per_image.get(rep.run_id)
            if outcomes is None:
                continue
            sizes.setdefault("test", len(outcomes.test_correct))
            for suffix, stimuli in outcomes.stimuli.items():
                sizes.setdefault(suffix, len(stimuli.scored))
    return {name: n for name, n in sizes.items() if n > 0}


def _seed_values(
    replicate: Replicate, outcomes: PerImage | None, metric: str, weights: dict[str, np.ndarray], size: int
) -> np.ndarray:
    """One seed's `metric` on each resample's images; its recorded value where it logged no outcomes."""
    unchanged = np.full(size, getattr(replicate, metric))
    if outcomes is None:
        return unchanged
    if metric == ACCURACY:
        w = weights.get("test")
        correct = outcomes.test_correct
        return unchanged if w is None or w.shape[1] != len(correct) else w @ correct / len(correct)
    suffix = HOLDOUT if metric.endswith(HOLDOUT) else ""
    stimuli, w = outcomes.stimuli.get(suffix), weights.get(suffix)
    if stimuli is None or w is None or w.shape[1] != len(stimuli.scored):
        return unchanged  # a set this seed did not log, or of another size than the others'
    cue = w @ (stimuli.shape + stimuli.texture)
    with np.errstate(invalid="ignore", divide="ignore"):  # no cue decision in a resample: NaN, as unscored
        if metric.removesuffix(HOLDOUT) == SHAPE_BIAS:
            return (w @ stimuli.shape) / cue
        return cue / (w @ stimuli.scored)


def _percentiles(values: np.ndarray, tail: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (math.nan, math.nan)
    low, high = np.percentile(finite, [tail, 100 - tail])
    return (float(low), float(high))


def _front_share(
    results: Sequence[ConfigurationResult], values: dict[str, dict[str, np.ndarray]], floors: Sequence[Floor]
) -> dict[str, float]:
    """The share of resamples in which each configuration is on the feasible front (see `pareto.front_of`)."""
    order = [r.configuration for r in results]
    accuracy = np.stack([values[c][ACCURACY] for c in order], axis=1)  # (resamples, configurations)
    bias = np.stack([values[c][SHAPE_BIAS] for c in order], axis=1)
    feasible = np.isfinite(accuracy) & np.isfinite(bias)
    dense = next((r.configuration for r in results if r.dense), None)
    for floor in floors:
        measured = np.stack([values[c][floor.metric] for c in order], axis=1) if floor.metric in CONSTRAINABLE else None
        if measured is None:
            continue
        if floor.relative:
            if dense is None:
                continue  # as `constraints.violations`: a relative floor without its reference is not applied
            bound = values[dense][floor.metric][:, None] + floor.value
        else:
            bound = np.full((len(accuracy), 1), floor.value)
        # Unmeasured is not below (`violations`): NaN never fails a floor.
        feasible &= ~(np.isfinite(measured) & np.isfinite(bound) & (measured < bound))
    count = len(order)
    step = max(1, _CHUNK_CELLS // max(count * count, 1))
    on = np.zeros_like(feasible)
    for start in range(0, len(accuracy), step):
        a, b, f = accuracy[start : start + step], bias[start : start + step], feasible[start : start + step]
        # [r, j, i]: configuration j, feasible, dominates i in resample r.
        no_worse = (a[:, :, None] >= a[:, None, :]) & (b[:, :, None] >= b[:, None, :])
        better = (a[:, :, None] > a[:, None, :]) | (b[:, :, None] > b[:, None, :])
        dominated = (f[:, :, None] & no_worse & better).any(axis=1)
        on[start : start + step] = f & ~dominated
    return {c: float(on[:, i].mean()) for i, c in enumerate(order)}
