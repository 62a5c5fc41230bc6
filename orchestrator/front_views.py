"""The front as a user reads it: a fixed-width table, a CSV and plots, each with its intervals.

Every number beside a seed mean is a 95% bootstrap interval over seeds and images
(`orchestrator.intervals`); `p_front` is the share of resamples in which a configuration is on the
feasible front. Nothing here reads MLflow: `orchestrator.report` hands these the results.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.intervals import METRICS, RESAMPLES, Uncertainty, bootstrap
from orchestrator.labels import place_labels
from orchestrator.pareto import ConfigurationResult, front_of, infeasible
from search_spaces.constraints import Floor
from search_spaces.params import DENSE_LABEL
from trainables.metrics import ACCURACY, CUE_DECISION_RATE, SHAPE_BIAS, SHAPE_BIAS_HOLDOUT

DPI = 120  # of every report plot
# Past this many configurations a label per point buries the plot (and placing them costs seconds):
# then only the front's and the dense reference's are labelled; the table and CSV name every one.
LABEL_EVERY_POINT_UP_TO = 30
Bounds = Mapping[str, Uncertainty]


def _bounds(results: list[ConfigurationResult], floors: Sequence[Floor], bounds: Bounds | None) -> Bounds:
    """The given bootstrap, else one over seeds alone (no per-image outcomes at hand)."""
    return bounds if bounds is not None else bootstrap(results, {}, floors)


def shown_rows(results: list[ConfigurationResult], floors: Sequence[Floor] = ()) -> list[ConfigurationResult]:
    """What the table lists: the front, the dense reference, and any infeasible configuration the floors kept off it."""
    front = front_of(results, floors)
    unconstrained = front_of(results)
    excluded = infeasible(results, floors)
    kept_off = [r for r in unconstrained if r.configuration in excluded and r not in front]
    return front + [r for r in results if r.dense and r not in front and r not in kept_off] + kept_off


def with_interval(result: ConfigurationResult, metric: str, bounds: Bounds, digits: int = 3) -> str:
    """'0.805 [0.781, 0.829]': the seed mean and its 95% interval; '-' where unmeasured."""
    mean = result.mean(metric)
    if math.isnan(mean):
        return "-"  # e.g. the held-out bias of a search with data.split: none
    low, high = bounds[result.configuration].interval(metric) if result.configuration in bounds else (math.nan,) * 2
    if math.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def difference(bound: tuple[float, float, float], digits: int = 3) -> str:
    """'+0.040 [+0.010, +0.070]': a difference and its interval."""
    diff, low, high = bound
    return f"{diff:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def format_table(results: list[ConfigurationResult], floors: Sequence[Floor] = (), bounds: Bounds | None = None) -> str:
    """The front as a fixed-width table, the dense reference always listed, every mean with its 95% interval."""
    bounds = _bounds(results, floors, bounds)
    front = front_of(results, floors)
    excluded = infeasible(results, floors)
    rows = shown_rows(results, floors)
    width = max([4, *(len(r.kept_label()) for r in rows)])  # three placements' shares need 17 characters
    cell = 20  # '0.805 [0.781, 0.829]'
    header = (
        f"{'config':<7} {'placement':<24} {'fraction':>8} {'kept':>{width}} {'lr':>7} {'wd':>7} {'batch':>5}  "
        f"{'accuracy':>{cell}}  {'shape bias':>{cell}}  {'held-out bias':>{cell}}  {'cue rate':>8}  "
        f"{'p_front':>7}  {'front':<10} child runs"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        p = r.params
        placement = DENSE_LABEL if r.dense else p.placement
        on_front = "yes" if r in front else "infeasible" if r.configuration in excluded else "no"
        p_front = bounds[r.configuration].p_front if r.configuration in bounds else math.nan
        lines.append(
            f"{r.configuration:<7} {placement:<24} {p.fraction_label():>8} {r.kept_label():>{width}} {p.lr:>7.4f} "
            f"{p.weight_decay:>7.0e} {p.batch_size:>5}  {with_interval(r, ACCURACY, bounds):>{cell}}  "
            f"{with_interval(r, SHAPE_BIAS, bounds):>{cell}}  {with_interval(r, SHAPE_BIAS_HOLDOUT, bounds):>{cell}}  "
            f"{_number(r.mean(CUE_DECISION_RATE)):>8}  {_number(p_front, 2):>7}  {on_front:<10} "
            f"{','.join(i[:8] for i in r.run_ids)}"
        )
    seeds = max((r.seeds for r in results), default=0)
    images = all(b.images_resampled for b in bounds.values())
    over = f"its {seeds} seeds and the images (paired across configurations)" if images else f"its {seeds} seeds"
    lines.append(
        "fraction: asked for; kept: k / (H x W) per placement, the network trained; cue rate: share of conflict "
        "images whose decision names shape or texture"
    )
    lines.append(
        f"intervals [low, high]: 95% bootstrap interval of the seed mean over {over}, {RESAMPLES} resamples; "
        "p_front: share of resamples on the feasible front"
        + ("" if images else " (no per-image outcomes logged: images not resampled)")
        + ("; few seeds make these intervals too narrow: `confirm` tests on fresh seeds" if seeds <= 3 else "")
    )
    for r in rows:
        gaps = bounds[r.configuration].vs_dense if r.configuration in bounds else {}
        named = [(m, label) for m, label in _DIFFERENCES if m in gaps]
        if named:
            lines.append(
                f"{r.configuration} - dense: " + ", ".join(f"{label} {difference(gaps[m])}" for m, label in named)
            )
    for configuration, misses in sorted(excluded.items()):
        result = next(r for r in results if r.configuration == configuration)
        why = ", ".join(f"{f.metric} {result.mean(f.metric):.3f} < {bound:.3f} ({f})" for f, bound in misses.items())
        lines.append(f"{configuration} is infeasible: {why}")
    return "\n".join(lines)


_DIFFERENCES = ((ACCURACY, "accuracy"), (SHAPE_BIAS, "shape bias"), (SHAPE_BIAS_HOLDOUT, "held-out bias"))


def _number(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _label(r: ConfigurationResult) -> str:
    """'c004 layer1+layer2 32.8%+31.2%' (the kept share; the asked fraction where it differs), or 'dense'."""
    if r.dense:
        return "dense"
    if not r.kept:  # runs from before k was logged
        fraction = r.params.fraction_label(2)
        return (
            f"{r.configuration} {fraction}"
            if r.params.fractions
            else f"{r.configuration} {r.params.placement} {fraction}"
        )
    asked = r.params.topk()
    differs = any(abs(k / positions - asked[name]) > 0.0005 for name, k, positions in r.kept)
    label = f"{r.configuration} {r.params.placement} {r.kept_label()}"
    if differs and not r.params.fractions:
        label += f" (asked {100 * r.params.fraction:.1f}%)"
    return label


def write_csv(
    results: list[ConfigurationResult], path: Path, floors: Sequence[Floor] = (), bounds: Bounds | None = None
) -> None:
    """Every configuration: parameters, network, seed statistics and intervals, feasibility, p_front, the front."""
    bounds = _bounds(results, floors, bounds)
    front = set(front_of(results, floors))
    excluded = infeasible(results, floors)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "configuration",
                "placement",
                "fraction",
                "k",
                "kept",
                "lr",
                "weight_decay",
                "batch_size",
                "seeds",
                # std: the sample standard deviation over seeds; ci: the 95% bootstrap interval of the mean.
                *(f"{m}_{stat}" for m in METRICS for stat in ("mean", "std", "ci_low", "ci_high")),
                *(f"{m}_vs_dense{stat}" for m in METRICS for stat in ("", "_ci_low", "_ci_high")),
                "p_front",
                "images_resampled",
                "feasible",
                "infeasible_because",
                "on_front",
                "dense_reference",
                "child_run_ids",
            ]
        )
        for r in results:
            p = r.params
            fraction = "; ".join(f"{n}={v}" for n, v in p.fractions) if p.fractions else p.fraction
            mine = bounds[r.configuration]
            nan3 = (math.nan, math.nan, math.nan)
            writer.writerow(
                [
                    r.configuration,
                    p.placement,
                    fraction,
                    "; ".join(f"{name}={k}/{positions}" for name, k, positions in r.kept),
                    "; ".join(f"{name}={k / positions:.6g}" for name, k, positions in r.kept),
                    p.lr,
                    p.weight_decay,
                    p.batch_size,
                    r.seeds,
                    *(v for m in METRICS for v in (r.mean(m), r.std(m), *mine.interval(m))),
                    *(v for m in METRICS for v in mine.vs_dense.get(m, nan3)),
                    mine.p_front,
                    mine.images_resampled,
                    r.configuration not in excluded,
                    "; ".join(str(f) for f in excluded.get(r.configuration, {})),
                    r in front,
                    r.dense,
                    " ".join(r.run_ids),
                ]
            )


def plot(
    results: list[ConfigurationResult],
    path: Path,
    title: str,
    floors: Sequence[Floor] = (),
    bounds: Bounds | None = None,
) -> None:
    """Every configuration with 95% interval bars: the front in red, infeasible ones crossed, the dense model a star.

    Each point is labelled, or past `LABEL_EVERY_POINT_UP_TO` configurations the front's and the dense one's.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bounds = _bounds(results, floors, bounds)
    front = front_of(results, floors)
    excluded = infeasible(results, floors)
    figure, axis = plt.subplots(figsize=(7.2, 5.4))
    crossed = False
    for r in results:
        colour = "tab:red" if r in front else "tab:gray"
        mine = bounds[r.configuration]
        axis.errorbar(
            r.accuracy,
            r.shape_bias,
            xerr=_bar(r.accuracy, mine.interval(ACCURACY)),
            yerr=_bar(r.shape_bias, mine.interval(SHAPE_BIAS)),
            fmt="none",
            ecolor=colour,
            alpha=0.6,
            lw=1,
        )
        if r.configuration in excluded:
            axis.scatter(
                r.accuracy,
                r.shape_bias,
                s=50,
                marker="x",
                color="tab:gray",
                zorder=3,
                label=None if crossed else "infeasible (misses a constraint)",
            )
            crossed = True
            continue
        axis.scatter(
            r.accuracy,
            r.shape_bias,
            s=160 if r.dense else 40,
            marker="*" if r.dense else "o",
            color=colour,
            edgecolor="black",
            zorder=3,
            label="dense reference (no Top-K)" if r.dense else None,
        )
    steps = sorted(((r.accuracy, r.shape_bias) for r in front), key=lambda p: p[0])
    axis.plot([p[0] for p in steps], [p[1] for p in steps], color="tab:red", lw=1.5, label="Pareto front")
    axis.set_xlabel("accuracy (held-out, last epoch; mean over seeds)")
    images = all(b.images_resampled for b in bounds.values())
    over = "seeds and images" if images else "seeds"
    axis.set_ylabel(f"shape bias (cue conflict; mean over seeds)\nbars: 95% bootstrap interval over {over}")

    on_front = {r.configuration for r in front}
    labelled = [r for r in results if len(results) <= LABEL_EVERY_POINT_UP_TO or r.dense or r.configuration in on_front]

    def labels() -> None:
        # The dense reference's star is larger than the other markers: its label keeps clear of all of it.
        points, texts = [(r.accuracy, r.shape_bias) for r in labelled], [_label(r) for r in labelled]
        place_labels(axis, points, texts, marker_size=13, dpi=DPI)

    _save(figure, axis, path, title, legend_size=8, before_saving=labels)


