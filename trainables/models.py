"""torchvision's ResNet-18 with Top-K sparsity inserted at named places.

Top-K modules hold no parameters and are attached through forward hooks, so the model's
state_dict keys are exactly torchvision's: a torchvision checkpoint loads strictly into a sparse
model (inference-time Top-K on pretrained weights, as the authors did).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import torch
from torch import nn
from torchvision.models import resnet18

from trainables.topk import TopK, check_fraction, kept_per_channel

# Order of the forward pass: stem, layer1.0, layer1.1, layer1, layer2.0, ...
PLACEMENTS = ("stem",) + tuple(
    name for stage in range(1, 5) for name in (f"layer{stage}.0", f"layer{stage}.1", f"layer{stage}")
)
Stem = Literal["imagenet", "cifar"]
STEMS = ("imagenet", "cifar")


def check_placements(topk: Mapping[str, float]) -> dict[str, float]:
    """Validate a {placement: fraction} mapping; raise ValueError naming what is wrong."""
    checked = {}
    for name, fraction in topk.items():
        if name not in PLACEMENTS:
            raise ValueError(f"unknown Top-K placement {name!r}; valid: {', '.join(PLACEMENTS)}")
        checked[name] = check_fraction(fraction)
    for stage in range(1, 5):
        # A stage's output is its last block's output: the same tensor under two names.
        if f"layer{stage}" in checked and f"layer{stage}.1" in checked:
            raise ValueError(
                f"Top-K placements 'layer{stage}' and 'layer{stage}.1' are the same tensor; give one"
            )
    return checked


def _placement_module(model: nn.Module, name: str) -> nn.Module:
    # The stem ends at maxpool (an Identity for the cifar stem); stages and blocks are submodules.
    return model.maxpool if name == "stem" else model.get_submodule(name)


def _attach(module: nn.Module, topk: TopK) -> None:
    module.register_forward_hook(lambda _module, _inputs, output: topk(output))


def build_model(
    num_classes: int = 1000,
    stem: Stem = "imagenet",
    topk: Mapping[str, float] | None = None,
) -> nn.Module:
    """ResNet-18 with the given stem and Top-K fractions at the named placements."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    placements = check_placements(topk or {})

    model = resnet18(weights=None, num_classes=num_classes)
    if stem == "cifar":
        # The authors' stem: 3x3 stride-1 conv, no max-pool (same key, conv1.weight, new shape).
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()

    # ModuleDict keys cannot hold dots; the dict makes the Top-K layers show in print(model).
    model.topk = nn.ModuleDict()
    for name, fraction in placements.items():
        if fraction == 1.0:
            continue
        module = TopK(fraction)
        model.topk[name.replace(".", "_")] = module
        _attach(_placement_module(model, name), module)
    return model


@dataclass(frozen=True)
class PlacementInfo:
    """Feature-map size at one placement and the positions Top-K keeps there per channel."""

    name: str
    channels: int
    height: int
    width: int
    fraction: float
    kept: int


def describe_placements(
    input_size: int, stem: Stem = "imagenet", topk: Mapping[str, float] | None = None
) -> list[PlacementInfo]:
    """For a square input of `input_size` px: every placement's feature-map size and kept count."""
    placements = check_placements(topk or {})
    model = build_model(num_classes=2, stem=stem).eval()
    shapes: dict[str, torch.Size] = {}
    for name in PLACEMENTS:
        _placement_module(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, out.shape)
        )
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    rows = []
    for name in PLACEMENTS:
        _, channels, height, width = shapes[name]
        fraction = placements.get(name, 1.0)
        kept = height * width if fraction == 1.0 else kept_per_channel(fraction, height, width)
        rows.append(PlacementInfo(name, channels, height, width, fraction, min(kept, height * width)))
    return rows
