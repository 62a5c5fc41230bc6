"""A search's report: the front as a table, a CSV and a plot, logged to the parent run."""

from __future__ import annotations

import csv
import functools
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from orchestrator import names
from orchestrator.errors import SearchError
from orchestrator.labels import place_labels
from orchestrator.pareto import ConfigurationResult, front_hypervolume, front_of, infeasible, reference_of, spread
from orchestrator.tracking import SearchRecord, child_runs, collect
from search_spaces.constraints import Floor
from search_spaces.params import DENSE_LABEL, OBJECTIVES
from trainables.messages import redact
from trainables.metrics import (
    ACCURACY,
    CUE_DECISION_RATE,
    CUE_DECISION_RATE_HOLDOUT,
    SHAPE_BIAS,
    SHAPE_BIAS_HOLDOUT,
)

DPI = 120  # of every report plot


def shown_rows(results: list[ConfigurationResult], floors: Sequence[Floor] = ()) -> list[ConfigurationResult]:
    """What the table lists: the front, the dense reference, and any infeasible configuration the floors kept off it."""
    front = front_of(results, floors)
    unconstrained = front_of(results)
    excluded = infeasible(results, floors)
    kept_off = [r for r in unconstrained if r.configuration in excluded and r not in front]
    return front + [r for r in results if r.dense and r not in front and r not in kept_off] + kept_off


def format_table(results: list[ConfigurationResult], floors: Sequence[Floor] = ()) -> str:
    """The front as a fixed-width table, the dense reference always listed (spreads: sample standard deviations)."""
    front = front_of(results, floors)
    excluded = infeasible(results, floors)
    rows = shown_rows(results, floors)
    width = max([4, *(len(r.kept_label()) for r in rows)])  # three placements' shares need 17 characters
    header = (
        f"{'config':<7} {'placement':<24} {'fraction':>8} {'kept':>{width}} {'lr':>7} {'wd':>7} {'batch':>5}  "
        f"{'accuracy':>15}  {'shape bias':>15}  {'held-out bias':>15}  {'cue rate':>8}  {'front':<10} child runs"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        p = r.params
        placement = DENSE_LABEL if r.dense else p.placement
        on_front = "yes" if r in front else "infeasible" if r.configuration in excluded else "no"
        lines.append(
            f"{r.configuration:<7} {placement:<24} {p.fraction_label():>8} {r.kept_label():>{width}} {p.lr:>7.4f} "
            f"{p.weight_decay:>7.0e} {p.batch_size:>5}  {spread(r, ACCURACY):>15}  {spread(r, SHAPE_BIAS):>15}  "
            f"{spread(r, SHAPE_BIAS_HOLDOUT):>15}  {_number(r.mean(CUE_DECISION_RATE)):>8}  {on_front:<10} "
            f"{','.join(i[:8] for i in r.run_ids)}"
        )
    seeds = max((r.seeds for r in results), default=0)
    lines.append(
        f"fraction: asked for; kept: k / (H x W) per placement, the network trained. +- is the sample standard "
        f"deviation over {seeds} seeds; cue rate: share of conflict images whose decision names shape or texture"
        if seeds > 1
        else "fraction: asked for; kept: k / (H x W) per placement, the network trained (one seed: no spread). "
        "cue rate: share of conflict images whose decision names shape or texture"
    )
    for configuration, misses in sorted(excluded.items()):
        result = next(r for r in results if r.configuration == configuration)
        why = ", ".join(f"{f.metric} {result.mean(f.metric):.3f} < {bound:.3f} ({f})" for f, bound in misses.items())
        lines.append(f"{configuration} is infeasible: {why}")
    return "\n".join(lines)


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


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


def write_csv(results: list[ConfigurationResult], path: Path, floors: Sequence[Floor] = ()) -> None:
    """Every configuration: parameters, network, seed statistics, feasibility and whether it is on the front."""
    front = set(front_of(results, floors))
    excluded = infeasible(results, floors)
    measured = (ACCURACY, SHAPE_BIAS, SHAPE_BIAS_HOLDOUT, CUE_DECISION_RATE, CUE_DECISION_RATE_HOLDOUT)
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
                *(f"{m}_{stat}" for m in measured for stat in ("mean", "std")),
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
                    *(value for m in measured for value in (r.mean(m), r.std(m))),
                    r.configuration not in excluded,
                    "; ".join(str(f) for f in excluded.get(r.configuration, {})),
                    r in front,
                    r.dense,
                    " ".join(r.run_ids),
                ]
            )


