"""A search in MLflow, as the driver and every command see it: one parent run, its child runs.

The driver creates the parent run and, when the search ends, closes any child a dead worker left
open (the children themselves are written by `orchestrator.worker`). `find_search` is the one
lookup of a search that `resume`, `pareto` and `promote` share, and `collect` the one reading of
its results.
"""

from __future__ import annotations

import json
import math
import platform
import re
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from orchestrator.pareto import ConfigurationResult, Replicate
from search_spaces.params import OBJECTIVES, Outcome, Params, outcome, placement_key
from trainables.config import bounded, redact

PACKAGES = ("torch", "torchvision", "ray", "optuna", "mlflow", "sparse-shape-search")


def git_commit() -> str:
    """The checkout's commit (with '-dirty' for uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def package_versions() -> dict[str, str]:
    """Python's and the stack's versions, as recorded with every search and promoted model."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class SearchError(RuntimeError):
    """What a command cannot find or do (a search, a configuration, a model), in one line."""


def experiment_id(client: MlflowClient, name: str) -> str:
    """Id of the named experiment, created if missing (by us, or by a search starting at the same moment)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:
        experiment = client.get_experiment_by_name(name)  # the other search created it first
        if experiment is None:
            raise
        return experiment.experiment_id


# Search ids and configuration ids are generated from the spec's name (letters, digits, _ . -),
# so anything else cannot name one; checking keeps user text out of MLflow filter strings.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_id(value: str, what: str, example: str) -> str:
    """`value` if it can be a search or configuration id, else SearchError naming it."""
    if not _ID.match(value):
        raise SearchError(f"{bounded(value)} is not a {what}: ids are letters, digits, '_', '.' and '-' (e.g. {example})")
    return value


def child_runs(client: MlflowClient, experiment: str, parent_run_id: str) -> list[mlflow.entities.Run]:
    """All child runs of a search's parent run."""
    return client.search_runs(
        [experiment], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'", max_results=50_000
    )


def replicate_runs(
    client: MlflowClient, experiment: str, parent_run_id: str, configuration: str, seed: int, max_results: int = 100,
) -> list[mlflow.entities.Run]:
    """The child runs of one configuration's seed in a search (more than one only if an attempt's run was replaced)."""
    return client.search_runs(
        [experiment],
        filter_string=(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and "
                       f"tags.configuration = '{configuration}' and tags.seed = '{seed}'"),
        max_results=max_results,
    )


def close_open_children(client: MlflowClient, experiment: str, parent_run_id: str) -> int:
    """Mark children still RUNNING (their worker died, or the driver was stopped) as KILLED."""
    closed = 0
    for run in child_runs(client, experiment, parent_run_id):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
            closed += 1
    return closed


def start_parent_run(
    client: MlflowClient, experiment: str, search_id: str, spec_dump: dict[str, Any], search_path: str,
    data_digests: dict[str, str],
) -> str:
    """Create the search's parent run: resolved config, search space, sampler, commit, versions, data digests."""
    spec_dump = _redacted(spec_dump)  # URLs with passwords: the runs are readable by everyone with the UI
    search_path = redact(search_path)
    tags = [
        RunTag(MLFLOW_RUN_NAME, search_id),
        RunTag("search_id", search_id),
        RunTag("search_name", spec_dump["name"]),
        RunTag("search_path", search_path),
        RunTag("git_commit", git_commit()),
        RunTag("data_fingerprint", json.dumps(data_digests, sort_keys=True)),
        *[RunTag(f"version.{k}", v) for k, v in package_versions().items()],
    ]
    run = client.create_run(experiment, tags={t.key: t.value for t in tags})
    search = spec_dump["search"]
    params = {
        "sampler": spec_dump["sampler"],
        "sampler_seed": spec_dump["sampler_seed"],
        "configurations": spec_dump["configurations"],
        "seeds": spec_dump["seeds"],
        "accuracy_floor": spec_dump["accuracy_floor"],
        "reference_point": json.dumps(spec_dump["reference_point"]),
        "fraction_range": f"[{search['fraction']['low']}, {search['fraction']['high']}]" + (" log" if search["fraction"]["log"] else ""),
        "placements": [placement_key(p) for p in search["placements"]],
        "fraction_per_placement": search["fraction_per_placement"],
        "arch": spec_dump["model"]["arch"],
        "epochs": spec_dump["training"]["epochs"],
        "data": spec_dump["data"]["kind"],
    }
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_dict(run.info.run_id, spec_dump, "search_spec.yaml")
    return run.info.run_id


