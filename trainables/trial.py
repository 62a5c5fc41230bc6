"""One trial as a Ray Tune function trainable, and the same trial from the command line.

Inside Ray Tune, `train_trial(config)` resumes from `ray.tune.get_checkpoint()` when the trial is
restarted, and every epoch calls `ray.tune.report(metrics, ...)`, with a checkpoint every
`training.checkpoint_every` epochs and at the last. A `Tracker` (the orchestrator's MLflow logger,
say) can ride along: the checkpoint's free `tracking` slot carries whatever it needs to reattach
after a restart. Without Ray:

    python -m trainables.trial --config trial.yaml [key=value ...] [--checkpoint-dir DIR] [--track]

`key=value` overrides any field of the trial YAML as the search's do (`training.epochs=2`), and
`--track` logs the run to MLflow (`trainables.tracking`): a retrain from a promoted model's
`production.yaml` is then recorded beside the run it retrains.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from trainables.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, temporary_checkpoint
from trainables.config import TrialConfig
from trainables.files import apply_override, read_settings, write_text_atomically
from trainables.messages import one_line
from trainables.train import NonFiniteLossError, train_and_evaluate


class Tracker(Protocol):
    """Logs a trial somewhere; `start` returns what must survive a restart (kept in checkpoints)."""

    def start(self, config: TrialConfig, saved: dict[str, Any]) -> dict[str, Any]: ...
    def log_epoch(self, metrics: dict[str, float], files: dict[str, str] | None = None) -> dict[str, float | str]:
        """Log one epoch (and text files, by name); returns values to report to Tune beside the metrics."""
        ...

    def finish(self, error: BaseException | None, checkpoint_uri: str | None = None) -> None: ...


def train_trial(
    config: dict[str, Any], tracker: Tracker | None = None, reported: Collection[str] | None = None
) -> None:
    """Ray Tune function trainable: validate `config`, resume if restarted, report every epoch.

    `reported` names the metrics Tune hears of (None: all); the tracker logs every one.
    """
    from ray import tune

    trial = TrialConfig.model_validate(config)
    checkpoint = tune.get_checkpoint()
    resume, unreadable = None, None
    if checkpoint is not None:
        try:
            with checkpoint.as_directory() as directory:
                resume = load_checkpoint(directory)
        except (CheckpointError, OSError) as error:
            unreadable = error
        else:
            print(f"resuming from its checkpoint after epoch {resume['epoch']}", flush=True)
    slot = tracker.start(trial, resume.get("tracking", {}) if resume else {}) if tracker else {}
    if unreadable is not None:  # the run ends FAILED saying why, not KILLED with the search
        if tracker:
            tracker.finish(unreadable)
        raise unreadable
    if resume is not None:
        resume["tracking"] = slot

    def report(metrics: dict[str, float], state: dict[str, Any]) -> None:
        state["tracking"] = slot
        health = tracker.log_epoch(metrics, state.pop("decision_files", None)) if tracker else {}
        result = _only({**metrics, **health}, reported)
        if not trial.training.saves_checkpoint(int(metrics["epoch"])):
            tune.report(result)
            return
        with temporary_checkpoint(state) as directory:
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))

    if resume is not None and resume["epoch"] >= trial.training.epochs:
        # Restarted after its last epoch (the driver died before it recorded the end): report
        # the final result again, so Tune and the searcher see a complete trial.
        tune.report(_only(resume["metrics"], reported))
        if tracker:
            tracker.finish(None, checkpoint_uri(checkpoint))
        return
    _train_telling(tracker, trial, report, resume)
    if tracker:
        tracker.finish(None, checkpoint_uri(tune.get_checkpoint()))
    # Nothing is returned: Ray would record a returned dict as one more, checkpoint-less result.


def _train_telling(tracker: Tracker | None, trial: TrialConfig, report: Any, resume: dict[str, Any] | None) -> None:
    """`train_and_evaluate`, telling the tracker of a failure (Ctrl+C included) before it propagates."""
    try:
        train_and_evaluate(trial, report, resume=resume)
    except BaseException as error:
        if tracker:
            tracker.finish(error)
        raise


def _only(result: dict[str, Any], reported: Collection[str] | None) -> dict[str, Any]:
    return result if reported is None else {k: v for k, v in result.items() if k in reported}


def checkpoint_uri(checkpoint: Any) -> str:
    """Where a reported checkpoint lives in the trial storage: a local path, or a URI (s3://...)."""
    # After tune.report the checkpoint is the persisted copy. Its path carries no scheme; the
    # pyarrow filesystem it sits on says which.
    kind = checkpoint.filesystem.type_name
    if kind == "local":
        return checkpoint.path
    return f"{_SCHEMES.get(kind, kind)}://{checkpoint.path}"


_SCHEMES = {"gcs": "gs"}  # pyarrow type names that differ from the URI scheme


def check_checkpoint_dir(directory: Path) -> None:
    """A --checkpoint-dir that can hold state.pt, checked before any training is spent."""
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"--checkpoint-dir {directory} is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise CheckpointError(f"--checkpoint-dir {directory} is not writable ({error.strerror})") from None


def main(argv: list[str] | None = None) -> int:
    """Command line: train one trial without Ray, printing each epoch (and logging it with --track)."""
    parser = argparse.ArgumentParser(description="Train and evaluate one sparse ResNet-18, without Ray.")
    parser.add_argument("--config", required=True, help="trial YAML: data, model, training, seed")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override any field, dotted: training.epochs=2 seed=3"
    )
    parser.add_argument(
        "--checkpoint-dir", type=Path, help="save state.pt here every training.checkpoint_every epochs; resume from it"
    )
    parser.add_argument("--track", action="store_true", help="log the run to MLflow (params, each epoch, provenance)")
    parser.add_argument(
        "--tracking-uri",
        help="with --track: MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument(
        "--experiment", help="with --track: MLflow experiment (default: <provenance experiment>-retrains, else trials)"
    )
    args = parser.parse_args(argv)
    from mlflow.exceptions import MlflowException

    try:
        trial = _load(args.config, args.overrides)
        tracker = None
        if args.track:
            from trainables.tracking import RunTracker, tracking_uri

            tracker = RunTracker(tracking_uri(args.tracking_uri), args.experiment, None)
        return _train(trial, args.checkpoint_dir, tracker)
    except (ValidationError, ValueError, OSError, NonFiniteLossError, MlflowException) as error:
        # Config, data, checkpoint, numerical and tracking failures: one line, exit 2 (CheckpointError
        # and YamlError are ValueErrors).
        print(f"error: {one_line(error)[:1000]}", file=sys.stderr)
        return 2


