"""A trial's checkpoint: written atomically, read without running pickled code, and enough alone
to rebuild the model it holds (the trial config and label space travel inside it).

A checkpoint is one `state.pt` holding plain tensors, numbers, strings, lists and dicts:
`model`, `optimizer`, `scheduler`, `epoch`, `metrics`, `rng`, `tracking` (the tracker's slot),
`config` (the `TrialConfig` as JSON data) and `labels` (class names and their cue-conflict
categories).
"""

from __future__ import annotations

import hashlib
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
    return read_checkpoint(location)[0]


def read_checkpoint(location: str | Path) -> tuple[dict[str, Any], str]:
    """The checkpoint at `location` and the SHA-256 of its state.pt (what the run recorded at its end)."""
    location = str(location)
    raw = _state_bytes(location)
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
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
    return state, hashlib.sha256(raw).hexdigest()


def checkpoint_digest(location: str | Path) -> str:
    """The SHA-256 of <location>/state.pt: recorded by a finished trial, checked by promote."""
    return hashlib.sha256(_state_bytes(str(location))).hexdigest()


def _state_bytes(location: str) -> bytes:
    """<location>/state.pt as bytes, from a local folder or any URI Ray's storage layer (pyarrow) reads."""
    try:
        if "://" not in location:
            return (Path(location) / "state.pt").read_bytes()
        import pyarrow.fs  # Ray's own storage layer: the same schemes trial storage accepts

        filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
        with filesystem.open_input_file(f"{path.rstrip('/')}/state.pt") as handle:
            return bytes(handle.read())
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {location}: state.pt is missing") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {location}/state.pt: {error.strerror or error}") from None


def weights_digest(model: torch.nn.Module) -> str:
    """A SHA-256 of a module's weights (names, dtypes and bytes): the same network gives the same digest."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
