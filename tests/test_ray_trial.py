"""The trainable inside a real local Ray Tune run: reports, checkpoints, restart after a crash."""

import io
import os
import re
import sys
from pathlib import Path

import pytest
import ray
import ray.cloudpickle
from ray import tune

from conftest import TINY_TRIAL as TINY
from orchestrator.search.progress import SearchProgress
from orchestrator.search.tune_memory import NoRollingAverages
from trainables.checkpoint import load_checkpoint
from trainables.config import TrialConfig
from trainables.train import METRICS, train_and_evaluate
from trainables.trial import train_trial

# Workers import this module's functions by value: tests/ is not an installed package.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class CrashOnceAfterEpoch:
    """A Tracker that kills the trial process once, right after `epoch` was reported."""

    def __init__(self, marker: str, epoch: int) -> None:
        self.marker, self.epoch = Path(marker), epoch

    def start(self, config, saved):
        return {"starts": saved.get("starts", 0) + 1}

    def log_epoch(self, metrics, files=None):
        if metrics["epoch"] == self.epoch + 1 and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError("injected crash")
        return {}

    def finish(self, error, checkpoint_uri=None):
        pass


def crashing_trial(config):
    train_trial(config["trial"], tracker=CrashOnceAfterEpoch(config["marker"], epoch=config.get("crash_after", 1)))


def fit_once(trainable, param_space, storage, name):
    """One trial of `trainable` in Tune, allowed one restart: its result."""
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=param_space,
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), verbose=0, failure_config=tune.FailureConfig(max_failures=1)
        ),
    )
    return tuner.fit()[0]


class RecordingTracker(CrashOnceAfterEpoch):
    """Appends the names of the metrics it logs to a file, one epoch a line; never crashes."""

    def log_epoch(self, metrics, files=None):
        with open(self.marker, "a") as logged:
            logged.write(",".join(sorted(metrics)) + "\n")
        return {"tracking_unsent": 0.0}


HEARD = {"epoch", "accuracy", "shape_bias", "tracking_unsent"}


def narrowly_reported_trial(config):
    train_trial(config["trial"], tracker=RecordingTracker(config["marker"], epoch=0), reported=HEARD)


@pytest.fixture(scope="module")
def local_ray():
    # These tests read Tune's own result files, which a search's driver turns off for its process
    # (ray_session.quiet): a refusal test run in this process before may have done so.
    disabled = os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()
    if disabled is not None:
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = disabled


def test_trial_restarted_by_ray_ends_like_an_uninterrupted_run(local_ray, tmp_path):
    expected = []
    train_and_evaluate(TrialConfig.model_validate(TINY), lambda m, s: expected.append(m))
    result = fit_once(
        crashing_trial, {"trial": TINY, "marker": str(tmp_path / "crashed")}, tmp_path / "results", "crash"
    )
    assert result.error is None and (tmp_path / "crashed").exists()
    history = result.metrics_dataframe
    assert set(METRICS) <= set(history.columns)
    # The crash came before epoch 2 was reported; the restart resumed from epoch 1's checkpoint.
    assert history["epoch"].tolist() == [1, 2, 3]
    with result.checkpoint.as_directory() as directory:
        assert load_checkpoint(directory)["tracking"] == {"starts": 2}
    for key in ("train_loss", "accuracy", "shape_bias", "shape_accuracy", "texture_accuracy"):
        assert result.metrics[key] == expected[-1][key], key