def _load(config_path: str, overrides: list[str]) -> TrialConfig:
    """The trial YAML with the command line's overrides applied, validated."""
    raw = read_settings(Path(config_path))
    for assignment in overrides:
        apply_override(raw, assignment)
    return TrialConfig.model_validate(raw)


def _train(trial: TrialConfig, checkpoint_dir: Path | None, tracker: Tracker | None = None) -> int:
    resume = None
    if checkpoint_dir:
        check_checkpoint_dir(checkpoint_dir)
        if (checkpoint_dir / "state.pt").exists():
            resume = load_checkpoint(checkpoint_dir)
            print(f"resuming from {checkpoint_dir} after epoch {resume['epoch']}")
    start = time.perf_counter()
    final: dict[str, float] = {}

    def report(metrics: dict[str, float], state: dict[str, Any]) -> None:
        decision_files = state.pop("decision_files", {})
        if checkpoint_dir and trial.training.saves_checkpoint(int(metrics["epoch"])):
            save_checkpoint(state, checkpoint_dir)
            for name, text in decision_files.items():
                write_text_atomically(checkpoint_dir / name, text)
        if tracker:
            tracker.log_epoch(metrics, decision_files)
        final.update(metrics)
        print(
            (
                f"epoch {metrics['epoch']:>3}  loss {metrics['train_loss']:.3f}  "
                if metrics["epoch"]
                else "evaluated as loaded  "
            )
            + f"accuracy {metrics['accuracy']:.3f}  "
            f"shape bias {metrics['shape_bias']:.3f}  (shape acc {metrics['shape_accuracy']:.3f}, texture acc "
            f"{metrics['texture_accuracy']:.3f}, cue decisions {metrics['cue_decision_rate']:.3f})  "
            + (f"held-out shape bias {metrics['shape_bias_holdout']:.3f}  " if "shape_bias_holdout" in metrics else "")
            + f"{metrics['images_per_s']:.0f} img/s  {time.perf_counter() - start:.0f}s",
            flush=True,
        )

    if resume is not None and resume["epoch"] >= trial.training.epochs:
        print(f"all {trial.training.epochs} epochs are already trained; final metrics: {resume['metrics']}")
        return 0
    if tracker:
        tracker.start(trial, {})
    _train_telling(tracker, trial, report, resume)
    if tracker:
        tracker.finish(None, str(checkpoint_dir) if checkpoint_dir else None)
        print(f"logged as MLflow run {getattr(tracker, 'run_id', '')}")
    _compare_with_provenance(trial.provenance, final)
    return 0


def _compare_with_provenance(provenance: dict[str, Any], final: dict[str, float]) -> None:
    """A retrain of a promoted model: its last epoch beside the figures recorded at promotion."""
    recorded = (provenance.get("metrics") or {}).get("replicate") or {}
    if not recorded or not final:
        return
    print(f"{'':<25} {'at promotion':>12} {'retrained':>10}")
    for name, value in recorded.items():
        if name in final:
            change = "same" if final[name] == value else f"{final[name] - value:+.4f}"
            print(f"{name:<25} {value:>12.4f} {final[name]:>10.4f}  {change}")


if __name__ == "__main__":
    sys.exit(main())
