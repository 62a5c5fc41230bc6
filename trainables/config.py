"""One trial's configuration as plain data: what to train on, which model, how, with which seed.

A trial receives a plain dict (from Ray Tune, or a YAML file for one-off runs); `TrialConfig`
validates it. Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from trainables.models import STEMS, check_placements

Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticData(Strict):
    """The embedded shape-vs-texture benchmark (trainables/synthetic.py)."""

    kind: Literal["synthetic"] = "synthetic"
    num_classes: int = Field(6, ge=2, le=8)
    image_size: int = Field(32, ge=16, le=512)
    train_size: int = Field(3000, ge=10)
    test_size: int = Field(600, ge=10)
    conflicts_per_pair: int = Field(20, ge=1)
    texture_strength: float = Field(1.0, ge=0.0, le=1.0)
    shape_contrast: float = Field(0.5, ge=0.0, le=1.0)
    # The data seed is fixed across trials: seeds are replicates of training, not of data.
    seed: int = Field(0, ge=0)


class FolderData(Strict):
    """Image folders (one sub-folder per class) scored on the Geirhos cue-conflict stimuli."""

    kind: Literal["folder"] = "folder"
    train_dir: Path
    test_dir: Path
    stimuli_dir: Path
    # cifar10: the 7 shared classes; imagenet16: WordNet-id folders reduced to the 16 categories;
    # categories: folder names are category names; a mapping: {category: [folder names]}.
    label_space: Union[Literal["cifar10", "imagenet16", "categories"], dict[str, list[str]]] = "cifar10"
    image_size: int = Field(32, ge=16, le=512)
    max_per_class: int | None = Field(None, ge=1)
    # Training sets up to this many images are decoded once into memory (augmented by pad-crop +
    # flip); larger ones stream from disk (RandomResizedCrop + flip). The test split is always
    # decoded into memory, resized to a square.
    in_memory_limit: int = Field(100_000, ge=0)
    workers: int = Field(2, ge=0)

    @field_validator("train_dir", "test_dir", "stimuli_dir")
    @classmethod
    def _exists(cls, path: Path, info: ValidationInfo) -> Path:
        # Absolute, because Ray runs each trial in its own working directory.
        path = path.expanduser().resolve()
        # A recorded config (a checkpoint's, a promoted model's) is read where its data may not be.
        checking = (info.context or {}).get("check_paths", True)
        if checking and not path.is_dir():
            raise ValueError(f"directory not found: {path}")
        return path


class ModelConfig(Strict):
    stem: Literal[STEMS] = "imagenet"  # type: ignore[valid-type]
    topk: dict[str, Fraction] = Field(default_factory=dict)

    @field_validator("topk")
    @classmethod
    def _placements(cls, topk: dict[str, float]) -> dict[str, float]:
        return check_placements(topk)


class TrainingConfig(Strict):
    """The authors' recipe: SGD, momentum 0.9, weight decay 5e-4, cosine schedule."""

    epochs: int = Field(50, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    augment: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bf16 autocast where the GPU supports it, fp16 otherwise; off on CPU
    channels_last: bool = True  # on GPU only
    compile: bool = False
    # CPU threads for torch; 0 follows the trial's CPU allocation.
    threads: int = Field(0, ge=0)


class TrialConfig(Strict):
    data: Union[SyntheticData, FolderData] = Field(default_factory=SyntheticData, discriminator="kind")
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    seed: int = Field(0, ge=0)
    # Where this config came from (written by `run_search.py promote`: metrics, source runs, data
    # fingerprints, versions). Training ignores it, so a promoted config retrains as it is.
    provenance: dict[str, Any] = Field(default_factory=dict)


def describe(error: ValidationError) -> str:
    """pydantic's report folded into one line: 'key: message (got value)' per problem."""
    parts = []
    for item in error.errors():
        # Drop the union-branch names pydantic inserts ('synthetic', 'folder'); keep the user's keys.
        where = ".".join(str(p) for p in item["loc"] if p not in ("synthetic", "folder")) or "config"
        message = item["msg"].removeprefix("Value error, ")
        given = item.get("input")
        shown = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
        parts.append(f"{where}: {message}{shown}")
    return "; ".join(parts)
