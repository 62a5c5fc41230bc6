"""A search's report: the front as a table, a CSV and a plot (`orchestrator.front_views`), logged to the parent run."""

from __future__ import annotations

import functools
import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from orchestrator import names
from orchestrator.errors import SearchError
from orchestrator.front_views import format_table, plot, plot_categories, write_csv
from orchestrator.intervals import Uncertainty, bootstrap
from orchestrator.pareto import ConfigurationResult, front_hypervolume, front_of, reference_of
from orchestrator.tracking import SearchRecord, child_runs, collect, per_image_outcomes
from search_spaces.params import OBJECTIVES
from trainables.messages import redact
from trainables.tracking import log_metrics


def report_front(
    client: MlflowClient,
    search: SearchRecord,
    out_dir: Path,
    seeds: int | None = None,
    log: bool = True,
    runs: Sequence[Run] | None = None,
) -> tuple[list[ConfigurationResult], float, dict[str, Uncertainty]]:
    """Print the front and write pareto-<search id>.csv / .png to out_dir; with `log`, record it all in MLflow.

    Logging puts the files, the front table (an MLflow table), the hypervolume, the bootstrap's
    figures on the parent run, and `pareto_front: true|false` on the search's child runs.
    Returns the complete configurations, the hypervolume and each configuration's bootstrap.
    `runs` are the search's child runs when the caller has read them already (thousands take seconds).
    """
    seeds = seeds or len(search.seeds)
    runs = runs if runs is not None else child_runs(client, search.experiment_id, search.run_id)
    results = collect(client, search, seeds, runs=runs)
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
    # Seeds and the images they were scored on, resampled: how sure each point is, and the front.
    bounds = bootstrap(results, per_image_outcomes(client, results), floors)
    print(format_table(results, floors, bounds))
    out_dir.mkdir(parents=True, exist_ok=True)
    # Named after the search, so two searches run in one folder never overwrite each other's.
    csv_path, png_path = out_dir / f"pareto-{search.search_id}.csv", out_dir / f"pareto-{search.search_id}.png"
    write_csv(results, csv_path, floors, bounds)
    plot(results, png_path, f"{search.search_id}: accuracy vs shape bias ({seeds} seeds per point)", floors, bounds)
    categories_path = out_dir / f"pareto-{search.search_id}-categories.png"
    written = [csv_path, png_path]
    if plot_categories(
        results, categories_path, f"{search.search_id}: shape bias per category, front vs dense", floors
    ):
        written.append(categories_path)
    if not log:
        print(f"wrote {', '.join(str(p) for p in written)}")
        return results, volume, bounds
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
    log_uncertainty(client, search.run_id, bounds)
    log_front_table(client, search.run_id, csv_path)
    tag_front_runs(client, front, runs)
    print(f"wrote {', '.join(str(p) for p in written)} (also logged to MLflow run {search.run_id})")
    return results, volume, bounds


def log_front_table(client: MlflowClient, run_id: str, csv_path: Path) -> None:
    """The CSV's table as an MLflow table artifact (`pareto_table.json`), replaced on every report.

    `MlflowClient.log_table` would append to a table already logged (a second `pareto --log`
    would double every row), so the file is written in its format (pandas' `split` JSON) and
    registered under the run tag MLflow's own `log_table` sets, which the UI reads.
    """
    import pandas as pd
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    with tempfile.TemporaryDirectory() as staging:
        path = Path(staging) / names.FRONT_TABLE
        pd.read_csv(csv_path).to_json(path, orient="split", index=False)
        client.log_artifact(run_id, str(path))
    logged = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": names.FRONT_TABLE, "type": "table"}
    if entry not in logged:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, entry]))


def tag_front_runs(client: MlflowClient, front: list[ConfigurationResult], runs: Sequence[Run]) -> None:
    """`pareto_front: true` on the child `runs` of the front's configurations, `false` on the search's others.

    So `tags.pareto_front = 'true'` in the runs table shows the front; a later report (a resumed
    search) takes the tag off a configuration no longer on it.
    """
    on = {run_id for r in front for run_id in r.run_ids}
    changes = []
    for run in runs:
        if run.data.tags.get(names.STAGE, names.SEARCH_STAGE) != names.SEARCH_STAGE:
            continue  # the confirmation's runs are not the front's
        value = "true" if run.info.run_id in on else "false"
        if run.data.tags.get(names.PARETO_FRONT) != value:
            changes.append((run.info.run_id, value))
    # One request per run (MLflow sets tags on one run at a time): thousands of them, in parallel.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda change: client.set_tag(change[0], names.PARETO_FRONT, change[1]), changes))


def log_uncertainty(client: MlflowClient, run_id: str, bounds: dict[str, Uncertainty]) -> None:
    """Each configuration's p_front, intervals and differences from dense as parent-run metrics (`front.<c>.<name>`)."""
    metrics = {}
    for configuration, b in bounds.items():
        prefix = f"{names.FRONT_PREFIX}{configuration}."
        metrics[prefix + names.P_FRONT] = b.p_front
        for m, (low, high) in b.intervals.items():
            metrics[f"{prefix}{m}_ci_low"], metrics[f"{prefix}{m}_ci_high"] = low, high
        for m, (diff, low, high) in b.vs_dense.items():
            metrics[f"{prefix}{m}_vs_dense"] = diff
            metrics[f"{prefix}{m}_vs_dense_ci_low"], metrics[f"{prefix}{m}_vs_dense_ci_high"] = low, high
    log_metrics(client, run_id, metrics)


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


def report_early_stopping(
    client: MlflowClient, search: SearchRecord, epochs: int, runs: Sequence[Run]
) -> dict[str, float]:
    """What early stopping saved (from the search's child `runs`): printed and logged to the parent run."""
    children = [r for r in runs if r.data.tags.get(names.STAGE, names.SEARCH_STAGE) == names.SEARCH_STAGE]
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
