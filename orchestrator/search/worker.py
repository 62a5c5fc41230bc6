"""The worker side of a search: the Tune trainable, and the MLflow child run it writes.

Ray's MLflow integrations neither nest runs nor reattach after a restart, so the tracker does
both with the plain `MlflowClient`. Child runs are written from the workers (which get the
tracking URI from the Ray runtime environment); their run id travels in the trial checkpoint,
and a restarted trial without a checkpoint finds its run by configuration and seed instead.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from ray import tune

from orchestrator import names
from orchestrator.search.outbox import Outbox
from orchestrator.search.searcher import RECORDED
from orchestrator.serving import log_model
from orchestrator.tracking import kept_params, replicate_runs
from search_spaces.networks import feature_maps, kept, network
from search_spaces.params import OBJECTIVES, Params
from search_spaces.spec import MakeTrial
from trainables.checkpoint import CheckpointError, checkpoint_digest, read_checkpoint, restore_model
from trainables.config import TrialConfig
from trainables.data import DataInput
from trainables.messages import one_line
from trainables.train import NonFiniteLossError
from trainables.trial import train_trial

# What Tune hears of each epoch: what the driver decides on (the searcher's record, early
# stopping, the progress line), and the trial's health. Tune keeps running statistics of every
# number a trial reports, per trial, for the whole search (about 2.5 KB a metric, in the
# driver's memory and in each save of its experiment state); MLflow gets every metric.
TUNE_HEARS = frozenset((names.EPOCH, *RECORDED, names.TRACKING_UNSENT, names.MLFLOW_RUN_ID))

# Failures that a retry would repeat exactly: bad numbers, undecodable data, a bad config or
# checkpoint (ValidationError and CheckpointError are ValueErrors). OSError and Ray's own errors
# (a lost worker, an out-of-memory kill) stay retryable.
DETERMINISTIC = (NonFiniteLossError, ValueError)


def search_trial(
    config: dict[str, Any],
    make_trial: MakeTrial,
    parent_run_id: str,
    experiment: str,
    log_models: bool = False,
    data_digests: dict[str, str] | None = None,
) -> None:
    """The Tune trainable of a search: one trial, logged as a child of the search's MLflow run.

    Tune's config names the configuration, its seed and its parameters; `make_trial` (the spec's
    `trial_config`) makes the trial config from those, here in the worker.
    """
    # A search whose Ray state was saved before trial configs were made here carries its own.
    trial = config.get(names.TRIAL) or make_trial(Params.from_dict(config[names.PARAMS]), config[names.SEED])
    tracker = MLflowTrialTracker(
        parent_run_id, experiment, tune.get_context().get_trial_id(), config, log_models, data_digests
    )
    try:
        train_trial(trial, tracker, reported=TUNE_HEARS)
    except DETERMINISTIC as error:
        # The child run is already FAILED with the reason in its `error` tag. A final result with
        # no objectives ends the trial (the searcher, the front and the progress line count it as
        # failed) instead of Ray retrying it max_failures times to the same end.
        tune.report(
            {
                **dict.fromkeys(OBJECTIVES, math.nan),
                names.EPOCH: 0,
                names.FAILED: f"{type(error).__name__}: {one_line(error)}"[:1000],
            }
        )


def confirm_trial(
    config: dict[str, Any],
    make_trial: MakeTrial,
    parent_run_id: str,
    experiment: str,
    log_models: bool = False,
    data_digests: dict[str, str] | None = None,
) -> None:
    """The Tune trainable of a confirmation: a search trial whose assignment Tune's grid search hands out."""
    search_trial(config[names.ASSIGNMENT], make_trial, parent_run_id, experiment, log_models, data_digests)


