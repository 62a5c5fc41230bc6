"""One trial's configuration as plain data: what to train on, which model, how, with which seed.

A trial receives a plain dict (from Ray Tune, or a YAML file for one-off runs); `TrialConfig`
validates it. Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from trainables.models import ARCHITECTURES, RESNETS, STEMS, check_placements

Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


class Strict(BaseModel):
    # No unknown keys (a typo never falls back to a default) and no inf / nan where a number goes.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    # half: Optuna and the front see the conflict set; every trial also reports a second conflict
    # set rendered from an independent seed (shape_bias_holdout, ...), which nothing selects on.
    # none: the one conflict set only.
    split: Literal["half", "none"] = "half"


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
    # half: Optuna and the front see a selection half of the stimuli; every trial also reports the
    # other half (shape_bias_holdout, ...), which nothing selects on. none: one set, all stimuli.
    split: Literal["half", "none"] = "half"

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
    def _fits_arch(self) -> "ModelConfig":
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


class TrialConfig(Strict):
    data: Union[SyntheticData, FolderData] = Field(default_factory=SyntheticData, discriminator="kind")
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    seed: int = Field(0, ge=0)
    # Where this config came from (written by `run_search.py promote`: metrics, source runs, data
    # fingerprints, versions). Training ignores it, so a promoted config retrains as it is.
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sections_agree(self) -> "TrialConfig":
        check_sections(self.data, self.model, self.training)
        return self


def check_sections(data: Union[SyntheticData, FolderData], model: ModelConfig, training: TrainingConfig) -> None:
    """What the data, model and training sections require of each other (ValueError if not met)."""
    if model.head == "imagenet1k":
        if training.epochs != 0:
            raise ValueError("model.head: imagenet1k scores pretrained ImageNet weights and trains nothing; "
                             "set training.epochs: 0")
        if model.weights is None:
            raise ValueError("model.head: imagenet1k needs model.weights (torchvision's ImageNet weights file)")
        if not isinstance(data, FolderData) or data.label_space not in ("imagenet16", "categories"):
            raise ValueError("model.head: imagenet1k needs folder data with label_space imagenet16 (WordNet-id "
                             "folders) or categories (folders named by the 16 categories)")
    if training.epochs == 0 and model.weights is None:
        raise ValueError("training.epochs: 0 evaluates a model without training it: set model.weights")


def describe(error: ValidationError) -> str:
    """pydantic's report folded into one line: 'key: message (got value)' per problem."""
    parts = []
    for item in error.errors():
        # Drop the union-branch names pydantic inserts ('synthetic', 'folder'); keep the user's keys.
        where = ".".join(str(p) for p in item["loc"] if p not in ("synthetic", "folder")) or "config"
        message = item["msg"].removeprefix("Value error, ")
        given = item.get("input")
        shown = "" if isinstance(given, dict) or given is None else redact(bounded(given))
        if shown in message:  # our own validators already quote it
            shown = ""
        parts.append(f"{where}: {message}" + (f" (got {shown})" if shown else ""))
    return "; ".join(parts)


_PASSWORD = re.compile(r"(?<=://)([^/@\s:]*):[^/@\s]*@")
_SECRET_QUERY = re.compile(r"([?&][\w.-]*(?:secret|password|token|credential)[\w.-]*=)[^&\s]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with URL passwords (scheme://user:password@host, ?secret_key=...) replaced by ***."""
    return _SECRET_QUERY.sub(r"\1***", _PASSWORD.sub(r"\1:***@", text))


_REPR = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 2, 4, 4, 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80


def bounded(value: Any) -> str:
    """repr of an input quoted in an error, cut to about a line whatever its size or nesting."""
    return _REPR.repr(value)


class YamlError(ValueError):
    """Text that is not a plain YAML document of settings."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML's default is: the last wins)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise YamlError(f"key {bounded(key)} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


MAX_YAML_NODES = 100_000  # a large experiment file has hundreds


def parse_yaml(text: str) -> Any:
    """Settings from YAML text: safe (no code), unique keys, and no alias bomb (aliases expanded size-bounded)."""
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise YamlError(f"not valid YAML: {' '.join(str(error).split())[:300]}") from None
    if _expanded_size(value, {}) > MAX_YAML_NODES:
        raise YamlError(f"expands to more than {MAX_YAML_NODES} values through aliases (*name): "
                        "write the settings out instead")
    return value


def _expanded_size(value: Any, sizes: dict[int, int]) -> int:
    """Values in `value` with every alias expanded, computed without expanding (shared nodes counted once each)."""
    if not isinstance(value, (list, dict)):
        return 1
    if id(value) not in sizes:
        sizes[id(value)] = MAX_YAML_NODES + 1  # a self-reference is unbounded
        children = value.values() if isinstance(value, dict) else value
        sizes[id(value)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(value)]


def read_yaml(path: Path) -> Any:
    """A YAML settings file: one-line YamlError for a missing, undecodable or malformed file."""
    if not path.is_file():
        raise YamlError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise YamlError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise YamlError(f"{path}: cannot read: {error.strerror}") from None
    try:
        return parse_yaml(text)
    except YamlError as error:
        raise YamlError(f"{path}: {error}") from None
