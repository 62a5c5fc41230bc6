"""Training data, held-out test data and cue-conflict stimuli for one trial.

Every source yields uint8 image batches (N, 3, S, S) with int64 labels; the training loop moves
them to the device and normalises there (see `cue_conflict.preprocess`). Small datasets (the
synthetic benchmark, CIFAR-10) are decoded once per process into uint8 tensors and augmented in
batches on the fly; large ones (an ImageNet folder) stream through a DataLoader.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from trainables.config import FolderData, SyntheticData
from trainables.cue_conflict import Stimuli, load_stimuli, split_stimuli
from trainables.label_spaces import (
    CATEGORIES,
    LabelMapping,
    cifar10_mapping,
    imagenet16_table,
    mapping_from_names,
    native_mapping,
)
from trainables.synthetic import make_benchmark

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class Batches(Protocol):
    """An epoch's worth of (uint8 images, labels) batches; `set_epoch` fixes its shuffle."""

    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __len__(self) -> int: ...


@dataclass
class TrialData:
    """Everything a trial trains and evaluates on."""

    train: Batches
    test_images: torch.Tensor
    test_labels: torch.Tensor
    stimuli: Stimuli  # what Optuna and the front see
    holdout: Stimuli | None  # the report set, which nothing selects on (data.split: half)
    mapping: LabelMapping
    class_names: tuple[str, ...]
    image_size: int
    train_size: int


def random_crop_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop (zero padding of 1/8 the size) and horizontal flip of a uint8 batch."""
    n, _, h, w = images.shape
    pad = max(1, h // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, 3, h, w + 2 * pad)
    crops = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, 3, h, w)
    crops = crops.gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    crops[flip] = crops[flip].flip(-1)
    return crops


class InMemoryBatches:
    """Shuffled, augmented batches over uint8 tensors; the order is a function of (seed, epoch)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, augment: bool) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size  # drop the ragged last batch, as BatchNorm likes

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Seeding per epoch (not from a running RNG) makes a resumed run see the same batches.
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.labels), generator=generator)
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            images = self.images[index]
            if self.augment:
                images = random_crop_flip(images, generator)
            yield images, self.labels[index]


def _decode(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            return np.asarray(image)
    except Exception as error:  # PIL raises several unrelated types for broken files
        raise ValueError(f"cannot decode image {path}: {error}") from error


class FolderImages(Dataset):
    """Streaming dataset over (path, label) pairs; decode errors name the file."""

    def __init__(self, samples: list[tuple[Path, int]], size: int, augment: bool) -> None:
        self.samples = samples
        if augment:
            self.transform = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
        else:
            self.transform = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                tensor = v2.functional.pil_to_tensor(image.convert("RGB"))
        except Exception as error:
            raise ValueError(f"cannot decode image {path}: {error}") from error
        return self.transform(tensor), label


class StreamingBatches:
    """A DataLoader over image files, reshuffled per epoch from (seed, epoch)."""

    def __init__(self, dataset: FolderImages, batch_size: int, seed: int, workers: int, pin_memory: bool) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.workers, self.pin_memory, self.epoch = workers, pin_memory, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=True, generator=generator,
            num_workers=self.workers, pin_memory=self.pin_memory, persistent_workers=False,
        )
        try:
            yield from loader
        except ValueError as error:
            # A DataLoader worker's error arrives with its whole traceback in the message: keep
            # the last line, which names the file ("cannot decode image ...").
            lines = [line for line in str(error).splitlines() if line.strip()]
            raise ValueError(lines[-1].removeprefix("ValueError: ") if lines else str(error)) from None


