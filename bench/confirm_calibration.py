"""False-positive rate of the confirmation test, dense against dense (docs/confirmation.md).

The null is made true by construction: "the confirmed configuration" and "the dense reference" are
both the dense network on other seeds, so every significant gain is a false positive. Seed values
come from one of two noise models, per metric (accuracy, held-out shape bias), built from the
recorded last-epoch (epoch 6) per-seed values in bench/data/replay_quickstart.csv:

- recorded: each configuration's 3 seed values minus their mean, times sqrt(3/2) (so they have the
  per-seed variance), pooled over all configurations; a seed value is dense's (c000's) 3-seed mean
  plus a residual drawn from the pool with replacement;
- normal: Normal(dense's mean, the pooled residuals' sd).

Per repetition, N values are drawn for each group and tested as `orchestrator.confirmation` does:
Welch's t-test (a false positive when p < 0.05); the family of M = 3 such configurations against one
shared dense draw, Holm-adjusted with `confirmation.holm` (a false positive when any adjusted p <
0.05); and, for contrast, the percentile bootstrap over seeds the search report's intervals use (a
false positive when the 95% interval of the difference of means excludes 0). Welch's p-values are
computed for all repetitions at once with the same scipy call `confirmation.welch` makes; the first
`--check` repetitions of every cell are recomputed with `confirmation.welch` itself and must agree.
"""

from __future__ import annotations

import argparse
import csv
import math
import warnings
from functools import partial
from pathlib import Path

import numpy as np
from scipy import stats

from orchestrator.confirmation import ALPHA, holm, welch

DATA = Path(__file__).parent / "data" / "replay_quickstart.csv"
METRICS = ("accuracy", "shape_bias_holdout")
DENSE = "c000"
LAST_EPOCH = "6"
LEVEL = 0.95


def last_epoch(path: Path) -> dict[str, dict[str, list[float]]]:
    """Each configuration's last-epoch per-seed values: configuration -> metric -> values."""
    with path.open() as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#")) if r["epoch"] == LAST_EPOCH]
    values: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        for metric in METRICS:
            values.setdefault(r["configuration"], {}).setdefault(metric, []).append(float(r[metric]))
    return values


def residual_pool(values: dict[str, dict[str, list[float]]], metric: str) -> np.ndarray:
    """Every configuration's seed values minus their mean, scaled to the per-seed variance, pooled."""
    pooled = []
    for by_metric in values.values():
        v = np.asarray(by_metric[metric])
        pooled.append((v - v.mean()) * math.sqrt(len(v) / (len(v) - 1)))
    return np.concatenate(pooled)


def draw(rng: np.random.Generator, noise: str, mean: float, pool: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Simulated seed values of the dense network under noise model `noise`."""
    if noise == "recorded":
        return mean + rng.choice(pool, size=shape, replace=True)
    return rng.normal(mean, math.sqrt(np.mean(pool**2)), size=shape)


def welch_p(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The p-value `confirmation.welch` gives, for each row (repetition) at once; NaN where it gives NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # groups without spread: scipy warns
        p = np.asarray(stats.ttest_ind(values, reference, axis=-1, equal_var=False).pvalue, dtype=float)
    # As `welch`: no spread in either group is nothing to test (scipy would give p = 0 if the means differ).
    flat = (np.ptp(values, axis=-1) == 0) & (np.ptp(reference, axis=-1) == 0)
    return np.where(np.isfinite(p) & ~flat, p, np.nan)


def check(values: np.ndarray, reference: np.ndarray, p: np.ndarray, rows: int) -> None:
    """Recompute the first `rows` p-values with `confirmation.welch` itself; they must agree."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        direct = np.array(
            [welch(list(v), list(r), level=LEVEL).p for v, r in zip(values[:rows], reference[:rows], strict=True)]
        )
    if not np.allclose(direct, p[:rows], rtol=1e-12, atol=0, equal_nan=True):
        raise AssertionError("vectorised Welch p-values differ from confirmation.welch")


