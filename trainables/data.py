"""What a trial trains and is scored on: one interface, `DataSource`, and its two sources.

A source is a settings model (part of a trial's YAML, under `data:`, picked by `kind`) that also
knows how to build the trial's data, fingerprint it, describe it as inputs for a tracking system,
and take other evaluation folders. A third source is one more subclass of `DataSource`, added to
`DataSettings`; nothing else branches on the kind of data.

- `SyntheticData`: the embedded shape-vs-texture benchmark, generated from its settings.
- `FolderData`: image folders (one sub-folder per class) scored on the Geirhos stimuli.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator

from trainables.batches import Batches, FolderImages, InMemoryBatches, StreamingBatches, decode_folder, list_samples
from trainables.cue_conflict import Stimuli, clear_stimuli_cache, load_stimuli, split_stimuli
from trainables.label_spaces import (
    CATEGORIES,
    LabelMapping,
    cifar10_mapping,
    imagenet16_table,
    mapping_from_names,
    native_mapping,
)
from trainables.schema import Strict
from trainables.synthetic import SyntheticBenchmark, make_benchmark

PARTS = ("train", "test", "stimuli")  # what a trial trains on, is tested on, and is scored on


@dataclass
class TrialData:
    """Everything a trial trains and evaluates on."""

    train: Batches
    test_images: torch.Tensor  # uint8 (N, 3, S, S)
    test_labels: torch.Tensor  # int64 (N,)
    stimuli: Stimuli  # what Optuna and the front see
    holdout: Stimuli | None  # the report set, which nothing selects on (data.split: half)
    mapping: LabelMapping
    class_names: tuple[str, ...]
    image_size: int
    train_size: int


@dataclass(frozen=True)
class DataInput:
    """One part of a trial's data as a tracking system records it (MLflow's Dataset column)."""

    part: str  # train, test or stimuli
    name: str
    digest: str
    source_type: str  # "code": generated from settings; "local": a folder
    source: dict[str, Any]

    @property
    def context(self) -> str:
        return "training" if self.part == "train" else "evaluation"


class DataSource(Strict):
    """The interface every source implements: build, fingerprint, inputs, evaluation overrides."""

    image_size: int = Field(32, ge=16, le=512)
    # half: Optuna and the front see a selection set of conflict images; every trial also reports
    # a second set (shape_bias_holdout, ...), which nothing selects on. none: one set only.
    split: Literal["half", "none"] = "half"

    def build(self, batch_size: int, seed: int, augment: bool, pin_memory: bool = False) -> TrialData:
        """Load or generate the trial's data; bad paths, classes or images fail here, before training."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, str]:
        """sha256 of each part (PARTS), to tell later whether the data changed."""
        raise NotImplementedError

    def inputs(self, digests: dict[str, str]) -> list[DataInput]:
        """Each part as a tracking system's input record, with the digests taken when the search started."""
        raise NotImplementedError

    def for_evaluation(self, stimuli_dir: Path | None = None, test_dir: Path | None = None) -> DataSource:
        """The same source scored on other stimuli or test folders; ValueError if it has none to swap."""
        raise NotImplementedError

    def train_images(self) -> int | None:
        """How many training images there are, when the settings alone say (for batch-size checks)."""
        return None

    def names_categories(self) -> bool:
        """Whether its classes are cue-conflict categories, so a 1000-way ImageNet head can be scored on it."""
        return False


