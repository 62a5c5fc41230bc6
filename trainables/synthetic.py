"""The embedded shape-vs-texture benchmark: generated in memory from a seed.

Each class is a silhouette (circle, square, ...) drawn at random position, scale and rotation,
filled with that class's own texture family (stripes, checks, dots, ...) on a plain background.
Colours are drawn at random per image, so colour says nothing about the class. In the training
and test splits shape and texture agree, so either cue solves the task; the cue-conflict split
fills the silhouette of class i with the texture of class j != i, and is scored by the same
shape-bias code as the Geirhos stimuli.

Two calibration knobs, both in [0, 1]: `texture_strength` scales the texture's contrast inside
the silhouette, `shape_contrast` how far the silhouette's mean colour stands from the background
(at 0 the outline shows only as the edge of the textured region, as in the Geirhos stimuli).
Each texture family has its own orientation and local statistics, so it is recognisable from a
small patch (the cue a CNN picks up first); the shape needs the whole silhouette. The defaults
(1.0, 0.5) put a dense ResNet-18's shape bias inside (0, 1): see the README's calibration table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainables.cue_conflict import Stimuli

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "crescent", "bowtie")
TEXTURES = ("stripes", "checks", "dots", "blobs", "rings", "grid", "zigzag", "speckle")
_CHUNK = 1024  # images generated per vectorised step; bounds peak memory
# The report set's generator seed is this plus the data seed: far from the seed * 3 + i streams.
REPORT_SEED_OFFSET = 2**40
TINT = 0.5  # how far colours stray from grey; random per image, so never a class cue


def _shape_masks(kind: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-masks (float 0/1) of silhouette `kind[n]` at local coordinates (u, v) in [-1, 1]."""
    r = torch.sqrt(u * u + v * v)
    theta = torch.atan2(v, u)
    au, av = u.abs(), v.abs()
    triangle_sector = torch.remainder(theta, 2 * math.pi / 3) - math.pi / 3
    masks = torch.stack(
        [
            r < 0.85,
            torch.maximum(au, av) < 0.72,
            r * torch.cos(triangle_sector) < 0.5,
            r < 0.55 + 0.35 * torch.cos(5 * theta),
            ((au < 0.28) & (av < 0.9)) | ((av < 0.28) & (au < 0.9)),
            (r > 0.5) & (r < 0.9),
            (r < 0.85) & ((u - 0.4) ** 2 + v * v > 0.6**2),
            (au > av * 0.9) & (au < 0.85) & (av < 0.75),
        ]
    ).float()  # (num_shapes, N, H, W)
    return masks.gather(0, kind.view(1, -1, 1, 1).expand(1, *u.shape)).squeeze(0)