def _redacted(value: Any) -> Any:
    """`value` (plain data) with every string passed through `redact`."""
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return redact(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class SearchRecord:
    """One search as MLflow holds it: its parent run and the settings every command needs."""

    experiment_id: str
    experiment_name: str
    run: mlflow.entities.Run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def search_id(self) -> str:
        return self.run.data.tags["search_id"]

    @property
    def status(self) -> str:
        return self.run.info.status

    @property
    def path(self) -> str:
        """Where Ray Tune keeps the search's state and trial checkpoints."""
        return self.run.data.tags["search_path"]

    @property
    def data_digests(self) -> dict[str, str] | None:
        """sha256 of the training, test and stimuli data as the search started (None before they were kept)."""
        text = self.run.data.tags.get("data_fingerprint")
        return json.loads(text) if text else None

    @property
    def seeds(self) -> list[int]:
        return json.loads(self.run.data.params.get("seeds", "[0]"))

    @property
    def reference_point(self) -> str | dict[str, float]:
        """The hypervolume's reference setting: `dense` or {accuracy, shape_bias} ((0, 0) for older searches)."""
        return json.loads(self.run.data.params.get("reference_point", '{"accuracy": 0.0, "shape_bias": 0.0}'))


def find_search(
    client: MlflowClient,
    experiment_name: str,
    search_id: str | None = None,
    name: str | None = None,
    status: str | None = None,
    exclude_status: str | None = None,
) -> SearchRecord:
    """A search by id, else the newest one (of a name, with or without a status); SearchError if none."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments())
        raise SearchError(f"no MLflow experiment {bounded(experiment_name)} at {redact(client.tracking_uri)}; "
                          f"known: {bounded(', '.join(known) or 'none')[1:-1]}")
    if search_id:
        check_id(search_id, "search id", "quickstart-20261128-101500-3fa2c1")
    if name:
        check_id(name, "search name", "quickstart")
    filters = [f"tags.search_id = '{search_id}'" if search_id else "tags.search_id != ''"]
    if name:
        filters.append(f"tags.search_name = '{name}'")
    runs = client.search_runs([experiment.experiment_id], filter_string=" and ".join(filters),
                              order_by=["attributes.start_time DESC"], max_results=1000)
    matching = [r for r in runs if (status is None or r.info.status == status)
                and (exclude_status is None or r.info.status != exclude_status)]
    if matching:
        return SearchRecord(experiment.experiment_id, experiment_name, matching[0])
    everything = client.search_runs([experiment.experiment_id], filter_string="tags.search_id != ''",
                                    order_by=["attributes.start_time DESC"], max_results=10)
    known = ", ".join(f"{r.data.tags['search_id']} ({r.info.status})" for r in everything) or "none"
    wanted = "search" + (f" {bounded(search_id)}" if search_id else "") + (f" named {bounded(name)}" if name else "")
    if status:
        wanted += f" with status {status}"
    if exclude_status:
        wanted += f" not {exclude_status}"
    raise SearchError(f"no {wanted} in MLflow experiment {bounded(experiment_name)}; searches there: {known}")


def collect(client: MlflowClient, search: SearchRecord, seeds: int | None = None) -> list[ConfigurationResult]:
    """Configurations whose every seed (`seeds`, default the search's) is complete, with their replicates."""
    seeds = seeds or len(search.seeds)
    by_configuration: dict[str, list[mlflow.entities.Run]] = {}
    for run in child_runs(client, search.experiment_id, search.run_id):
        by_configuration.setdefault(run.data.tags.get("configuration", "?"), []).append(run)
    results = []
    for configuration, runs in sorted(by_configuration.items()):
        complete = [r for r in runs if run_outcome(r) is Outcome.COMPLETE]
        if len(complete) < seeds or len(complete) != len(runs):
            continue  # one failed seed fails the configuration
        replicates = tuple(replicate(r) for r in sorted(complete, key=lambda r: int(r.data.tags["seed"])))
        results.append(ConfigurationResult(configuration, Params.from_mlflow(complete[0].data.params), replicates))
    return results


def replicate(run: mlflow.entities.Run) -> Replicate:
    """A complete child run as a Replicate; per-category numbers from the report set when there is one."""
    metrics = run.data.metrics
    prefix = "shape_bias_holdout." if "shape_bias_holdout" in metrics else "shape_bias."
    per_category = tuple(sorted((k[len(prefix):], v) for k, v in metrics.items() if k.startswith(prefix)))
    return Replicate(run.info.run_id, int(run.data.tags["seed"]), metrics["accuracy"], metrics["shape_bias"],
                     metrics.get("shape_bias_holdout", math.nan), per_category)


def run_outcome(run: mlflow.entities.Run) -> Outcome:
    """`outcome` of a child run: its final metrics, its epochs, and whether it ended FINISHED."""
    metrics = {m: run.data.metrics.get(m) for m in (*OBJECTIVES, "epoch")}
    epochs = int(run.data.params.get("epochs", 0))
    if metrics["epoch"] is None and run.info.status == "FINISHED":
        # Runs logged before the `epoch` metric existed: nothing stopped trials early then, so
        # a FINISHED run trained every epoch.
        metrics["epoch"] = epochs
    return outcome(metrics, epochs, error=run.info.status != "FINISHED")


def failure_summary(client: MlflowClient, search: SearchRecord, limit: int = 3) -> str | None:
    """"2 of 6 trials failed: NonFiniteLossError: ... [2 trials]; ...": the failed child runs' reasons, grouped."""
    children = child_runs(client, search.experiment_id, search.run_id)
    failed = [r for r in children if r.info.status == "FAILED"]
    if not failed:
        return None
    reasons: dict[str, int] = {}
    for run in failed:
        reason = run.data.tags.get("error", "no reason recorded (the worker died)")[:300]
        reasons[reason] = reasons.get(reason, 0) + 1
    grouped = sorted(reasons.items(), key=lambda item: -item[1])
    text = "; ".join(reason if len(reasons) == 1 else f"{reason} [{count} trials]" for reason, count in grouped[:limit])
    if len(grouped) > limit:
        text += f"; and {len(grouped) - limit} other reasons (see the child runs' error tags)"
    return f"{len(failed)} of {len(children)} trials failed: {text}"