def test_a_trial_checkpointing_every_second_epoch_redoes_the_epochs_after_its_last_one(local_ray, tmp_path):
    sparse = {**TINY, "training": {**TINY["training"], "epochs": 4, "checkpoint_every": 2}}
    expected = []
    train_and_evaluate(TrialConfig.model_validate(sparse), lambda m, s: expected.append(m))
    result = fit_once(
        crashing_trial,
        {"trial": sparse, "marker": str(tmp_path / "crashed"), "crash_after": 3},
        tmp_path / "results",
        "sparse-checkpoints",
    )
    assert result.error is None and (tmp_path / "crashed").exists()
    # Saved after epochs 2 and 4 only, and epoch 2's once: the crash at epoch 4 sent the restart
    # back to epoch 2's checkpoint, not to the start (result.metrics_dataframe is not read: which
    # rows Ray keeps across a restart varies, see below).
    saved = sorted((tmp_path / "results" / "sparse-checkpoints").glob("*/checkpoint_*"))
    assert [load_checkpoint(path)["epoch"] for path in saved] == [2, 4]
    # The state it resumed from holds all a restart needs: the redone epochs end as if never lost.
    for key in ("train_loss", "accuracy", "shape_bias"):
        assert result.metrics[key] == expected[-1][key], key


def test_tune_hears_only_the_metrics_named_while_the_tracker_logs_every_one(local_ray, tmp_path):
    marker = tmp_path / "logged"
    result = fit_once(narrowly_reported_trial, {"trial": TINY, "marker": str(marker)}, tmp_path / "results", "narrow")
    assert result.error is None
    # Tune adds its own keys (time_total_s, training_iteration, ...): none of them a metric of ours.
    assert {k for k in result.metrics if k in {*METRICS, "tracking_unsent"}} == HEARD
    logged = [set(line.split(",")) for line in marker.read_text().split()]
    assert len(logged) == TINY["training"]["epochs"] and all(epoch >= set(METRICS) for epoch in logged)


def counting_trial(config):
    for step in range(12):
        tune.report({"accuracy": step / 12, "shape_bias": 1 - step / 12})


class KeepsEndedTrials(tune.Callback):
    """Holds the driver's own `Trial` objects of the trials that ended."""

    def __init__(self):
        self.ended = []

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended.append(trial)


@pytest.mark.parametrize("lean", [True, False])
def test_the_driver_keeps_no_rolling_averages_of_a_trials_metrics(local_ray, tmp_path, lean):
    kept = KeepsEndedTrials()
    callbacks = [NoRollingAverages(), kept] if lean else [kept]
    tuner = tune.Tuner(
        counting_trial,
        run_config=tune.RunConfig(name="lean", storage_path=str(tmp_path), verbose=0, callbacks=callbacks),
    )
    assert tuner.fit()[0].metrics["accuracy"] == 11 / 12
    # In the driver's memory for the whole search, and in its saved state for a resume.
    for trial in (kept.ended[0], tune.ExperimentAnalysis(str(tmp_path / "lean")).trials[0]):
        analysis = trial.run_metadata.metric_analysis["accuracy"]
        assert analysis["last"] == 11 / 12 and analysis["max"] == 11 / 12
        assert ("last-5-avg" in analysis) != lean and any(trial.run_metadata.metric_n_steps.values()) != lean


def test_plain_trial_in_tune_reports_each_epoch(local_ray, tmp_path):
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": 1}),
        param_space={**TINY, "training": {**TINY["training"], "epochs": 2, "threads": 0}},
        run_config=tune.RunConfig(name="plain", storage_path=str(tmp_path), verbose=0),
    )
    result = tuner.fit()[0]
    assert result.error is None
    assert result.metrics_dataframe["epoch"].tolist() == [1, 2]


