"""Opening a search, new or resumed, in one place: everything that can be refused is refused here,
before Ray starts or MLflow holds a run; then `Opening.start` writes the search's start.

A new search gets an id, an Optuna study of that name and an MLflow parent run. A resumed one is
the search its tag names (checked like a user's `--search`), with its Ray state read only from
under the configured `storage_path` (Ray's state is pickled: reading it runs code), and with the
settings it started with: the config file it is resumed with supplies only where things are
(`search_spaces.spec.RESUME_MAY_CHANGE`, with the resources a trial asks), and an override that
would change the rest is refused. A search started by another layout of Ray state, or whose Optuna
study is elsewhere than the config says, is refused in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from ray import tune

from orchestrator import names
from orchestrator.checks import sqlite_file, writable_dir
from orchestrator.errors import SearchError
from orchestrator.provenance import git_commit, package_versions
from orchestrator.search import preflight
from orchestrator.search.early_stopping import ReplicateSuccessiveHalving, StoppedRuns
from orchestrator.search.progress import HypervolumeLog, SearchProgress
from orchestrator.search.ray_session import KEEP_CHECKPOINTS
from orchestrator.search.searcher import ReplicateSearcher, make_study
from orchestrator.search.tune_memory import NoRollingAverages
from orchestrator.tracking import SearchRecord, experiment_id, find_searches
from search_spaces.params import placement_key
from search_spaces.spec import ConfigError, SearchSpec, resumed_spec
from trainables.messages import one_line, redact, redacted

# The layout of a search's Ray state (the pickled searcher, scheduler and callbacks), recorded on its
# parent run: a search whose state another layout wrote cannot be resumed, and is told so in one line.
STATE_FORMAT = "3"  # 3: the searcher keeps its networks, reuses and floors


@dataclass
class Opening:
    """A search about to run: its settings and where everything is. No run is written yet."""

    spec: SearchSpec  # for a resumed search, the settings it started with
    client: MlflowClient
    experiment: str  # MLflow experiment id
    tracking_uri: str
    storage: str  # Ray's storage_path
    resumed: SearchRecord | None = None  # the parent run of the search to resume
    path: str = ""  # Ray Tune's state of the search
    optuna_storage: optuna.storages.BaseStorage | None = None  # a new search's study goes there
    data_digests: dict[str, str] = field(default_factory=dict)
    search_id: str = ""  # a resumed search's from the start, a new one's once started
    parent_run_id: str = ""
    started: bool = False  # the parent run is written (a new search) or reopened (a resumed one)
    _study: optuna.Study | None = field(default=None, repr=False)

    def start(self) -> None:
        """A new search's start, written: its study and its parent run. A resumed one starts in `tuner`."""
        if self.resumed is not None:
            return
        spec = self.spec
        self.search_id = new_search_id(spec.name)
        self.path = f"{self.storage.rstrip('/')}/{self.search_id}"
        self._study = make_study(spec, self.search_id, self.optuna_storage)
        self.parent_run_id = start_parent_run(
            self.client, self.experiment, self.search_id, spec, self.path, self.data_digests
        )
        self.started = True
        print(
            f"search {self.search_id}: {spec.configurations} configurations x {len(spec.seeds)} seeds, "
            f"sampler {spec.sampler}, MLflow parent run {self.parent_run_id}",
            flush=True,
        )
        for note in spec.network_notes():
            print(note, flush=True)

    def ended_early(self) -> bool:
        """Whether the searcher ended the search before `configurations`: the sampler proposed only repeats."""
        try:
            study = optuna.load_study(study_name=self.search_id, storage=self.spec.resolved_optuna_storage())
        except KeyError:
            return False
        return names.ENDED_EARLY in study.user_attrs

    def _reopen(self, trainable: Any) -> tune.Tuner:
        """A resumed search's Tuner, restored from its state; only then is its parent run reopened."""
        try:
            # Unfinished trials restart from their last checkpoint; errored ones already used their
            # max_failures retries and stay errored.
            tuner = tune.Tuner.restore(self.path, trainable, resume_unfinished=True, resume_errored=False)
        except Exception as error:  # a state Ray cannot read: the search stays as it was
            raise SearchError(
                f"cannot restore search {self.search_id} from its Ray state at {redact(self.path)} "
                f"({type(error).__name__}: {one_line(error)[:300]})"
            ) from None
        self.client.update_run(self.parent_run_id, status="RUNNING")
        assert self.resumed is not None
        if names.FAILURE_REASON in self.resumed.run.data.tags:
            self.client.delete_tag(self.parent_run_id, names.FAILURE_REASON)
        self.started = True
        print(f"resuming search {self.search_id} (MLflow parent run {self.parent_run_id})", flush=True)
        return tuner

    def tuner(self, trainable: Any) -> tune.Tuner:
        """Tune over the replicate searcher; a resumed search's from its state (finished trials stay finished)."""
        if self.resumed is not None:
            return self._reopen(trainable)
        spec = self.spec
        assert self._study is not None, "start() first"
        searcher = ReplicateSearcher.for_spec(spec, self._study, self.parent_run_id)
        stopping = spec.early_stopping
        epochs, seeds = spec.training.epochs, len(spec.seeds)
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=(
                    ReplicateSuccessiveHalving(stopping.rungs, stopping.reduction_factor, epochs) if stopping else None
                ),
                num_samples=spec.configurations * seeds,
                max_concurrent_trials=spec.concurrency,
                # One worker process per concurrent slot, reused across trials: no torch
                # import or data generation per trial (seconds each on a small machine).
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=self.search_id,
                storage_path=self.storage,
                verbose=0,
                callbacks=[
                    NoRollingAverages(),
                    SearchProgress(spec.configurations, seeds, epochs),
                    HypervolumeLog(
                        self.tracking_uri,
                        self.parent_run_id,
                        spec.model_dump(mode="json")["reference_point"],
                        seeds,
                        epochs,
                        spec.floors(),
                    ),
                    *([StoppedRuns(self.tracking_uri, self.parent_run_id, epochs)] if stopping else []),
                ],
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            ),
        )