def plot(results: list[ConfigurationResult], path: Path, title: str, floors: Sequence[Floor] = ()) -> None:
    """Every configuration with seed error bars: the front in red, infeasible ones crossed, the dense model a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = front_of(results, floors)
    excluded = infeasible(results, floors)
    figure, axis = plt.subplots(figsize=(7.2, 5.4))
    crossed = False
    for r in results:
        colour = "tab:red" if r in front else "tab:gray"
        axis.errorbar(
            r.accuracy,
            r.shape_bias,
            xerr=_bar(r.accuracy_std),
            yerr=_bar(r.shape_bias_std),
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
    spread = "bars: sample standard deviation over seeds" if max(r.seeds for r in results) > 1 else "one seed"
    axis.set_ylabel(f"shape bias (cue conflict; mean over seeds)\n{spread}")

    def labels() -> None:
        # The dense reference's star is larger than the other markers: its label keeps clear of all of it.
        points, texts = [(r.accuracy, r.shape_bias) for r in results], [_label(r) for r in results]
        place_labels(axis, points, texts, marker_size=13, dpi=DPI)

    _save(figure, axis, path, title, legend_size=8, before_saving=labels)


def _bar(std: float) -> float:
    return 0.0 if math.isnan(std) else std


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


def report_front(
    client: MlflowClient, search: SearchRecord, out_dir: Path, seeds: int | None = None
) -> tuple[list[ConfigurationResult], float]:
    """Print the front, write pareto-<search id>.csv / .png to out_dir and log both to the parent run."""
    seeds = seeds or len(search.seeds)
    results = collect(client, search, seeds)
    if not results:
        raise SearchError(f"search {search.search_id} has no configuration whose {seeds} seeds all finished")
    floors = search.floors
    front = front_of(results, floors)
    # The same rule HypervolumeLog charted during the search: one place decides the corner.
    reference = reference_of(search.reference_point, results)
    volume = front_hypervolume(results, search.reference_point, floors)
    volume = math.nan if volume is None else volume
    above = (
        "the dense reference"
        if search.reference_point == "dense" or reference is None
        else f"({reference[0]:g}, {reference[1]:g})"
    )
    print(
        f"\nPareto front of {search.search_id}: {len(front)} of {len(results)} configurations, "
        + (
            f"hypervolume {volume:.4f} above {above}"
            if reference
            else "no hypervolume (its reference, the dense model, did not complete)"
        )
    )
    print(format_table(results, floors))
    out_dir.mkdir(parents=True, exist_ok=True)
    # Named after the search, so two searches run in one folder never overwrite each other's.
    csv_path, png_path = out_dir / f"pareto-{search.search_id}.csv", out_dir / f"pareto-{search.search_id}.png"
    write_csv(results, csv_path, floors)
    plot(results, png_path, f"{search.search_id}: accuracy vs shape bias ({seeds} seeds per point)", floors)
    categories_path = out_dir / f"pareto-{search.search_id}-categories.png"
    written = [csv_path, png_path]
    if plot_categories(
        results, categories_path, f"{search.search_id}: shape bias per category, front vs dense", floors
    ):
        written.append(categories_path)
    with tempfile.TemporaryDirectory() as staging:
        # In MLflow the parent run is the search already: there they keep their plain names.
        for path in written:
            shutil.copy(path, Path(staging) / path.name.replace(f"-{search.search_id}", ""))
        client.log_artifacts(search.run_id, staging)
    # The search logged this already as its last configuration finished (HypervolumeLog, whose
    # steps also count stopped and failed configurations); `pareto` on an older search had not:
    # a value already charted is not charted again, so the chart shows no double.
    history = client.get_metric_history(search.run_id, names.HYPERVOLUME)
    if reference is not None and volume not in {m.value for m in history}:
        client.log_metric(
            search.run_id, names.HYPERVOLUME, volume, step=max([len(results), *(m.step for m in history)])
        )
    client.log_metric(search.run_id, names.FRONT_SIZE, len(front))
    print(f"wrote {', '.join(str(p) for p in written)} (also logged to MLflow run {search.run_id})")
    return results, volume


def report_reuse(client: MlflowClient, search: SearchRecord, optuna_storage: str) -> int:
    """How many of the sampler's proposals repeated a network already trained (told its results, not trained)."""
    import optuna

    try:
        study = optuna.load_study(study_name=search.search_id, storage=optuna_storage)
    except KeyError:  # optuna_storage names another database than the search's
        return 0
    trials = study.get_trials(deepcopy=False)
    reused = [t for t in trials if names.REUSED_CONFIGURATION in t.user_attrs]
    print(
        f"distinct networks: {len(trials) - len(reused)} proposed configurations trained, each another network; "
        f"{len(reused)} of the sampler's {len(trials)} proposals repeated one of them (the same k at every "
        f"placement) and {'was' if len(reused) == 1 else 'were'} told its results instead of training it again"
    )
    client.log_metric(search.run_id, names.REUSED_PROPOSALS, len(reused))
    return len(reused)


