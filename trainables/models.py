"""torchvision CNNs (ResNet-18/50, VGG-16, AlexNet) with Top-K sparsity at named modules, and their input.

A placement is the name of a module of the torchvision model (`layer2`, `layer2.1`,
`features.4`, ...; `stem` is the ResNet stem, ending at its max-pool); Top-K applies to that
module's output. Top-K modules hold no parameters and are attached through forward hooks, so the
model's state_dict keys are exactly torchvision's: a torchvision checkpoint loads strictly into a
sparse model (inference-time Top-K on pretrained weights, as the authors did). `preprocess` is
what every model here takes as input: uint8 images resized and ImageNet-normalised on the device.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import alexnet, resnet18, resnet50, vgg16

from trainables.topk import TopK, check_fraction, kept_per_channel

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "alexnet": alexnet,
}
Arch = Literal["resnet18", "resnet50", "vgg16", "alexnet"]
# The file names torchvision gives its ImageNet weights (in ~/.cache/torch/hub/checkpoints/).
WEIGHT_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "vgg16": "vgg16-397923af.pth",
    "alexnet": "alexnet-owt-7be5be79.pth",
}
# Named placement sets; `after_every_pool` is where the authors put Top-K (BRIEF section 8).
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "after_every_pool": {
        "vgg16": ("features.4", "features.9", "features.16", "features.23", "features.30"),
        "alexnet": ("features.2", "features.5", "features.7", "features.9", "features.12"),
        "resnet18": ("layer1", "layer2", "layer3", "layer4"),
        "resnet50": ("layer1", "layer2", "layer3", "layer4"),
    },
}
# Every model here sees ImageNet-normalised inputs, as torchvision's pretrained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Stem = Literal["imagenet", "cifar"]
STEMS = ("imagenet", "cifar")
RESNETS = ("resnet18", "resnet50")


def _check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")


def _skeleton(arch: str, stem: str, num_classes: int = 1000) -> nn.Module:
    """The torchvision model (with the cifar stem if asked), its weights random and uninitialised."""
    model = ARCHITECTURES[arch](weights=None, num_classes=num_classes)
    if stem == "cifar":
        # The authors' stem: 3x3 stride-1 conv, no max-pool (same key, conv1.weight, new shape).
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


@cache
def _layout(arch: str) -> nn.Module:
    """`arch`'s module tree on the meta device, built once: names and nesting, no memory. Read only."""
    _check_arch(arch)
    with torch.device("meta"):
        return _skeleton(arch, "imagenet")


@cache
def module_names(arch: str = "resnet18") -> tuple[str, ...]:
    """Every placement name `arch` accepts: `stem` for ResNets, then its modules in definition order."""
    names = tuple(name for name, _ in _layout(arch).named_modules() if name)
    return (("stem",) if arch in RESNETS else ()) + names


def placements(arch: str = "resnet18") -> tuple[str, ...]:
    """The placements worth listing: each ResNet block and stage, or each module of `features`."""
    _check_arch(arch)
    if arch in RESNETS:
        stages = [n for n in module_names(arch) if n.startswith("layer") and n.count(".") <= 1]
        return ("stem",) + tuple(sorted(stages, key=lambda n: (n[:6], "." not in n, n)))
    return tuple(n for n in module_names(arch) if n.startswith("features.") and n.count(".") == 1)


def expand_preset(names: list[str], arch: str = "resnet18") -> list[str]:
    """A placement set with any preset (`after_every_pool`) replaced by the placements it names."""
    expanded: list[str] = []
    for name in names:
        expanded += PRESETS[name][arch] if name in PRESETS else [name]
    return expanded


def _module(model: nn.Module, name: str) -> nn.Module:
    # The ResNet stem ends at maxpool (an Identity for the cifar stem).
    return model.get_submodule("maxpool" if name == "stem" else name)


def _output_of(model: nn.Module, name: str) -> str:
    """The innermost module whose output is `name`'s output (a Sequential returns its last child's)."""
    module = _module(model, name)
    name = "maxpool" if name == "stem" else name
    while isinstance(module, nn.Sequential) and len(module):
        last = str(len(module) - 1)
        module, name = module[len(module) - 1], f"{name}.{last}"
    return name


def check_placements(topk: Mapping[str, float], arch: str = "resnet18") -> dict[str, float]:
    """Validate a {placement: fraction} mapping for `arch`; raise ValueError naming what is wrong."""
    _check_arch(arch)
    valid = module_names(arch)
    checked = {}
    for name, fraction in topk.items():
        if name not in valid:
            if len(valid) <= 40:
                hint = f"valid: {', '.join(valid)}"
            else:  # too many to list: the nearest names, then the main ones
                near = difflib.get_close_matches(name, valid, n=6, cutoff=0.5)
                hint = (
                    f"valid: any module of torchvision's {arch}"
                    + (f"; nearest: {', '.join(near)}" if near else "")
                    + f"; the main ones: {', '.join(placements(arch))}"
                )
            raise ValueError(f"unknown Top-K placement {name!r} for {arch}; {hint}")
        checked[name] = check_fraction(fraction)
    seen: dict[str, str] = {}
    for name in checked:
        # A stage's output is its last block's output: the same tensor under two names.
        tensor = _output_of(_layout(arch), name)
        if tensor in seen:
            raise ValueError(f"Top-K placements {seen[tensor]!r} and {name!r} are the same tensor; give one")
        seen[tensor] = name
    return checked