def open_search(
    spec: SearchSpec, resume: bool = False, search_id: str | None = None, overrides: Sequence[str] = ()
) -> Opening:
    """Check everything a start needs and find what a resume continues; SearchError if anything is missing."""
    tracking_uri = spec.resolved_tracking_uri()
    database = sqlite_file(tracking_uri)
    if resume and database is not None and not database.is_file():
        raise SearchError(
            f"no MLflow database at {database}, so no search to resume: run "
            "from the search's folder, or set tracking_uri"
        )
    writable_dir(Path.cwd(), "the working directory (for the front's files)")
    preflight.check_services(spec, tracking_uri)  # the locations: the same for a resumed search
    opening = _resumed(spec, tracking_uri, search_id, overrides) if resume else _new(spec, tracking_uri)
    # Once per search, not per trial: listing an ImageNet folder takes a while.
    opening.data_digests = opening.spec.data.fingerprint()
    return opening


def _new(spec: SearchSpec, tracking_uri: str) -> Opening:
    """A new search: refused before anything is written, then its stores made ready."""
    preflight.check_local_resources(spec)
    storage = preflight.check_storage_path(spec)  # the first write: it creates the folder
    with first_start_lock(tracking_uri, spec.resolved_optuna_storage()):
        client = MlflowClient(tracking_uri)
        experiment = experiment_id(client, spec.mlflow_experiment)  # created if missing
        optuna_storage = optuna.storages.RDBStorage(spec.resolved_optuna_storage())  # creates its tables, once
    return Opening(spec, client, experiment, tracking_uri, storage, optuna_storage=optuna_storage)


def _resumed(spec: SearchSpec, tracking_uri: str, search_id: str | None, overrides: Sequence[str]) -> Opening:
    """The search to resume, with the settings it started with; only read, nothing written."""
    client = MlflowClient(tracking_uri)  # its database exists (checked): the search is only read
    resumed, path = resumable_search(client, spec, spec.resolved_storage_path(), search_id)
    if resumed.run.data.tags.get(names.STATE_FORMAT) != STATE_FORMAT:
        raise SearchError(
            f"search {resumed.search_id} was started by an older version of sparse-shape-search, whose Ray state "
            "this version cannot read: start a new search (`run_search.py pareto` still shows what it finished)"
        )
    study_at, given = resumed.run.data.tags.get(names.OPTUNA_STORAGE), redact(spec.resolved_optuna_storage())
    if study_at is not None and study_at != given:
        raise SearchError(
            f"search {resumed.search_id} keeps its Optuna study in {study_at}, not in {given}: resume it from the "
            "folder it started in, or set optuna_storage to where its study is"
        )
    try:
        spec = resumed_spec(resumed.saved_spec(client), spec, overrides, f"search {resumed.search_id}")
    except ConfigError as error:
        raise SearchError(str(error)) from None
    preflight.check_local_resources(spec)
    storage = preflight.check_storage_path(spec)
    return Opening(
        spec,
        client,
        resumed.experiment_id,
        tracking_uri,
        storage,
        resumed=resumed,
        path=path,
        search_id=resumed.search_id,
        parent_run_id=resumed.run_id,
    )