def report_importances(client: MlflowClient, search: SearchRecord, optuna_storage: str) -> dict[str, dict[str, float]]:
    """Each searched parameter's importance per objective (Optuna's fANOVA), printed and logged to the parent run."""
    import optuna

    try:
        study = optuna.load_study(study_name=search.search_id, storage=optuna_storage)
    except KeyError:  # optuna_storage names another database than the search's
        print(f"parameter importance: not computed (no study {search.search_id} in {redact(optuna_storage)})")
        return {}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        print(
            "parameter importance: needs 2 complete configurations besides the dense one, "
            f"the study has {len(complete)}"
        )
        return {}
    importances = {}
    try:
        for index, objective in enumerate(OBJECTIVES):
            # Seeded, so the same study always prints the same figures.
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            values = optuna.importance.get_param_importances(
                study, evaluator=evaluator, target=functools.partial(_value, index=index)
            )
            importances[objective] = {param: float(value) for param, value in values.items()}
    except (ValueError, RuntimeError) as error:  # e.g. no parameter varied: the search's result stands
        print(f"parameter importance: not computed ({' '.join(str(error).split())[:200]})")
        return {}
    params = sorted({p for values in importances.values() for p in values})
    print(f"parameter importance (fANOVA over {len(complete)} configurations; each column sums to 1)")
    print(f"{'parameter':<24} " + " ".join(f"{o:>10}" for o in OBJECTIVES))
    for param in params:
        print(f"{param:<24} " + " ".join(f"{importances[o].get(param, 0.0):>10.3f}" for o in OBJECTIVES))
    now = int(time.time() * 1000)
    client.log_batch(
        search.run_id,
        metrics=[
            Metric(f"{names.IMPORTANCE_PREFIX}{o}.{p}", v, now, 0)
            for o, values in importances.items()
            for p, v in values.items()
        ],
    )
    return importances


def _value(trial: Any, index: int) -> float:
    """One objective's value of a finished Optuna trial."""
    return float(trial.values[index])


def report_early_stopping(client: MlflowClient, search: SearchRecord, epochs: int) -> dict[str, float]:
    """What early stopping saved: stopped configurations and trial-epochs, printed and logged to the parent run."""
    children = child_runs(client, search.experiment_id, search.run_id)
    stopped = [r for r in children if names.STOPPED_AT_EPOCH in r.data.tags]
    trained = sum(int(r.data.metrics.get(names.EPOCH, 0)) for r in children)
    saved = sum(epochs - int(r.data.tags[names.STOPPED_AT_EPOCH]) for r in stopped)
    configurations = {r.data.tags.get(names.CONFIGURATION) for r in stopped}
    summary = {
        names.STOPPED_CONFIGURATIONS: float(len(configurations)),
        names.EPOCHS_SAVED: float(saved),
        names.EPOCHS_TRAINED: float(trained),
    }
    total = trained + saved
    print(
        f"early stopping: {len(configurations)} of {len({r.data.tags.get(names.CONFIGURATION) for r in children})} "
        f"configurations stopped; {trained} of {total} trial-epochs trained ({saved} saved, "
        f"{saved / total if total else 0:.0%})"
    )
    now = int(time.time() * 1000)
    client.log_batch(search.run_id, metrics=[Metric(k, v, now, 0) for k, v in summary.items()])
    return summary
