"""The accuracy / shape-bias Pareto front over configurations, read back from MLflow.

A configuration's point is the mean over its seeds (standard deviation shown). Only
configurations whose every seed FINISHED all its epochs count: a failed, killed or partial
trial never enters the front. Both objectives are maximised; the hypervolume is the area the
front dominates above the reference point (0, 0).
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.tracking import child_runs


@dataclass(frozen=True)
class ConfigurationResult:
    """One configuration's seed mean and spread, and the child runs behind it."""

    configuration: str
    placement: str
    fraction: float
    lr: float
    seeds: int
    accuracy: float
    accuracy_std: float
    shape_bias: float
    shape_bias_std: float
    run_ids: tuple[str, ...]
    dense: bool


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


def collect(client: MlflowClient, experiment: str, parent_run_id: str, seeds: int) -> list[ConfigurationResult]:
    """Configurations whose `seeds` child runs all FINISHED, with seed means and spreads."""
    by_configuration: dict[str, list] = {}
    for run in child_runs(client, experiment, parent_run_id):
        by_configuration.setdefault(run.data.tags.get("configuration", "?"), []).append(run)
    results = []
    for configuration, runs in sorted(by_configuration.items()):
        finished = [
            r for r in runs
            if r.info.status == "FINISHED" and all(math.isfinite(r.data.metrics.get(m, math.nan)) for m in ("accuracy", "shape_bias"))
        ]
        if len(finished) < seeds or len(finished) != len(runs):
            continue
        accuracy = [r.data.metrics["accuracy"] for r in finished]
        shape_bias = [r.data.metrics["shape_bias"] for r in finished]
        params = finished[0].data.params
        results.append(
            ConfigurationResult(
                configuration=configuration,
                placement=params.get("placement", "?"),
                fraction=float(params.get("fraction", "nan")),
                lr=float(params.get("lr", "nan")),
                seeds=len(finished),
                accuracy=statistics.fmean(accuracy),
                accuracy_std=statistics.pstdev(accuracy),
                shape_bias=statistics.fmean(shape_bias),
                shape_bias_std=statistics.pstdev(shape_bias),
                run_ids=tuple(sorted(r.info.run_id for r in finished)),
                dense=finished[0].data.tags.get("dense_reference") == "true",
            )
        )
    return results


def front_of(results: list[ConfigurationResult]) -> list[ConfigurationResult]:
    """The non-dominated configurations, most accurate first."""
    ranks = non_dominated_ranks([(r.accuracy, r.shape_bias) for r in results])
    return sorted((r for r, k in zip(results, ranks) if k == 0), key=lambda r: -r.accuracy)


def format_table(results: list[ConfigurationResult]) -> str:
    """The front as a fixed-width table, with the dense reference always listed."""
    front = front_of(results)
    rows = front + [r for r in results if r.dense and r not in front]
    header = f"{'config':<7} {'placement':<24} {'fraction':>8} {'lr':>7}  {'accuracy':>15}  {'shape bias':>15}  front  child runs"
    lines = [header, "-" * len(header)]
    for r in rows:
        placement = "dense (no Top-K)" if r.dense else r.placement
        fraction = "-" if r.dense else f"{r.fraction:.3f}"
        lines.append(
            f"{r.configuration:<7} {placement:<24} {fraction:>8} {r.lr:>7.4f}  {r.accuracy:.3f} +- {r.accuracy_std:.3f}  "
            f"{r.shape_bias:.3f} +- {r.shape_bias_std:.3f}  {'yes' if r in front else 'no':<5}  {','.join(i[:8] for i in r.run_ids)}"
        )
    return "\n".join(lines)


def write_csv(results: list[ConfigurationResult], path: Path) -> None:
    """Every configuration with its seed statistics and whether it is on the front."""
    front = set(front_of(results))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["configuration", "placement", "fraction", "lr", "seeds", "accuracy_mean", "accuracy_std",
                         "shape_bias_mean", "shape_bias_std", "on_front", "dense_reference", "child_run_ids"])
        for r in results:
            writer.writerow([r.configuration, r.placement, r.fraction, r.lr, r.seeds, r.accuracy, r.accuracy_std,
                             r.shape_bias, r.shape_bias_std, r in front, r.dense, " ".join(r.run_ids)])


def plot(results: list[ConfigurationResult], path: Path, title: str) -> None:
    """All configurations with seed error bars; the front highlighted; the dense model marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = front_of(results)
    figure, axis = plt.subplots(figsize=(6.4, 4.8))
    for r in results:
        colour = "tab:red" if r in front else "tab:gray"
        axis.errorbar(r.accuracy, r.shape_bias, xerr=r.accuracy_std, yerr=r.shape_bias_std, fmt="none", ecolor=colour, alpha=0.6, lw=1)
        axis.scatter(r.accuracy, r.shape_bias, s=160 if r.dense else 40, marker="*" if r.dense else "o", color=colour,
                     edgecolor="black", zorder=3, label="dense reference (no Top-K)" if r.dense else None)
        axis.annotate("dense" if r.dense else f"{r.placement} {r.fraction:.2f}", (r.accuracy, r.shape_bias),
                      fontsize=7, xytext=(4, 4), textcoords="offset points")
    steps = sorted(((r.accuracy, r.shape_bias) for r in front), key=lambda p: p[0])
    axis.plot([p[0] for p in steps], [p[1] for p in steps], color="tab:red", lw=1.5, label="Pareto front")
    axis.set_xlabel("accuracy (held-out, last epoch; mean over seeds)")
    axis.set_ylabel("shape bias (cue conflict; mean over seeds)")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8, loc="best")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
