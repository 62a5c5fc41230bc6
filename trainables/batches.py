"""Batches of uint8 images for training: decoded into memory once, or streamed from disk.

Small datasets (the synthetic benchmark, CIFAR-10) are decoded once per process into uint8
tensors and augmented in batches on the fly; large ones (an ImageNet folder) stream through a
DataLoader. Either way an epoch's order is a function of (seed, epoch), so a resumed trial sees
the batches an uninterrupted one would; the training loop normalises on the device
(`trainables.models.preprocess`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class Batches(Protocol):
    """An epoch's worth of (uint8 images, labels) batches; `set_epoch` fixes its shuffle."""

    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __len__(self) -> int: ...


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
        with Image.open(path) as opened:
            image = opened.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
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
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )
        try:
            yield from loader
        except ValueError as error:
            # A DataLoader worker's error arrives with its whole traceback in the message: keep
            # the last line, which names the file ("cannot decode image ...").
            lines = [line for line in str(error).splitlines() if line.strip()]
            raise ValueError(lines[-1].removeprefix("ValueError: ") if lines else str(error)) from None


def list_samples(root: Path, labels: dict[str, int], max_per_class: int | None) -> list[tuple[Path, int]]:
    samples = []
    for folder, label in sorted(labels.items()):
        try:
            files = sorted(p for p in (root / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as error:
            raise ValueError(f"cannot read class folder {root / folder}: {error.strerror}") from None
        if not files:
            # Its class would be a head output no image ever trains or tests.
            raise ValueError(
                f"class folder {root / folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "remove it or fill it"
            )
        samples += [(path, label) for path in files[:max_per_class]]
    if not samples:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return samples


@functools.lru_cache(maxsize=4)
def decode_folder(
    root: Path, labels: tuple[tuple[str, int], ...], size: int, max_per_class: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a class-folder tree as uint8 (N, 3, size, size) and labels, once per process."""
    samples = list_samples(root, dict(labels), max_per_class)
    images = np.stack([_decode(path, size) for path, _ in samples])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor([label for _, label in samples])