def test_nan_trial_errors_without_poisoning_its_neighbour(local_ray, tmp_path):
    diverging = {**TINY, "training": {**TINY["training"], "epochs": 2, "lr": 1e12}}
    healthy = {**TINY, "training": {**TINY["training"], "epochs": 2}}
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": 1}),
        param_space=tune.grid_search([diverging, healthy]),
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(name="nan", storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()
    errors = [r for r in results if r.error is not None]
    finished = [r for r in results if r.error is None]
    assert len(errors) == 1 and len(finished) == 1
    assert "NonFiniteLossError" in str(errors[0].error) and "at epoch 1" in str(errors[0].error)
    assert finished[0].metrics["epoch"] == 2


class CrashAtFinishOnce(CrashOnceAfterEpoch):
    """Dies after the last epoch was reported and checkpointed, before the trial could end."""

    def log_epoch(self, metrics, files=None):
        with self.marker.with_suffix(".epochs").open("a") as trained:  # across both attempts
            trained.write(f"{int(metrics['epoch'])}\n")
        return {}

    def finish(self, error, checkpoint_uri=None):
        if error is None and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError("injected crash after the last epoch")
        self.marker.with_suffix(".uri").write_text(str(checkpoint_uri))


def crashing_at_finish(config):
    train_trial(config["trial"], tracker=CrashAtFinishOnce(config["marker"], epoch=0))


def test_trial_restarted_after_its_last_epoch_reports_its_final_result(local_ray, tmp_path):
    config = {**TINY, "training": {**TINY["training"], "epochs": 2}}
    result = fit_once(
        crashing_at_finish, {"trial": config, "marker": str(tmp_path / "crashed")}, tmp_path / "results", "final"
    )
    assert result.error is None and (tmp_path / "crashed").exists()
    # No epoch was trained again, and the trial ended on its final metrics. (Not read from
    # result.metrics_dataframe: which rows Ray's result files keep across a restart varies from
    # run to run, [1, 2, 2], [1, 2] and [2] in three runs of this test.)
    assert (tmp_path / "crashed.epochs").read_text().split() == ["1", "2"]
    # The tracker is told where the final checkpoint lives in the trial storage.
    uri = (tmp_path / "crashed.uri").read_text()
    assert uri == result.checkpoint.path and uri.startswith(str(tmp_path / "results"))
    assert load_checkpoint(uri)["epoch"] == 2
    assert result.metrics["epoch"] == 2 and 0 <= result.metrics["accuracy"] <= 1


def flaky_trial(config):
    """Fails once, as a disk or network hiccup would, then succeeds."""
    marker = Path(config["marker"])
    if not marker.exists():
        marker.touch()
        raise OSError("the disk hiccupped")
    tune.report({"epoch": 1})


def test_a_retried_trial_is_reported_with_what_it_raised_not_as_a_lost_worker(local_ray, tmp_path):
    stream = io.StringIO()
    tuner = tune.Tuner(
        tune.with_resources(flaky_trial, {"cpu": 1}),
        param_space={"marker": str(tmp_path / "failed-once")},
        run_config=tune.RunConfig(
            name="flaky",
            storage_path=str(tmp_path / "results"),
            verbose=0,
            callbacks=[SearchProgress(configurations=1, seeds=1, epochs=1, stream=stream)],
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    assert tuner.fit()[0].error is None
    warnings = [line for line in stream.getvalue().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and re.fullmatch(
        r"warning: trial \S+ failed \(OSError: the disk hiccupped\) \(failure 1\); Ray restarts it .*", warnings[0]
    ), warnings


class CorruptingTracker(CrashOnceAfterEpoch):
    """Once epoch 1's checkpoint is saved, overwrites it with garbage and crashes; records how the trial finished."""

    def log_epoch(self, metrics, files=None):
        if metrics["epoch"] == 2 and not self.marker.exists():
            self.marker.touch()
            for state in Path(self.marker.parent, "results").rglob("state.pt"):
                state.write_bytes(b"not a checkpoint")
            raise RuntimeError("injected crash")
        return {}

    def finish(self, error, checkpoint_uri=None):
        Path(f"{self.marker}.finished").write_text(f"{type(error).__name__}: {error}")


def corrupting_trial(config):
    train_trial(config["trial"], tracker=CorruptingTracker(config["marker"], epoch=0))


def test_a_trial_restarted_onto_an_unreadable_checkpoint_fails_saying_so(local_ray, tmp_path):
    result = fit_once(
        corrupting_trial, {"trial": TINY, "marker": str(tmp_path / "crashed")}, tmp_path / "results", "corrupt"
    )
    # The run is closed with the reason (FAILED, its error tag), not left for the search's end to mark KILLED.
    assert result.error is not None
    finished = (tmp_path / "crashed.finished").read_text()
    assert finished.startswith("CheckpointError: ") and "is not a readable trial checkpoint" in finished