def _textures(kind: torch.Tensor, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Texture patterns in [0, 1] of family `kind[n]` at image coordinates (x, y) in [0, 1]."""
    n, h, w = x.shape
    # Each family has its own orientation (plus jitter): textures differ in local statistics,
    # as natural textures do, so a texture is recognisable from any small patch.
    angle = kind.view(n, 1, 1) * math.pi / len(TEXTURES) + 0.2 * (torch.rand(n, 1, 1, generator=g) - 0.5)
    frequency = 8.0 * (0.85 + 0.3 * torch.rand(n, 1, 1, generator=g))  # cycles per image
    phase = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    xr = (x * torch.cos(angle) + y * torch.sin(angle)) * frequency * 2 * math.pi + phase
    yr = (-x * torch.sin(angle) + y * torch.cos(angle)) * frequency * 2 * math.pi + phase
    cx, cy = torch.rand(2, n, 1, 1, generator=g)
    radial = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2) * frequency * 2 * math.pi
    blobs = F.interpolate(torch.rand(n, 1, 12, 12, generator=g), size=(h, w), mode="bicubic").squeeze(1)
    cell_x, cell_y = torch.remainder(xr, 2 * math.pi) - math.pi, torch.remainder(yr, 2 * math.pi) - math.pi
    patterns = torch.stack(
        [
            torch.sin(xr) > 0,
            (torch.sin(xr) * torch.sin(yr)) > 0,
            cell_x**2 + cell_y**2 < 1.6**2,
            blobs > 0.5,
            torch.sin(radial) > 0,
            (torch.cos(xr) > 0.7) | (torch.cos(yr) > 0.7),
            torch.sin(xr + 1.5 * torch.abs(torch.remainder(yr, 2 * math.pi) - math.pi)) > 0,
            torch.rand(n, h, w, generator=g) > 0.5,
        ]
    ).float()
    return patterns.gather(0, kind.view(1, -1, 1, 1).expand(1, n, h, w)).squeeze(0)


def render(
    shape_class: torch.Tensor,
    texture_class: torch.Tensor,
    image_size: int,
    generator: torch.Generator,
    texture_strength: float,
    shape_contrast: float,
) -> torch.Tensor:
    """uint8 images (N, 3, S, S): silhouette `shape_class` filled with texture `texture_class`."""
    n, s = len(shape_class), image_size
    g = generator
    # Silhouettes are drawn at 2x and averaged down, so their edges are anti-aliased.
    ss = 2 * s
    coords = (torch.arange(ss) + 0.5) / ss
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    scale = 0.28 + 0.14 * torch.rand(n, 1, 1, generator=g)  # silhouette radius / image size
    cx, cy = (scale + (1 - 2 * scale) * torch.rand(2, n, 1, 1, generator=g)).unbind(0)
    rotation = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    dx, dy = x - cx, y - cy
    u = (dx * torch.cos(rotation) + dy * torch.sin(rotation)) / scale
    v = (-dx * torch.sin(rotation) + dy * torch.cos(rotation)) / scale
    mask = F.avg_pool2d(_shape_masks(shape_class, u, v).unsqueeze(1), 2)  # (N, 1, S, S)

    coords = (torch.arange(s) + 0.5) / s
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    texture = _textures(texture_class, x.expand(n, s, s), y.expand(n, s, s), g).unsqueeze(1)

    # Colours are random per image, so they carry no class information. The silhouette's mean
    # colour is roughly the background's complement, so the outline always stands out; the
    # texture alternates around that mean along a random colour direction.
    background = torch.rand(n, 1, 1, 1, generator=g) + 0.15 * torch.randn(n, 3, 1, 1, generator=g)
    complement = (1 - background + 0.15 * torch.randn(n, 3, 1, 1, generator=g)).clamp(0.2, 0.8)
    mid = torch.lerp(background.clamp(0.2, 0.8), complement, shape_contrast)
    direction = torch.randn(n, 1, 1, 1, generator=g).sign() + TINT * torch.randn(n, 3, 1, 1, generator=g)
    direction = 0.3 * direction / direction.norm(dim=1, keepdim=True)
    fill = mid + texture_strength * (2 * texture - 1) * direction * math.sqrt(3)
    image = torch.lerp(background, fill, mask)
    image = image + 0.03 * torch.randn(image.shape, generator=g)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


@dataclass(frozen=True)
class SyntheticBenchmark:
    """Train and test splits (shape == texture) and the cue-conflict stimuli."""

    class_names: tuple[str, ...]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    conflict: Stimuli
    holdout: Stimuli | None = None  # a second conflict set from an independent seed (report_set=True)


def _render_chunked(
    shape_class: torch.Tensor,
    texture_class: torch.Tensor,
    image_size: int,
    g: torch.Generator,
    strength: float,
    contrast: float,
) -> torch.Tensor:
    return torch.cat(
        [
            render(shape_class[i : i + _CHUNK], texture_class[i : i + _CHUNK], image_size, g, strength, contrast)
            for i in range(0, len(shape_class), _CHUNK)
        ]
    )


def _agreeing_split(
    n: int, num_classes: int, image_size: int, g: torch.Generator, strength: float, contrast: float
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(n) % num_classes  # balanced classes
    labels = labels[torch.randperm(n, generator=g)]
    return _render_chunked(labels, labels, image_size, g, strength, contrast), labels


def _conflicts(
    names: tuple[str, ...], per_pair: int, image_size: int, g: torch.Generator, strength: float, contrast: float
) -> Stimuli:
    pairs = [(i, j) for i in range(len(names)) for j in range(len(names)) if i != j]
    shape_cls = torch.tensor([i for i, _ in pairs]).repeat_interleave(per_pair)
    texture_cls = torch.tensor([j for _, j in pairs]).repeat_interleave(per_pair)
    images = _render_chunked(shape_cls, texture_cls, image_size, g, strength, contrast)
    copy = torch.arange(len(shape_cls)) % per_pair
    return Stimuli(
        images=images,
        shapes=tuple(names[i] for i in shape_cls.tolist()),
        textures=tuple(names[j] for j in texture_cls.tolist()),
        names=tuple(
            f"{names[i]}{c + 1}-{names[j]}{c + 1}.png"
            for i, j, c in zip(shape_cls.tolist(), texture_cls.tolist(), copy.tolist(), strict=True)
        ),
    )


def make_benchmark(
    num_classes: int = 6,
    image_size: int = 32,
    train_size: int = 3000,
    test_size: int = 600,
    conflicts_per_pair: int = 20,
    texture_strength: float = 1.0,
    shape_contrast: float = 0.5,
    seed: int = 0,
    report_set: bool = False,
) -> SyntheticBenchmark:
    """Generate the benchmark deterministically from `seed` (same seed, same tensors)."""
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in 2..{len(SHAPES)}, got {num_classes}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 px, got {image_size}")
    if not 0.0 <= texture_strength <= 1.0:
        raise ValueError(f"texture_strength must be in [0, 1], got {texture_strength}")
    if not 0.0 <= shape_contrast <= 1.0:
        raise ValueError(f"shape_contrast must be in [0, 1], got {shape_contrast}")
    names = SHAPES[:num_classes]
    # One generator per split, so changing one split's size never changes the others.
    splits = [torch.Generator().manual_seed(seed * 3 + i) for i in range(3)]
    train_images, train_labels = _agreeing_split(
        train_size, num_classes, image_size, splits[0], texture_strength, shape_contrast
    )
    test_images, test_labels = _agreeing_split(
        test_size, num_classes, image_size, splits[1], texture_strength, shape_contrast
    )

    conflict = _conflicts(names, conflicts_per_pair, image_size, splits[2], texture_strength, shape_contrast)
    # The report set: the same design rendered from its own generator, so no image (and no noise
    # draw) is shared with the set a search selects on.
    holdout = None
    if report_set:
        report_generator = torch.Generator().manual_seed(REPORT_SEED_OFFSET + seed)
        holdout = _conflicts(names, conflicts_per_pair, image_size, report_generator, texture_strength, shape_contrast)
    return SyntheticBenchmark(names, train_images, train_labels, test_images, test_labels, conflict, holdout)


def save_example_grid(path: str, image_size: int = 32, seed: int = 0) -> None:
    """A PNG: per class, training examples (shape == texture) and cue-conflict examples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_classes, columns = 6, 4
    bench = make_benchmark(num_classes, image_size, train_size=60, test_size=10, conflicts_per_pair=1, seed=seed)
    figure, axes = plt.subplots(num_classes, 2 * columns, figsize=(2 * columns * 1.1, num_classes * 1.2))
    for row, name in enumerate(bench.class_names):
        train = bench.train_images[bench.train_labels == row][:columns]
        conflicts = [i for i, s in enumerate(bench.conflict.shapes) if s == name][:columns]
        cells = [(img, name) for img in train] + [
            (bench.conflict.images[i], f"{name}/{bench.conflict.textures[i]}") for i in conflicts
        ]
        for col, (image, title) in enumerate(cells):
            axes[row, col].imshow(image.permute(1, 2, 0).numpy())
            axes[row, col].set_title(title, fontsize=6)
        for axis in axes[row]:
            axis.axis("off")
    figure.suptitle(
        f"left: training images (shape = texture); right: cue conflict (shape/texture); "
        f"{image_size} px, default calibration",
        fontsize=8,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a picture grid of the synthetic benchmark.")
    parser.add_argument("output", help="PNG path")
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    save_example_grid(args.output, args.image_size)