def folder_classes(config: FolderData, root: Path) -> tuple[tuple[str, ...], dict[str, int], LabelMapping]:
    """(model class names, {folder name: label}, mapping to the 16 categories) for a folder layout."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"no class folders in {root}")
    space = config.label_space
    if space == "cifar10":
        return tuple(folders), {f: i for i, f in enumerate(folders)}, cifar10_mapping(folders)
    if space == "categories":
        unknown = [f for f in folders if f not in CATEGORIES]
        if unknown:
            raise ValueError(f"class folders {unknown} in {root} are not cue-conflict categories: {', '.join(CATEGORIES)}")
        return tuple(folders), {f: i for i, f in enumerate(folders)}, native_mapping(folders)
    if space == "imagenet16":
        # WordNet-id folders reduced to the 16 categories; other ImageNet classes are left out.
        wnid_to_category = {w: c for c, v in imagenet16_table().items() for w in v["wnids"]}
        labels = {f: CATEGORIES.index(wnid_to_category[f]) for f in folders if f in wnid_to_category}
        if not labels:
            raise ValueError(f"no folder in {root} is a WordNet id of the 16 categories (e.g. n02690373)")
        return CATEGORIES, labels, native_mapping(CATEGORIES)
    mapping = mapping_from_names(folders, space)
    return tuple(folders), {f: i for i, f in enumerate(folders)}, mapping


def _samples(root: Path, labels: dict[str, int], max_per_class: int | None) -> list[tuple[Path, int]]:
    samples = []
    for folder, label in sorted(labels.items()):
        try:
            files = sorted(p for p in (root / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as error:
            raise ValueError(f"cannot read class folder {root / folder}: {error.strerror}") from None
        if not files:
            # Its class would be a head output no image ever trains or tests.
            raise ValueError(f"class folder {root / folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                             "remove it or fill it")
        samples += [(path, label) for path in files[:max_per_class]]
    if not samples:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return samples


@functools.lru_cache(maxsize=4)
def decode_folder(root: Path, labels: tuple[tuple[str, int], ...], size: int, max_per_class: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a class-folder tree as uint8 (N, 3, size, size) and labels, once per process."""
    samples = _samples(root, dict(labels), max_per_class)
    images = np.stack([_decode(path, size) for path, _ in samples])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor([l for _, l in samples])


def build_data(data: SyntheticData | FolderData, batch_size: int, seed: int, augment: bool, pin_memory: bool = False) -> TrialData:
    """Load or generate the trial's data; bad paths, classes or images fail here, before training."""
    if isinstance(data, SyntheticData):
        bench = _synthetic(data)
        return TrialData(
            train=InMemoryBatches(bench.train_images, bench.train_labels, batch_size, seed, augment),
            test_images=bench.test_images, test_labels=bench.test_labels, stimuli=bench.conflict,
            holdout=bench.holdout, mapping=native_mapping(bench.class_names), class_names=bench.class_names,
            image_size=data.image_size, train_size=len(bench.train_labels),
        )
    stimuli, holdout = load_stimuli(data.stimuli_dir), None
    if data.split == "half":
        stimuli, holdout = split_stimuli(stimuli)
    class_names, labels, mapping = folder_classes(data, data.train_dir)
    test_classes = folder_classes(data, data.test_dir)[1]
    missing = sorted(set(labels) - set(test_classes))
    if missing:
        raise ValueError(f"test folder {data.test_dir} lacks classes {missing} of {data.train_dir}")
    key = tuple(sorted(labels.items()))
    test_images, test_labels = decode_folder(data.test_dir.resolve(), key, data.image_size, data.max_per_class)
    train_samples = _samples(data.train_dir, labels, data.max_per_class)
    if len(train_samples) <= data.in_memory_limit:
        images, targets = decode_folder(data.train_dir.resolve(), key, data.image_size, data.max_per_class)
        train: Batches = InMemoryBatches(images, targets, batch_size, seed, augment)
    else:
        train = StreamingBatches(FolderImages(train_samples, data.image_size, augment), batch_size, seed, data.workers, pin_memory)
    return TrialData(train, test_images, test_labels, stimuli, holdout, mapping, class_names, data.image_size, len(train_samples))


def fingerprint(data: SyntheticData | FolderData) -> dict[str, str]:
    """sha256 digests of what a trial trains, tests and is scored on, to tell later if it changed.

    The synthetic benchmark is a pure function of its settings, so they are its fingerprint;
    for folders it is the listing (relative path and size of every file).
    """
    if isinstance(data, SyntheticData):
        digest = _sha256(json.dumps(data.model_dump(mode="json"), sort_keys=True))
        return {"train": digest, "test": digest, "stimuli": digest}
    return {"train": _listing_digest(data.train_dir), "test": _listing_digest(data.test_dir),
            "stimuli": _listing_digest(data.stimuli_dir)}


def _listing_digest(root: Path) -> str:
    if not root.is_dir():
        raise FileNotFoundError(f"data directory not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return _sha256("\n".join(f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}" for p in files))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=2)
def _synthetic(data: SyntheticData):
    return make_benchmark(
        num_classes=data.num_classes, image_size=data.image_size, train_size=data.train_size,
        test_size=data.test_size, conflicts_per_pair=data.conflicts_per_pair,
        texture_strength=data.texture_strength, shape_contrast=data.shape_contrast, seed=data.seed,
        report_set=data.split == "half",
    )