def flat(values: np.ndarray, reference: np.ndarray, p: np.ndarray) -> str:
    """Repetitions in which neither group has any spread: `welch` tests nothing there (p = NaN, never a positive)."""
    none = (np.ptp(values, axis=-1) == 0) & (np.ptp(reference, axis=-1) == 0)
    return str(int(np.sum(none)))


def bootstrap_excludes_zero(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, resamples: int) -> np.ndarray:
    """Per row, whether the 95% percentile bootstrap interval of mean(x) - mean(y) excludes 0."""
    reps, n = x.shape
    ix = rng.integers(0, n, size=(reps, resamples, n))
    iy = rng.integers(0, n, size=(reps, resamples, n))
    diff = x[np.arange(reps)[:, None, None], ix].mean(-1) - y[np.arange(reps)[:, None, None], iy].mean(-1)
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(diff, [tail, 100 - tail], axis=1)
    return np.asarray((low > 0) | (high < 0))


def row(noise: str, metric: str, test: str, n: int, m: int, positives: int, reps: int, flats: str = "") -> str:
    """One markdown table row: the false-positive rate with its 95% Wilson interval."""
    ci = stats.binomtest(positives, reps).proportion_ci(confidence_level=0.95, method="wilson")
    return (
        f"| {noise} | {metric} | {test} | {n} | {m} | {reps} | {positives / reps:.2%} "
        f"| [{ci.low:.2%}, {ci.high:.2%}] | {ALPHA:.0%} | {flats} |"
    )


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=20000, help="per Welch / Holm cell")
    parser.add_argument("--bootstrap-repetitions", type=int, default=2000, help="per bootstrap cell (slower)")
    parser.add_argument("--resamples", type=int, default=500, help="bootstrap resamples per repetition")
    parser.add_argument("--check", type=int, default=200, help="repetitions per cell recomputed with welch()")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    values = last_epoch(args.data)
    reps, boot = args.repetitions, args.bootstrap_repetitions

    print(f"data: {args.data.name}, epoch {LAST_EPOCH}, {len(values)} configurations, dense = {DENSE}")
    pools = {metric: residual_pool(values, metric) for metric in METRICS}
    means = {metric: float(np.mean(values[DENSE][metric])) for metric in METRICS}
    for metric, pool in pools.items():
        sd = math.sqrt(np.mean(pool**2))
        print(f"{metric}: dense mean {means[metric]:.4f}, pooled seed sd {sd:.4f}, {len(pool)} residuals pooled")
    print(f"Welch and Holm: {reps} repetitions per cell; bootstrap: {boot} repetitions x {args.resamples} resamples")
    print("(fewer for the bootstrap: it is slower). flat: repetitions in which neither group had any spread;")
    print(
        "welch() tests nothing there (p = NaN: never a positive; scipy alone would give p = 0 if the means differ).\n"
    )
    print("| noise | metric | test | N | M | repetitions | false positives | 95% interval | nominal | flat |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for noise in ("recorded", "normal"):
        for metric in METRICS:
            sample = partial(draw, rng, noise, means[metric], pools[metric])
            for n in (2, 3, 5, 8):
                x, y = sample((reps, n)), sample((reps, n))
                p = welch_p(x, y)
                check(x, y, p, args.check)
                print(row(noise, metric, "Welch", n, 1, int(np.sum(p < ALPHA)), reps, flat(x, y, p)))
            for n in (3, 5):
                x, y = sample((reps, 3, n)), sample((reps, 1, n))
                p = welch_p(x, y)
                check(x[:, 0], y[:, 0], p[:, 0], args.check)
                adjusted = np.array([holm(list(ps)) for ps in p])
                print(row(noise, metric, "Welch + Holm", n, 3, int(np.sum(np.any(adjusted < ALPHA, axis=1))), reps))
            for n in (2, 3, 5):
                x, y = sample((boot, n)), sample((boot, n))
                positives = int(np.sum(bootstrap_excludes_zero(rng, x, y, args.resamples)))
                print(row(noise, metric, "percentile bootstrap", n, 1, positives, boot))


if __name__ == "__main__":
    main()