def _bar(mean: float, interval: tuple[float, float]) -> list[list[float]]:
    """An asymmetric error bar from an interval (none where it is unknown)."""
    low, high = interval
    if math.isnan(low):
        return [[0.0], [0.0]]
    return [[max(0.0, mean - low)], [max(0.0, high - mean)]]


def plot_categories(results: list[ConfigurationResult], path: Path, title: str, floors: Sequence[Floor] = ()) -> bool:
    """Each category's shape bias for the front configurations and the dense reference; False if none reported."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = front_of(results, floors)
    shown = front + [r for r in results if r.dense and r not in front]
    per_category = {r.configuration: r.per_category() for r in shown}
    categories = sorted(set().union(*per_category.values()))
    if not categories:
        return False
    figure, axis = plt.subplots(figsize=(max(6.4, 0.55 * len(categories) + 2), 4.8))
    for r in shown:
        values = per_category[r.configuration]
        xs = [i for i, c in enumerate(categories) if c in values]
        label = "dense reference" if r.dense else f"{r.configuration} {_label(r)}"
        axis.plot(
            xs,
            [values[categories[i]] for i in xs],
            marker="*" if r.dense else "o",
            ms=10 if r.dense else 5,
            color="black" if r.dense else None,
            lw=1.5 if r.dense else 1,
            alpha=1 if r.dense else 0.8,
            label=label,
        )
    axis.set_xticks(range(len(categories)), categories, rotation=45, ha="right")
    axis.set_ylim(-0.02, 1.02)
    held_out = any(r.has_holdout for r in shown)
    axis.set_ylabel(f"shape bias per category ({'report set' if held_out else 'all stimuli'}; mean over seeds)")
    _save(figure, axis, path, title, legend_size=7)
    return True


def _save(
    figure: Any, axis: Any, path: Path, title: str, legend_size: int, before_saving: Callable[[], None] | None = None
) -> None:
    """Title, legend and grid as every report plot has them; written to `path` and closed.

    `before_saving` runs once the layout is final (labels placed by their drawn size need that).
    """
    import matplotlib.pyplot as plt

    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    if before_saving is not None:
        before_saving()
    # After the labels: `loc="best"` then keeps the legend off them.
    axis.legend(fontsize=legend_size, loc="best")
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
