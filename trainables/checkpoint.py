"""A trial's checkpoint: written atomically, read without running pickled code, and enough alone
to rebuild the model it holds (the trial config and label space travel inside it).

A checkpoint is one `state.pt` holding plain tensors, numbers, strings, lists and dicts:
`model`, `optimizer`, `scheduler`, `epoch`, `metrics`, `rng`, `tracking` (the tracker's slot),
`config` (the `TrialConfig` as JSON data) and `labels` (class names and their cue-conflict
categories).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainables.config import TrialConfig
from trainables.files import write_atomically
from trainables.label_spaces import LabelMapping
from trainables.models import build_model


def save_checkpoint(state: dict[str, Any], directory: str | Path) -> Path:
    """Write `state` to directory/state.pt atomically: a crash never leaves a half-written file."""
    return write_atomically(Path(directory) / "state.pt", lambda tmp: torch.save(state, tmp))


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, truncated, foreign, or of another model."""


# What train_and_evaluate needs to continue a run; a file without them is not a trial checkpoint.
RESUME_KEYS = {"model", "optimizer", "scheduler", "epoch", "metrics", "rng"}


def load_checkpoint(location: str | Path) -> dict[str, Any]:
    """Read <location>/state.pt, a directory or a URI (s3://...), with weights_only=True (no pickled code runs)."""
    location = str(location)
    try:
        if "://" not in location:
            state = torch.load(Path(location) / "state.pt", map_location="cpu", weights_only=True)
        else:
            import pyarrow.fs  # Ray's own storage layer: the same schemes trial storage accepts

            filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
            with filesystem.open_input_file(f"{path.rstrip('/')}/state.pt") as handle:
                state = torch.load(io.BytesIO(handle.read()), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {location}: state.pt is missing") from None
    except Exception as error:
        # torch's own message for a foreign file suggests weights_only=False, which would run
        # whatever code the file holds: never pass that advice on.
        raise CheckpointError(
            f"{location}/state.pt is not a readable trial checkpoint (truncated, or written "
            f"by something else: {type(error).__name__}); delete it to start afresh"
        ) from None
    if not isinstance(state, dict) or not set(state) >= RESUME_KEYS:
        raise CheckpointError(
            f"{location}/state.pt is not a trial checkpoint (it lacks "
            f"{sorted(RESUME_KEYS - set(state)) if isinstance(state, dict) else 'a mapping'})"
        )
    return state


def temporary_checkpoint(state: dict[str, Any]) -> tempfile.TemporaryDirectory:
    """A temporary directory holding `state` as a checkpoint (the caller cleans it up)."""
    directory = tempfile.TemporaryDirectory(prefix="trial-ckpt-")
    save_checkpoint(state, directory.name)
    return directory


def labels_of(class_names: Sequence[str], mapping: LabelMapping) -> dict[str, list]:
    """The model's output classes and their mapping to cue-conflict categories, as plain lists."""
    return {
        "class_names": list(class_names),
        "categories": list(mapping.categories),
        "members": [list(m) for m in mapping.members],
    }


def mapping_of(labels: dict[str, list]) -> LabelMapping:
    """The `LabelMapping` that `labels_of` recorded."""
    return LabelMapping(
        tuple(labels["categories"]), tuple(tuple(m) for m in labels["members"]), len(labels["class_names"])
    )


def restore_model(state: dict[str, Any]) -> tuple[torch.nn.Module, TrialConfig]:
    """The trained model of a checkpoint (eval mode, CPU) and the trial config that built it."""
    missing = {"model", "config", "labels"} - set(state)
    if missing:
        raise ValueError(f"checkpoint lacks {sorted(missing)}: it predates checkpoints that carry their config")
    config = TrialConfig.model_validate(state["config"], context={"check_paths": False})
    model = build_model(
        num_classes=len(state["labels"]["class_names"]),
        stem=config.model.stem,
        topk=config.model.topk,
        arch=config.model.arch,
    )  # the weights are the checkpoint's, not config.model.weights
    model.load_state_dict(state["model"])
    return model.eval(), config
