"""One trial's configuration as plain data: what to train on, which model, how, with which seed.

A trial receives a plain dict (from Ray Tune, or a YAML file for one-off runs); `TrialConfig`
validates it. Unknown keys are errors, so a typo never silently falls back to a default. The
`data:` section is a data source (`trainables.data`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from trainables.data import DataSettings, DataSource, SyntheticData
from trainables.files import read_settings
from trainables.models import ARCHITECTURES, RESNETS, STEMS, check_placements
from trainables.schema import Strict

Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


class ModelConfig(Strict):
    """Which torchvision network, its stem, where Top-K sits, and optional starting weights."""

    arch: Literal[tuple(ARCHITECTURES)] = "resnet18"  # type: ignore[valid-type]
    stem: Literal[STEMS] = "imagenet"  # type: ignore[valid-type]
    topk: dict[str, Fraction] = Field(default_factory=dict)
    # A local torchvision state dict (e.g. vgg16-397923af.pth); nothing is ever downloaded.
    weights: Path | None = None
    # `data`: one output per data class. `imagenet1k`: torchvision's 1000-way ImageNet head, scored
    # through the 16-category decision; only for evaluating pretrained weights (epochs: 0).
    head: Literal["data", "imagenet1k"] = "data"

    @model_validator(mode="after")
    def _fits_arch(self) -> ModelConfig:
        if self.stem == "cifar" and self.arch not in RESNETS:
            raise ValueError(f"stem: cifar is a ResNet stem; {self.arch} takes stem: imagenet")
        check_placements(self.topk, self.arch)
        return self

    @field_validator("weights")
    @classmethod
    def _weights_file(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None:
            return None
        path = path.expanduser().resolve()  # absolute: Ray runs each trial in its own directory
        if (info.context or {}).get("check_paths", True) and not path.is_file():
            raise ValueError(f"weights file not found: {path} (a torchvision state dict such as vgg16-397923af.pth)")
        return path


class TrainingConfig(Strict):
    """The authors' recipe: SGD, momentum 0.9, weight decay 5e-4, cosine schedule."""

    epochs: int = Field(50, ge=0)  # 0: evaluate the weights as loaded, train nothing
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
    # Save a checkpoint every N epochs, and always at the last and at `checkpoint_epochs` (a
    # search puts its early-stopping rungs there). A restart resumes from the last one saved,
    # so a lost worker redoes up to N - 1 epochs; each checkpoint holds the optimizer, scheduler
    # and RNG states with the weights, which an exact resumption needs.
    checkpoint_every: int = Field(1, ge=1)
    checkpoint_epochs: list[int] = Field(default_factory=list)

    def saves_checkpoint(self, epoch: int) -> bool:
        """Whether the state after `epoch` is saved (epoch 0: the weights evaluated as loaded)."""
        return epoch % self.checkpoint_every == 0 or epoch >= self.epochs or epoch in self.checkpoint_epochs


class TrialConfig(Strict):
    """One trial: its data source, model, training recipe and seed."""

    data: DataSettings = Field(default_factory=SyntheticData)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    seed: int = Field(0, ge=0)
    # Where this config came from (written by `run_search.py promote`: metrics, source runs, data
    # fingerprints, versions). Training ignores it, so a promoted config retrains as it is.
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sections_agree(self) -> TrialConfig:
        check_sections(self.data, self.model, self.training)
        return self


def check_sections(data: DataSource, model: ModelConfig, training: TrainingConfig) -> None:
    """What the data, model and training sections require of each other (ValueError if not met)."""
    if model.head == "imagenet1k":
        if training.epochs != 0:
            raise ValueError(
                "model.head: imagenet1k scores pretrained ImageNet weights and trains nothing; set training.epochs: 0"
            )
        if model.weights is None:
            raise ValueError("model.head: imagenet1k needs model.weights (torchvision's ImageNet weights file)")
        if not data.names_categories():
            raise ValueError(
                "model.head: imagenet1k needs folder data with label_space imagenet16 (WordNet-id "
                "folders) or categories (folders named by the 16 categories)"
            )
    if training.epochs == 0 and model.weights is None:
        raise ValueError("training.epochs: 0 evaluates a model without training it: set model.weights")


def load_trial_config(path: str | Path) -> TrialConfig:
    """Read and validate a trial YAML file (safe: no code in config text, no duplicate keys)."""
    return TrialConfig.model_validate(read_settings(Path(path)))