class MLflowTrialTracker:
    """The `trainables.trial.Tracker` that logs one Ray trial as a child run of the search."""

    def __init__(
        self,
        parent_run_id: str,
        experiment: str,
        ray_trial_id: str,
        search_config: dict[str, Any],
        log_models: bool = False,
        data_digests: dict[str, str] | None = None,
    ) -> None:
        self.parent_run_id, self.experiment, self.ray_trial_id = parent_run_id, experiment, ray_trial_id
        self.log_models, self.data_digests = log_models, data_digests
        self.configuration, self.seed = search_config[names.CONFIGURATION], search_config[names.SEED]
        self.stage = search_config.get(names.STAGE, names.SEARCH_STAGE)
        self.params = Params.from_dict(search_config[names.PARAMS])
        # The URI the driver forwarded (Ray runtime env), even where this process has set another.
        self.client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI"))
        self.run_id = ""  # its MLflow run, once started
        self.finished = False
        self.logged_steps: set[int] = set()  # epochs an earlier attempt already logged or queued
        self.outbox = Outbox(self.client, f"{self.configuration}-seed{self.seed}")
        self.slot: dict[str, Any] = {}  # what survives a restart, saved in every checkpoint

    def _existing_run(self) -> str | None:
        """This (configuration, seed)'s run, if an earlier attempt created one.

        After a driver crash Ray may rerun a trial under a new trial id (the old id was never
        saved), so runs are matched by configuration and seed, not by Ray's id.
        """
        runs = replicate_runs(
            self.client, self.experiment, self.parent_run_id, self.configuration, self.seed, max_results=1
        )
        runs = [r for r in runs if r.data.tags.get(names.STAGE, names.SEARCH_STAGE) == self.stage]
        if not runs:
            return None
        if "placement" not in runs[0].data.params:
            # Created, then its worker died before describing it (a killed driver takes its
            # workers down mid-start): it holds tags only, so this attempt describes it.
            return runs[0].info.run_id
        logged = Params.from_mlflow(runs[0].data.params)
        if (logged.placement, logged.topk()) == (self.params.placement, self.params.topk()):
            return runs[0].info.run_id
        return None  # the configuration id was reused for different parameters

    def start(self, config: TrialConfig, saved: dict[str, Any]) -> dict[str, Any]:
        # Queued metrics an earlier attempt could not send travel in its checkpoint.
        self.outbox.pending.extend(saved.get("unsent", []))
        self.logged_steps = {int(step) for _, _, _, step in self.outbox.pending}
        found = saved.get("mlflow_run_id") or self.outbox.call("find its MLflow run", self._existing_run)
        if found:
            self.run_id = found
            if self.outbox.call("reattach to its MLflow run", self._reattach, config):
                # Restarted after its last epoch (the driver died before recording the end):
                # the run is complete, so leave it exactly as it is.
                self.finished = True
                return dict(saved)
            restarts = int(saved.get(names.RESTARTS, 0)) + 1
            restart = [RunTag(names.RESTARTS, str(restarts))]
            if "epoch" in saved:  # restored from a checkpoint, not started afresh
                restart.append(RunTag(names.RESUMED_AFTER_EPOCH, str(saved["epoch"])))
            self.outbox.call("record its restart", self.client.log_batch, self.run_id, tags=restart)
            self.slot = {"mlflow_run_id": self.run_id, names.RESTARTS: restarts, "unsent": self.outbox.pending}
            return self.slot
        tags = {
            names.MLFLOW_PARENT_RUN_ID: self.parent_run_id,
            names.MLFLOW_RUN_NAME: f"{self.configuration}-seed{self.seed}",
            names.RAY_TRIAL_ID: self.ray_trial_id,
            names.RAY_NODE_ID: _node_id(),
            names.CONFIGURATION: self.configuration,
            names.SEED: str(self.seed),
            names.STAGE: self.stage,
            names.DENSE_REFERENCE: str(self.params.dense).lower(),
        }
        self.run_id = self.outbox.call(
            "create its MLflow run", self.client.create_run, self.experiment, tags=tags
        ).info.run_id
        self.outbox.call("describe its MLflow run", self._describe, config)
        self.slot = {"mlflow_run_id": self.run_id, names.RESTARTS: 0, "unsent": self.outbox.pending}
        return self.slot

    def _reattach(self, config: TrialConfig) -> bool:
        """Take over the run of an earlier attempt; True if that run is already complete."""
        run = self.client.get_run(self.run_id)
        if run.info.status == "FINISHED" and names.STOPPED_AT_EPOCH not in run.data.tags:
            return True
        if names.STOPPED_AT_EPOCH in run.data.tags:  # stopped as the search was interrupted, and now resumed
            self.client.delete_tag(self.run_id, names.STOPPED_AT_EPOCH)
        self.client.update_run(self.run_id, status="RUNNING")  # reattach, never duplicate
        # A restart resumes from the last checkpoint Ray recorded, which can be older than
        # the last epoch logged: those epochs are trained again but logged once.
        self.logged_steps |= {m.step for m in self.client.get_metric_history(self.run_id, names.EPOCH)}
        if names.ERROR in run.data.tags:
            self.client.delete_tag(self.run_id, names.ERROR)  # the failure this attempt retries
        if "placement" not in run.data.params:
            self._describe(config)  # the attempt that created the run died before describing it
        elif run.inputs is None or not run.inputs.dataset_inputs:
            self._log_inputs(config)  # the attempt that created the run died before logging them
        self.client.set_tag(self.run_id, names.RAY_TRIAL_ID, self.ray_trial_id)
        self.client.set_tag(self.run_id, names.RAY_NODE_ID, _node_id())  # where this attempt runs
        return False

    def _describe(self, config: TrialConfig) -> None:
        """Parameters, the whole trial config and the data: the run alone says how the model was trained."""
        training = config.training
        # The effective knobs, searched or not.
        effective = replace(
            self.params, lr=training.lr, weight_decay=training.weight_decay, batch_size=training.batch_size
        )
        # The network itself: the fraction asked for is a parameterisation, k per placement is the model.
        topk = config.model.topk
        maps = feature_maps(list(topk), config.data.image_size, config.model.stem, config.model.arch)
        logged = {
            **effective.to_mlflow(),
            names.SEED: str(self.seed),
            names.EPOCHS: str(training.epochs),
            "stem": config.model.stem,
            "data": config.data.kind,
            "image_size": str(config.data.image_size),
            **{f"{names.TOPK_PREFIX}{k}": str(v) for k, v in config.model.topk.items()},
            **kept_params(kept(topk, maps)),
        }
        self.client.log_batch(
            self.run_id,
            params=[Param(k, v) for k, v in logged.items()],
            tags=[RunTag(names.NETWORK, network(topk, self.params.knobs(), maps).describe())],
        )
        # The whole trial config: enough to rebuild (or retrain) this model from MLflow alone.
        self.client.log_dict(self.run_id, config.model_dump(mode="json"), names.TRIAL_CONFIG)
        self._log_inputs(config)

    def _log_inputs(self, config: TrialConfig, attempts: int = 3) -> None:
        """What it trained and was scored on: the runs table's Dataset column."""
        inputs = [dataset_input(part) for part in config.data.inputs(self.data_digests or config.data.fingerprint())]
        for attempt in range(attempts):
            try:
                self.client.log_inputs(self.run_id, datasets=inputs)
                return
            except MlflowException:
                # Trials that start together insert the same dataset row; the store lets one
                # win and refuses the others (a unique constraint). Once it exists, it is reused.
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))

    def log_epoch(self, metrics: dict[str, float], files: dict[str, str] | None = None) -> dict[str, float | str]:
        step = int(metrics[names.EPOCH])
        if not self.finished and step not in self.logged_steps:
            self.logged_steps.add(step)
            self.outbox.send(self.run_id, metrics, step)  # queued, not lost, while the server is away
            self.slot["epoch"] = step  # saved with this epoch's checkpoint
            for name, text in (files or {}).items():
                self.outbox.call(f"log {name}", self.client.log_text, self.run_id, text, name)
        # Reported to Tune with the epoch: the driver warns when trials hold metrics (SearchProgress),
        # and closes a stopped trial's run by its id (StoppedRuns), with no search among all runs.
        return {names.TRACKING_UNSENT: float(len(self.outbox.pending)), names.MLFLOW_RUN_ID: self.run_id or ""}

    def finish(self, error: BaseException | None, checkpoint_uri: str | None = None) -> None:
        if not self.run_id or self.finished:
            return
        self.outbox.flush(self.run_id)
        if isinstance(error, SystemExit) and error.code in (0, None):
            # Tune ends a trial it stops (the early-stopping scheduler) with exit(0) inside
            # tune.report: the trial did not fail, it was stopped after its last logged epoch.
            self.outbox.call(
                "record its stop",
                self.client.set_tag,
                self.run_id,
                names.STOPPED_AT_EPOCH,
                str(self.slot.get("epoch", 0)),
            )
            self.outbox.call("close its MLflow run", self.client.set_terminated, self.run_id, status="FINISHED")
            return
        if error is None and checkpoint_uri is not None:
            # Any finished trial can be loaded later without Ray (`promote` reads it from here).
            tags = [RunTag(names.CHECKPOINT_URI, checkpoint_uri)]
            state: dict[str, Any] | None = None
            try:  # its identity: a file swapped or replaced later is refused by promote
                if self.log_models:  # read once: the model logged is the file the digest names
                    state, digest = read_checkpoint(checkpoint_uri)
                else:
                    digest = checkpoint_digest(checkpoint_uri)
                tags.append(RunTag(names.CHECKPOINT_SHA256, digest))
            except CheckpointError as unread:  # not `error`: that names the trial's own failure
                print(f"cannot record the digest of its checkpoint: {unread}", flush=True)
                if self.log_models:
                    self._model_error(unread)
            self.outbox.call("tag its checkpoint", self.client.log_batch, self.run_id, tags=tags)
            if state is not None:
                self._log_model(state)
        if error is not None:
            reason = f"{type(error).__name__}: {one_line(error)}"[:5000]
            self.outbox.call("record its error", self.client.set_tag, self.run_id, names.ERROR, reason)
        status = "FAILED" if error is not None else "FINISHED"
        self.outbox.call("close its MLflow run", self.client.set_terminated, self.run_id, status=status)

    def _log_model(self, state: dict[str, Any]) -> None:
        """The trial's final model in its run's Models tab; a failure here costs the copy, not the result."""
        try:
            model, config = restore_model(state)
            self.outbox.call(
                "log its model", log_model, model, state["labels"], config.data.image_size, self.run_id, self.experiment
            )
        except Exception as error:  # the trial is complete and its checkpoint is tagged: keep it
            self._model_error(error)

    def _model_error(self, error: Exception) -> None:
        reason = f"{type(error).__name__}: {one_line(error)}"[:5000]
        self.outbox.call("record its model error", self.client.set_tag, self.run_id, names.LOG_MODEL_ERROR, reason)


def _node_id() -> str:
    """The Ray node this trial runs on ('' outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def dataset_input(part: DataInput) -> DatasetInput:
    """One part of a trial's data as an MLflow input: the runs table's Dataset column."""
    dataset = Dataset(name=part.name, digest=part.digest, source_type=part.source_type, source=json.dumps(part.source))
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, part.context)])