def _attach(module: nn.Module, topk: TopK) -> None:
    module.register_forward_hook(lambda _module, _inputs, output: topk(output))


def build_model(
    num_classes: int = 1000,
    stem: Stem = "imagenet",
    topk: Mapping[str, float] | None = None,
    *,
    arch: Arch = "resnet18",
    weights: str | Path | None = None,
) -> nn.Module:
    """A torchvision `arch` with Top-K fractions at the named placements, from `weights` if given."""
    _check_arch(arch)
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
    if stem == "cifar" and arch not in RESNETS:
        raise ValueError(f"the cifar stem is a ResNet stem; {arch} takes stem: imagenet")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    checked = check_placements(topk or {}, arch)

    model = _skeleton(arch, stem, num_classes)
    if weights is not None:
        load_weights(model, weights, arch)
    # ModuleDict keys cannot hold dots; the dict makes the Top-K layers show in print(model).
    model.topk = nn.ModuleDict()
    for name, fraction in checked.items():
        if fraction == 1.0:
            continue
        module = TopK(fraction)
        model.topk[name.replace(".", "_")] = module
        _attach(_module(model, name), module)
    return model


def preprocess(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, resized to the model's training size, ImageNet-normalised."""
    x = images.float().div_(255)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_weights(model: nn.Module, path: str | Path, arch: str) -> None:
    """Load a torchvision state dict from a local file, strictly; never download."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} not found: expected torchvision's {arch} ImageNet weights (a state dict such "
            f"as {WEIGHT_FILES[arch]}, in ~/.cache/torch/hub/checkpoints/ on a machine that downloaded them)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"weights file {path} is not a readable state dict ({type(error).__name__}: {error})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a trial checkpoint also holds its weights under "model"
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    missing, unexpected = sorted(set(model.state_dict()) - set(state)), sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"weights file {path} does not fit {arch}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # right names, wrong shapes (another number of classes, say)
        raise ValueError(f"weights file {path} does not fit {arch}: {' '.join(str(error).split())[:500]}") from None


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
    input_size: int,
    stem: Stem = "imagenet",
    topk: Mapping[str, float] | None = None,
    arch: Arch = "resnet18",
) -> list[PlacementInfo]:
    """For a square input of `input_size` px: each listed placement's feature-map size and kept count."""
    checked = check_placements(topk or {}, arch)
    listed = placements(arch)
    names = tuple(listed) + tuple(n for n in checked if n not in listed)
    rows = []
    for name, shape in _output_shapes(input_size, stem, arch, names).items():
        if len(shape) != 4:
            continue  # no spatial map here (the classifier): nothing for Top-K to choose among
        _, channels, height, width = shape
        fraction = checked.get(name, 1.0)
        kept = height * width if fraction == 1.0 else kept_per_channel(fraction, height, width)
        rows.append(PlacementInfo(name, channels, height, width, fraction, min(kept, height * width)))
    return rows


def feature_map_sizes(
    names: tuple[str, ...], input_size: int, stem: Stem = "imagenet", arch: Arch = "resnet18"
) -> dict[str, tuple[int, int]]:
    """(height, width) of each named placement's output for a square input of `input_size` px.

    ValueError for a placement whose output has no spatial map (a classifier layer): Top-K has
    nothing to rank there.
    """
    for name in names:  # one by one: names from different placement sets may be one tensor (layer2, layer2.1)
        check_placements({name: 1.0}, arch)
    sizes = {}
    for name, shape in _output_shapes(input_size, stem, arch, tuple(names)).items():
        if len(shape) != 4:
            raise ValueError(f"Top-K placement {name!r} of {arch} outputs no feature map (shape {list(shape)[1:]})")
        sizes[name] = (int(shape[2]), int(shape[3]))
    return sizes


@cache
def _output_shapes(input_size: int, stem: str, arch: str, names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Each named module's output shape for one (1, 3, input_size, input_size) input, on the meta device."""
    with torch.device("meta"):  # shapes only
        model = _skeleton(arch, stem, 2).eval()
    shapes: dict[str, tuple[int, ...]] = {}
    for name in names:
        _module(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape))
        )
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size, device="meta"))
    return {name: shapes[name] for name in names}


PLACEMENTS = placements("resnet18")  # today's names, in the order of the forward pass