class SyntheticData(DataSource):
    """The embedded shape-vs-texture benchmark (trainables/synthetic.py)."""

    kind: Literal["synthetic"] = "synthetic"
    num_classes: int = Field(6, ge=2, le=8)
    train_size: int = Field(3000, ge=10)
    test_size: int = Field(600, ge=10)
    conflicts_per_pair: int = Field(20, ge=1)
    texture_strength: float = Field(1.0, ge=0.0, le=1.0)
    shape_contrast: float = Field(0.5, ge=0.0, le=1.0)
    # The data seed is fixed across trials: seeds are replicates of training, not of data.
    # With split: half the report set is rendered from an independent seed.
    seed: int = Field(0, ge=0)

    def build(self, batch_size: int, seed: int, augment: bool, pin_memory: bool = False) -> TrialData:
        bench = _benchmark(self)
        return TrialData(
            train=InMemoryBatches(bench.train_images, bench.train_labels, batch_size, seed, augment),
            test_images=bench.test_images,
            test_labels=bench.test_labels,
            stimuli=bench.conflict,
            holdout=bench.holdout,
            mapping=native_mapping(bench.class_names),
            class_names=bench.class_names,
            image_size=self.image_size,
            train_size=len(bench.train_labels),
        )

    def fingerprint(self) -> dict[str, str]:
        # A pure function of its settings, so they are its fingerprint.
        digest = _sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True))
        return dict.fromkeys(PARTS, digest)

    def inputs(self, digests: dict[str, str]) -> list[DataInput]:
        settings = {k: str(v) for k, v in self.model_dump(mode="json").items()}
        names = {"train": "synthetic-train", "test": "synthetic-test", "stimuli": "synthetic-cue-conflict"}
        return [
            DataInput(part, names[part], digests[part][:16], "code", {"tags": {**settings, "split": part}})
            for part in PARTS
        ]

    def for_evaluation(self, stimuli_dir: Path | None = None, test_dir: Path | None = None) -> SyntheticData:
        if test_dir is not None:
            raise ValueError(
                f"--data {test_dir}: this model was trained on the synthetic benchmark, which is "
                "generated from its settings; --data takes a class-folder tree for folder-trained models"
            )
        if stimuli_dir is not None:
            raise ValueError(
                f"--stimuli {stimuli_dir}: this model was trained on the synthetic benchmark, whose "
                "cue-conflict images are generated; --stimuli applies to folder-trained models"
            )
        return self

    def train_images(self) -> int | None:
        return self.train_size


class FolderData(DataSource):
    """Image folders (one sub-folder per class) scored on the Geirhos cue-conflict stimuli."""

    kind: Literal["folder"] = "folder"
    train_dir: Path
    test_dir: Path
    stimuli_dir: Path
    # cifar10: the 7 shared classes; imagenet16: WordNet-id folders reduced to the 16 categories;
    # categories: folder names are category names; a mapping: {category: [folder names]}.
    label_space: Literal["cifar10", "imagenet16", "categories"] | dict[str, list[str]] = "cifar10"
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

    def build(self, batch_size: int, seed: int, augment: bool, pin_memory: bool = False) -> TrialData:
        stimuli, holdout = load_stimuli(self.stimuli_dir), None
        if self.split == "half":
            stimuli, holdout = split_stimuli(stimuli)
        class_names, labels, mapping = self.classes(self.train_dir)
        missing = sorted(set(labels) - set(self.classes(self.test_dir)[1]))
        if missing:
            raise ValueError(f"test folder {self.test_dir} lacks classes {missing} of {self.train_dir}")
        key = tuple(sorted(labels.items()))
        test_images, test_labels = decode_folder(self.test_dir.resolve(), key, self.image_size, self.max_per_class)
        train_samples = list_samples(self.train_dir, labels, self.max_per_class)
        train: Batches
        if len(train_samples) <= self.in_memory_limit:
            images, targets = decode_folder(self.train_dir.resolve(), key, self.image_size, self.max_per_class)
            train = InMemoryBatches(images, targets, batch_size, seed, augment)
        else:
            dataset = FolderImages(train_samples, self.image_size, augment)
            train = StreamingBatches(dataset, batch_size, seed, self.workers, pin_memory)
        return TrialData(
            train, test_images, test_labels, stimuli, holdout, mapping, class_names, self.image_size, len(train_samples)
        )

    def fingerprint(self) -> dict[str, str]:
        # The listing: relative path and size of every file.
        return {part: _listing_digest(self._folder(part)) for part in PARTS}

    def inputs(self, digests: dict[str, str]) -> list[DataInput]:
        return [
            DataInput(part, f"{path.parent.name}/{path.name}", digests[part][:16], "local", {"uri": str(path)})
            for part, path in ((part, self._folder(part)) for part in PARTS)
        ]

    def for_evaluation(self, stimuli_dir: Path | None = None, test_dir: Path | None = None) -> FolderData:
        changes = {k: v for k, v in (("stimuli_dir", stimuli_dir), ("test_dir", test_dir)) if v is not None}
        return self.model_copy(update=changes)

    def names_categories(self) -> bool:
        return self.label_space in ("imagenet16", "categories")

    def classes(self, root: Path) -> tuple[tuple[str, ...], dict[str, int], LabelMapping]:
        """(model class names, {folder name: label}, mapping to the 16 categories) for a folder layout."""
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not folders:
            raise ValueError(f"no class folders in {root}")
        space = self.label_space
        in_order = {f: i for i, f in enumerate(folders)}
        if space == "cifar10":
            return tuple(folders), in_order, cifar10_mapping(folders)
        if space == "categories":
            unknown = [f for f in folders if f not in CATEGORIES]
            if unknown:
                raise ValueError(
                    f"class folders {unknown} in {root} are not cue-conflict categories: {', '.join(CATEGORIES)}"
                )
            return tuple(folders), in_order, native_mapping(folders)
        if space == "imagenet16":
            # WordNet-id folders reduced to the 16 categories; other ImageNet classes are left out.
            wnid_to_category = {w: c for c, v in imagenet16_table().items() for w in v["wnids"]}
            labels = {f: CATEGORIES.index(wnid_to_category[f]) for f in folders if f in wnid_to_category}
            if not labels:
                raise ValueError(f"no folder in {root} is a WordNet id of the 16 categories (e.g. n02690373)")
            return CATEGORIES, labels, native_mapping(CATEGORIES)
        return tuple(folders), in_order, mapping_from_names(folders, space)

    def _folder(self, part: str) -> Path:
        return {"train": self.train_dir, "test": self.test_dir, "stimuli": self.stimuli_dir}[part]


