"""A search in MLflow, as every command reads it: one parent run, its child runs.

The driver writes the parent run (`orchestrator.search.opening`) and the workers the children
(`orchestrator.search.worker`). Here is how they are read back: `find_search` is the one lookup of a
search that `resume`, `pareto` and `promote` share, and `collect` the one reading of its results.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from orchestrator import names
from orchestrator.errors import SearchError
from orchestrator.pareto import ConfigurationResult, Replicate
from search_spaces.constraints import Floor, floors_of
from search_spaces.params import OBJECTIVES, Outcome, Params, configuration_outcome, outcome
from trainables.files import read_settings
from trainables.messages import bounded, one_line, redact
from trainables.metrics import ACCURACY, SHAPE_BIAS
from trainables.per_image import PER_IMAGE, PerImage, decode


def experiment_id(client: MlflowClient, name: str) -> str:
    """Id of the named experiment, created if missing (by us, or by a search starting at the same moment)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except mlflow.exceptions.MlflowException:
        experiment = client.get_experiment_by_name(name)  # the other search created it first
        if experiment is None:
            raise
        return str(experiment.experiment_id)


# Search ids and configuration ids are generated from the spec's name (letters, digits, _ . -),
# so anything else cannot name one; checking keeps user text out of MLflow filter strings and
# out of paths (no '/', no leading '.').
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_id(value: str, what: str, example: str) -> str:
    """`value` if it can be a search or configuration id, else SearchError naming it."""
    if not _ID.match(value) or ".." in value:
        raise SearchError(
            f"{bounded(value)} is not a {what}: ids are letters, digits, '_', '.' and '-' (e.g. {example})"
        )
    return value


def child_runs(client: MlflowClient, experiment: str, parent_run_id: str) -> list[Run]:
    """All child runs of a search's parent run."""
    return list(
        client.search_runs(
            [experiment], filter_string=f"tags.`{names.MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'", max_results=50_000
        )
    )


def replicate_runs(
    client: MlflowClient,
    experiment: str,
    parent_run_id: str,
    configuration: str,
    seed: int,
    max_results: int = 100,
) -> list[Run]:
    """The child runs of one configuration's seed in a search (more than one only if an attempt's run was replaced)."""
    # The parent is matched here, not in the filter: with it, the store joins every child of the
    # search (each trial's start asks this), which took 0.9 s through an MLflow server at 2,000
    # children and grew with them; configuration and seed alone match one run per search.
    runs = client.search_runs(
        [experiment],
        filter_string=f"tags.{names.CONFIGURATION} = '{configuration}' and tags.{names.SEED} = '{seed}'",
        max_results=50_000,
    )
    return [r for r in runs if r.data.tags.get(names.MLFLOW_PARENT_RUN_ID) == parent_run_id][:max_results]


@dataclass(frozen=True)
class SearchRecord:
    """One search as MLflow holds it: its parent run and the settings every command needs."""

    experiment_id: str
    experiment_name: str
    run: Run

    @property
    def run_id(self) -> str:
        return str(self.run.info.run_id)

    @property
    def search_id(self) -> str:
        """The id in the parent run's tag, checked as a user's `--search` is: anyone who can write
        tags can set it, and it names a folder under the storage path."""
        return check_id(
            str(self.run.data.tags[names.SEARCH_ID]),
            "search id (in its parent run's tag)",
            "quickstart-20261128-101500-3fa2c1",
        )

    @property
    def status(self) -> str:
        return str(self.run.info.status)

    @property
    def path(self) -> str:
        """Where Ray Tune keeps the search's state and trial checkpoints."""
        return str(self.run.data.tags[names.SEARCH_PATH])

    @property
    def data_digests(self) -> dict[str, str] | None:
        """sha256 of the training, test and stimuli data as the search started (None before they were kept)."""
        text = self.run.data.tags.get(names.DATA_FINGERPRINT)
        return json.loads(text) if text else None

    @property
    def seeds(self) -> list[int]:
        return list(json.loads(self.run.data.params.get(names.SEEDS, "[0]")))

    @property
    def arch(self) -> str:
        """The searched network (`model.arch`); searches from before it was recorded trained ResNet-18s."""
        return str(self.run.data.params.get(names.ARCH, "resnet18"))

    @property
    def reference_point(self) -> str | dict[str, float]:
        """The hypervolume's reference setting: `dense` or {accuracy, shape_bias} ((0, 0) for older searches)."""
        default = '{"accuracy": 0.0, "shape_bias": 0.0}'
        value: str | dict[str, float] = json.loads(self.run.data.params.get(names.REFERENCE_POINT, default))
        return value

    @property
    def floors(self) -> list[Floor]:
        """The search's constraints (none for searches from before they were recorded)."""
        return floors_of(json.loads(self.run.data.params.get(names.CONSTRAINTS, "{}")))

    def saved_spec(self, client: MlflowClient) -> dict[str, Any]:
        """The search's settings as it started (`search_spec.yaml`, passwords shown as ***)."""
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory(prefix="search-spec-") as tmp:
            try:
                path = client.download_artifacts(self.run_id, names.SEARCH_SPEC, tmp)
                return read_settings(Path(path))
            except (MlflowException, OSError, ValueError) as error:
                raise SearchError(
                    f"search {self.search_id} has no readable {names.SEARCH_SPEC} in its parent run "
                    f"({one_line(error)[:200]}): it cannot be resumed with its settings"
                ) from None