def resumable_search(
    client: MlflowClient, spec: SearchSpec, storage: str, search_id: str | None
) -> tuple[SearchRecord, str]:
    """The search to resume and its Ray state: `search_id`, else the newest unfinished one Ray can restore."""
    if search_id:
        candidates = find_searches(client, spec.mlflow_experiment, search_id=search_id)[:1]
        if candidates[0].status == "FINISHED":
            raise SearchError(
                f"search {search_id} is already FINISHED: nothing to resume (see its front with "
                f"`run_search.py pareto --experiment {spec.mlflow_experiment} --search {search_id}`)"
            )
    else:
        candidates = find_searches(client, spec.mlflow_experiment, name=spec.name, exclude_status="FINISHED")
    for search in candidates:
        path = state_path(search, storage)  # checked before anything is read there
        if tune.Tuner.can_restore(path):
            return search, path
        if search_id:
            raise SearchError(
                f"search {search_id} has no Ray Tune state at {redact(path)}: it failed before "
                "its first trial started, so there is nothing to resume; start a new search"
            )
    skipped = ", ".join(s.search_id for s in candidates)
    raise SearchError(
        f"no unfinished search named {spec.name!r} has Ray Tune state to resume (skipped, never started: "
        f"{skipped}); start a new search, or name one with --search ID"
    )


def state_path(search: SearchRecord, storage: str) -> str:
    """Where the search's Ray state is, refused unless it lies under `storage` (resume unpickles it)."""
    root, path = storage.rstrip("/"), search.path
    own = f"{root}/{search.search_id}"  # the id is checked: no '/', no '..'
    if path == redact(own):
        path = own  # the tag holds it with any password hidden
    if "://" in root:
        inside = path.startswith(root + "/") and ".." not in path[len(root) :].split("/")
    else:
        inside = Path(path).resolve().is_relative_to(Path(root).resolve())
    if not inside:
        raise SearchError(
            f"search {search.search_id} keeps its Ray state at {redact(path)}, outside storage_path "
            f"{redact(root)}: resume only reads state under the configured storage_path (set "
            "storage_path to where the search ran)"
        )
    return path


def start_parent_run(
    client: MlflowClient,
    experiment: str,
    search_id: str,
    spec: SearchSpec,
    search_path: str,
    data_digests: dict[str, str],
) -> str:
    """Create the search's parent run: resolved config, search space, sampler, commit, versions, data digests."""
    dump = redacted(spec.model_dump(mode="json"))  # the runs are readable by everyone with the UI
    tags = {
        names.MLFLOW_RUN_NAME: search_id,
        names.SEARCH_ID: search_id,
        names.SEARCH_NAME: spec.name,
        names.SEARCH_PATH: redact(search_path),
        names.GIT_COMMIT: git_commit(),
        names.DATA_FINGERPRINT: json.dumps(data_digests, sort_keys=True),
        names.STATE_FORMAT: STATE_FORMAT,
        names.OPTUNA_STORAGE: redact(spec.resolved_optuna_storage()),
        **{f"{names.VERSION_PREFIX}{k}": v for k, v in package_versions().items()},
    }
    run = client.create_run(experiment, tags=tags)
    fraction = spec.search.fraction
    params = {
        "sampler": spec.sampler,
        "sampler_seed": spec.sampler_seed,
        "configurations": spec.configurations,
        names.SEEDS: spec.seeds,
        names.CONSTRAINTS: json.dumps({floor.metric: floor.setting() for floor in spec.floors()}),
        names.REFERENCE_POINT: json.dumps(dump["reference_point"]),
        "fraction_range": f"[{fraction.low}, {fraction.high}]" + (" log" if fraction.log else ""),
        "placements": [placement_key(p) for p in spec.search.placements],
        "fraction_per_placement": spec.search.fraction_per_placement,
        names.ARCH: spec.model.arch,
        names.EPOCHS: spec.training.epochs,
        "data": spec.data.kind,
    }
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_dict(run.info.run_id, dump, names.SEARCH_SPEC)
    return str(run.info.run_id)


@contextlib.contextmanager
def first_start_lock(*urls: str) -> Iterator[None]:
    """Serialise the creation of SQLite stores: two searches starting at once in a fresh folder
    would both run MLflow's schema migration (and Optuna's table creation) and one would crash."""
    import fcntl

    paths = sorted({p for p in (sqlite_file(url) for url in urls) if p is not None})
    with contextlib.ExitStack() as stack:
        for path in paths:
            # flock on the database file itself (SQLite takes an empty file as a new database):
            # no lock file is left behind, and SQLite's own fcntl locks are independent of it.
            handle = stack.enter_context(open(path, "ab"))
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def new_search_id(name: str) -> str:
    """name-YYYYmmdd-HHMMSS-xxxxxx: sortable by start, and unique even for searches started in the same second."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