# The sources a trial's `data:` may name, told apart by `kind`.
DataSettings = Annotated[SyntheticData | FolderData, Field(discriminator="kind")]


def _listing_digest(root: Path) -> str:
    """The relative path and size of every file under `root`, symlinked folders followed as training follows them."""
    if not root.is_dir():
        raise FileNotFoundError(f"data directory not found: {root}")
    return _sha256("\n".join(f"{path}\t{size}" for path, size in sorted(_listing(root))))


def _listing(root: Path) -> list[tuple[str, int]]:
    """(path relative to `root`, size) of each file, through symlinked folders (a link to a folder above stops)."""
    found = []
    # Path.rglob does not enter symlinked folders before Python 3.13; training reads through them.
    for folder, subfolders, files in os.walk(root, followlinks=True):
        here = Path(folder)
        above = {os.path.realpath(root / part) for part in here.relative_to(root).parents}
        if os.path.realpath(here) in above:  # a link back up the tree would be walked for ever
            subfolders.clear()
            continue
        for name in files:
            path = here / name
            if path.is_file():  # a dangling link is no file training could read
                found.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return found


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def clear_caches() -> None:
    """Forget the data this process decoded or generated, so that changed folders are read anew.

    Folders, stimuli and benchmarks are kept per process (a reused Ray worker trains its next trial
    on them at once); a long-lived process whose files changed calls this.
    """
    decode_folder.cache_clear()
    clear_stimuli_cache()
    _benchmark.cache_clear()


@functools.lru_cache(maxsize=2)
def _benchmark(data: SyntheticData) -> SyntheticBenchmark:
    """The benchmark, generated once per process for each setting (a reused worker keeps it)."""
    return make_benchmark(
        num_classes=data.num_classes,
        image_size=data.image_size,
        train_size=data.train_size,
        test_size=data.test_size,
        conflicts_per_pair=data.conflicts_per_pair,
        texture_strength=data.texture_strength,
        shape_contrast=data.shape_contrast,
        seed=data.seed,
        report_set=data.split == "half",
    )
