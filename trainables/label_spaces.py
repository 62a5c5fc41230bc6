"""How a model's label space maps onto the 16 cue-conflict categories.

A model's decision on a stimulus is the category with the highest MEAN softmax probability over
its member classes, among the categories that model can name. One interface, `LabelMapping`,
covers ImageNet-1k (207 member classes), CIFAR-10 (7 categories), a native 16-way head, the
synthetic benchmark's own classes, and any {category: [class names]} table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import torch

CATEGORIES = (
    "airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat",
    "chair", "clock", "dog", "elephant", "keyboard", "knife", "oven", "truck",
)  # fmt: skip

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# The 7 CIFAR-10 classes that name one of the 16 categories.
CIFAR10_TO_16 = {
    "airplane": ["airplane"], "car": ["automobile"], "bird": ["bird"], "cat": ["cat"],
    "dog": ["dog"], "boat": ["ship"], "truck": ["truck"],
}  # fmt: skip


@dataclass(frozen=True)
class LabelMapping:
    """Categories a model can name, each with the indices of its member output classes."""

    categories: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]
    num_classes: int

    def __post_init__(self) -> None:
        if len(self.categories) != len(self.members) or not self.categories:
            raise ValueError("a label mapping needs one non-empty member list per category")
        for category, indices in zip(self.categories, self.members, strict=False):
            if not indices or any(not 0 <= i < self.num_classes for i in indices):
                raise ValueError(
                    f"category {category!r} has member indices {list(indices)} outside 0..{self.num_classes - 1}"
                )

    def category_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, num_classes) logits -> (N, len(categories)) mean member softmax probability."""
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} logits per image, got {logits.shape[-1]}")
        probabilities = logits.float().softmax(dim=-1)
        return torch.stack([probabilities[:, list(m)].mean(dim=-1) for m in self.members], dim=-1)

    def decide(self, logits: torch.Tensor) -> list[str]:
        """The category each image is assigned: argmax of `category_scores`."""
        best = self.category_scores(logits).argmax(dim=-1)
        return [self.categories[i] for i in best.tolist()]


def mapping_from_names(class_names: Sequence[str], categories: Mapping[str, Sequence[str]]) -> LabelMapping:
    """Mapping from a {category: [class names]} table over a model's ordered class names."""
    index = {name: i for i, name in enumerate(class_names)}
    names, members = [], []
    for category, member_names in categories.items():
        unknown = [n for n in member_names if n not in index]
        if unknown:
            raise ValueError(
                f"category {category!r} names unknown classes {unknown}; model classes: {', '.join(class_names)}"
            )
        names.append(category)
        members.append(tuple(index[n] for n in member_names))
    return LabelMapping(tuple(names), tuple(members), len(class_names))


def native_mapping(class_names: Sequence[str]) -> LabelMapping:
    """Each output class is its own category (a 16-way head, or the synthetic benchmark)."""
    return mapping_from_names(class_names, {name: [name] for name in class_names})


def imagenet16_table() -> dict[str, dict[str, list]]:
    """The packaged 16-category table: {category: {"imagenet_indices": [...], "wnids": [...]}}."""
    text = resources.files("trainables").joinpath("data/imagenet16.json").read_text()
    return json.loads(text)


# torchvision's 1000-way ImageNet head, by output index (the 16-category table needs only indices).
IMAGENET_OUTPUTS = tuple(f"imagenet-{i}" for i in range(1000))


def imagenet_mapping() -> LabelMapping:
    """ImageNet-1k: 207 member classes over the 16 categories."""
    table = imagenet16_table()
    return LabelMapping(tuple(table), tuple(tuple(v["imagenet_indices"]) for v in table.values()), 1000)


def cifar10_mapping(class_names: Sequence[str] = CIFAR10_CLASSES) -> LabelMapping:
    """CIFAR-10: the 7 classes that name one of the 16 categories."""
    return mapping_from_names(class_names, CIFAR10_TO_16)