def find_search(client: MlflowClient, experiment_name: str, **filters: str | None) -> SearchRecord:
    """A search by id, else the newest one (filters as `find_searches`); SearchError if none."""
    return find_searches(client, experiment_name, **filters)[0]


def find_searches(
    client: MlflowClient,
    experiment_name: str,
    search_id: str | None = None,
    name: str | None = None,
    status: str | None = None,
    exclude_status: str | None = None,
) -> list[SearchRecord]:
    """The matching searches, newest first (at least one, else SearchError naming the searches there)."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments())
        raise SearchError(
            f"no MLflow experiment {bounded(experiment_name)} at {redact(client.tracking_uri)}; "
            f"known: {bounded(', '.join(known) or 'none')[1:-1]}"
        )
    if search_id:
        check_id(search_id, "search id", "quickstart-20261128-101500-3fa2c1")
    if name:
        check_id(name, "search name", "quickstart")
    filters = [f"tags.{names.SEARCH_ID} = '{search_id}'" if search_id else f"tags.{names.SEARCH_ID} != ''"]
    if name:
        filters.append(f"tags.{names.SEARCH_NAME} = '{name}'")
    # Newest first, sorted here: asked of the store, the order by start time beside a tag filter
    # took 2.1 s through the server at 400 child runs on PostgreSQL, against 0.35 s without it.
    runs = sorted(
        client.search_runs([experiment.experiment_id], filter_string=" and ".join(filters), max_results=1000),
        key=lambda r: r.info.start_time,
        reverse=True,
    )
    matching = [
        SearchRecord(experiment.experiment_id, experiment_name, r)
        for r in runs
        if (status is None or r.info.status == status) and (exclude_status is None or r.info.status != exclude_status)
    ]
    if matching:
        return matching
    everything = sorted(
        client.search_runs([experiment.experiment_id], filter_string=f"tags.{names.SEARCH_ID} != ''"),
        key=lambda r: r.info.start_time,
        reverse=True,
    )[:10]
    there = ", ".join(f"{bounded(r.data.tags[names.SEARCH_ID])[1:-1]} ({r.info.status})" for r in everything) or "none"
    wanted = "search" + (f" {bounded(search_id)}" if search_id else "") + (f" named {bounded(name)}" if name else "")
    if status:
        wanted += f" with status {status}"
    if exclude_status:
        wanted += f" not {exclude_status}"
    raise SearchError(f"no {wanted} in MLflow experiment {bounded(experiment_name)}; searches there: {there}")


def collect(
    client: MlflowClient,
    search: SearchRecord,
    seeds: int | None = None,
    stage: str = names.SEARCH_STAGE,
    only_seeds: Sequence[int] | None = None,
    runs: Sequence[Run] | None = None,
) -> list[ConfigurationResult]:
    """Configurations whose every seed (`seeds`, default the search's) is complete, with their replicates.

    `stage` picks the search's own trials (default) or a confirmation's, `only_seeds` one round of those;
    `runs` are the search's child runs when the caller has read them already.
    """
    seeds = seeds or len(search.seeds)
    by_configuration: dict[str, list[Run]] = {}
    for run in runs if runs is not None else child_runs(client, search.experiment_id, search.run_id):
        if run.data.tags.get(names.STAGE, names.SEARCH_STAGE) != stage:
            continue
        if only_seeds is not None and int(run.data.tags.get(names.SEED, -1)) not in only_seeds:
            continue
        by_configuration.setdefault(run.data.tags.get(names.CONFIGURATION, "?"), []).append(run)
    results = []
    for configuration, runs in sorted(by_configuration.items()):
        if configuration_outcome([run_outcome(r) for r in runs], seeds) is not Outcome.COMPLETE:
            continue
        replicates = tuple(replicate(r) for r in sorted(runs, key=lambda r: int(r.data.tags[names.SEED])))
        params = Params.from_mlflow(runs[0].data.params)
        results.append(ConfigurationResult(configuration, params, replicates, kept_of(params, runs[0])))
    return results


def kept_params(kept: Sequence[tuple[str, int, int]]) -> dict[str, str]:
    """`k.<placement>` and `kept.<placement>` (k / positions) for (placement, k, positions): what `kept_of` reads."""
    params = {}
    for name, k, positions in kept:
        params[f"{names.K_PREFIX}{name}"], params[f"{names.KEPT_PREFIX}{name}"] = str(k), f"{k / positions:.6g}"
    return params


def kept_of(params: Params, run: Run) -> tuple[tuple[str, int, int], ...]:
    """(placement, k, positions) per placement from a child run's params; empty for runs that did not log k."""
    logged = run.data.params
    placements = params.placements
    if not all(f"{names.K_PREFIX}{p}" in logged and f"{names.KEPT_PREFIX}{p}" in logged for p in placements):
        return ()
    kept = []
    for p in placements:
        k = int(logged[f"{names.K_PREFIX}{p}"])
        kept.append((p, k, round(k / float(logged[f"{names.KEPT_PREFIX}{p}"]))))
    return tuple(kept)


def replicate(run: Run) -> Replicate:
    """A complete child run as a Replicate; per-category numbers from the report set when there is one."""
    metrics = run.data.metrics
    prefix = (names.SHAPE_BIAS_HOLDOUT if names.SHAPE_BIAS_HOLDOUT in metrics else SHAPE_BIAS) + "."
    per_category = tuple(sorted((k[len(prefix) :], v) for k, v in metrics.items() if k.startswith(prefix)))
    return Replicate(
        run.info.run_id,
        int(run.data.tags[names.SEED]),
        metrics[ACCURACY],
        metrics[SHAPE_BIAS],
        metrics.get(names.SHAPE_BIAS_HOLDOUT, math.nan),
        per_category,
        metrics.get(names.CUE_DECISION_RATE, math.nan),
        metrics.get(names.CUE_DECISION_RATE_HOLDOUT, math.nan),
        run.info.artifact_uri,
    )


def run_outcome(run: Run) -> Outcome:
    """`outcome` of a child run: its final metrics, its epochs, and whether it ended FINISHED."""
    metrics = {m: run.data.metrics.get(m) for m in (*OBJECTIVES, names.EPOCH)}
    epochs = int(run.data.params.get(names.EPOCHS, 0))
    if metrics[names.EPOCH] is None and run.info.status == "FINISHED":
        # Runs logged before the `epoch` metric existed: nothing stopped trials early then, so
        # a FINISHED run trained every epoch.
        metrics[names.EPOCH] = epochs
    return outcome(metrics, epochs, error=run.info.status != "FINISHED")


def failure_summary(children: Sequence[Run], limit: int = 3) -> str | None:
    """ "2 of 6 trials failed: NonFiniteLossError: ... [2 trials]; ...": the failed child runs' reasons, grouped."""
    failed = [r for r in children if r.info.status == "FAILED"]
    if not failed:
        return None
    reasons: dict[str, int] = {}
    for run in failed:
        reason = run.data.tags.get(names.ERROR, "no reason recorded (the worker died)")[:300]
        reasons[reason] = reasons.get(reason, 0) + 1
    grouped = sorted(reasons.items(), key=lambda item: -item[1])
    text = "; ".join(reason if len(reasons) == 1 else f"{reason} [{count} trials]" for reason, count in grouped[:limit])
    if len(grouped) > limit:
        text += f"; and {len(grouped) - limit} other reasons (see the child runs' error tags)"
    return f"{len(failed)} of {len(children)} trials failed: {text}"


def per_image_outcomes(client: MlflowClient, results: Sequence[ConfigurationResult]) -> dict[str, PerImage]:
    """Each replicate's `per_image.json` by run id; runs that did not log one (older runs) are left out."""
    import mlflow
    from mlflow.exceptions import MlflowException

    def read(replicate: Replicate) -> tuple[str, PerImage | None]:
        with tempfile.TemporaryDirectory(prefix="per-image-") as tmp:
            try:
                if replicate.artifact_uri:  # two requests (stat, get); by run id the client first fetches the run
                    path = mlflow.artifacts.download_artifacts(
                        artifact_uri=f"{replicate.artifact_uri}/{PER_IMAGE}",
                        dst_path=tmp,
                        tracking_uri=client.tracking_uri,
                    )
                else:
                    path = client.download_artifacts(replicate.run_id, PER_IMAGE, tmp)
                return replicate.run_id, decode(Path(path).read_text())
            except (MlflowException, OSError, ValueError):
                return replicate.run_id, None

    replicates = [rep for r in results for rep in r.replicates]
    # Against a tracking server, in parallel.
    with ThreadPoolExecutor(max_workers=8) as pool:
        return {run_id: outcomes for run_id, outcomes in pool.map(read, replicates) if outcomes is not None}
