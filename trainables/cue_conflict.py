"""Shape bias on cue-conflict stimuli (Geirhos et al., ICLR 2019).

Stimuli: a directory with one folder per shape class holding `<shape><i>-<texture><j>.png`.
Only conflict images count (shape class != texture class). shape bias = shape decisions /
(shape + texture decisions); shape and texture accuracy are fractions of the scored conflict
images, and the cue-decision rate is their sum: the share of scored images whose decision names
either cue. Shape bias alone ignores that share, so a model near chance can score shape bias near
0.5; the rate says whether the model still recognises anything. Images whose shape or texture
category the model cannot name are excluded and counted.
Per-image decisions read and write as model-vs-human CSV.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainables.files import write_text_atomically
from trainables.label_spaces import CATEGORIES

CSV_COLUMNS = ("subj", "session", "trial", "rt", "object_response", "category", "condition", "imagename")
_STIMULUS_NAME = re.compile(r"^(?P<shape>[a-z]+)\d*-(?P<texture>[a-z]+)\d*\.png$")


@dataclass(frozen=True)
class Stimuli:
    """Decoded stimuli: uint8 images (N, 3, H, W) with shape and texture class per image."""

    images: torch.Tensor
    shapes: tuple[str, ...]
    textures: tuple[str, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: Sequence[int]) -> Stimuli:
        """The stimuli at `indices`, in that order."""
        return Stimuli(
            images=self.images[list(indices)],
            shapes=tuple(self.shapes[i] for i in indices),
            textures=tuple(self.textures[i] for i in indices),
            names=tuple(self.names[i] for i in indices),
        )


def split_stimuli(stimuli: Stimuli) -> tuple[Stimuli, Stimuli]:
    """(selection half, report half), stratified by shape and texture, the same on every machine.

    Within each (shape, texture) group, images sorted by name go alternately to either half; one
    counter runs across the groups (in sorted order), so a group of odd size gives its extra
    image to the selection half and the next odd group gives it to the report half.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(stimuli.shapes, stimuli.textures, strict=True)):
        groups.setdefault(key, []).append(i)
    halves: tuple[list[int], list[int]] = ([], [])
    turn = 0
    for key in sorted(groups):
        for i in sorted(groups[key], key=lambda i: stimuli.names[i]):
            halves[turn % 2].append(i)
            turn += 1
    return stimuli.subset(sorted(halves[0])), stimuli.subset(sorted(halves[1]))


@dataclass(frozen=True)
class ShapeBiasResult:
    """Counts and fractions over the scored conflict images."""

    shape_bias: float
    shape_accuracy: float
    texture_accuracy: float
    # (shape + texture decisions) / scored: the validity of the shape bias beside it.
    cue_decision_rate: float
    shape_decisions: int
    texture_decisions: int
    other_decisions: int
    excluded: int

    @property
    def scored(self) -> int:
        return self.shape_decisions + self.texture_decisions + self.other_decisions


def texture_of(image_name: str) -> str:
    """Texture class from a stimulus file name: `cat1-airplane1.png` (or a CSV's `..._cat1-airplane1.png`)."""
    match = re.search(r"-([a-z]+)\d*\.png$", image_name)
    if match is None:
        raise ValueError(f"cannot read a texture class from image name {image_name!r}")
    return match.group(1)


def _decode(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as error:  # PIL raises several unrelated types for broken files
        raise ValueError(f"cannot decode stimulus image {path}: {error}") from error


@functools.lru_cache(maxsize=4)
def _load_stimuli_cached(root: Path) -> Stimuli:
    if not root.is_dir():
        raise FileNotFoundError(f"cue-conflict directory not found: {root}")
    files = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() or p.is_symlink()):
        # Path.glob skips a folder it cannot list: then shape bias would quietly be scored on
        # fewer stimuli, so an unreadable or empty shape folder is an error.
        try:
            pngs = sorted(p for p in folder.iterdir() if p.suffix == ".png")
        except OSError as error:
            raise ValueError(f"cannot read stimuli folder {folder}: {error.strerror}") from None
        if not pngs:
            raise ValueError(f"stimuli folder {folder} holds no .png stimuli")
        for path in pngs:
            match = _STIMULUS_NAME.match(path.name)
            if match is None or match["shape"] != folder.name:
                raise ValueError(f"{path} is not a cue-conflict stimulus: expected '{folder.name}<i>-<texture><j>.png'")
            files.append((path, match["shape"], match["texture"]))
    if not files:
        raise ValueError(
            f"no stimuli in {root}: expected one folder per shape class holding '<shape><i>-<texture><j>.png' files"
        )
    # PIL releases the GIL while decoding, so threads decode in parallel.
    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = list(pool.map(_decode, [path for path, _, _ in files]))
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"stimuli in {root} differ in size: {sorted(sizes)}")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return Stimuli(
        images=images,
        shapes=tuple(shape for _, shape, _ in files),
        textures=tuple(texture for _, _, texture in files),
        names=tuple(path.name for path, _, _ in files),
    )


def clear_stimuli_cache() -> None:
    """Forget every stimuli folder this process decoded (see `trainables.data.clear_caches`)."""
    _load_stimuli_cached.cache_clear()


def load_stimuli(root: str | Path) -> Stimuli:
    """Decode a cue-conflict directory once per process (later calls return the cached tensors)."""
    return _load_stimuli_cached(Path(root).expanduser().resolve())


def score_decisions(
    decisions: Sequence[str],
    shapes: Sequence[str],
    textures: Sequence[str],
    nameable: Iterable[str],
) -> ShapeBiasResult:
    """Shape bias of per-image decisions; `nameable` is the set of categories the model can name."""
    nameable = set(nameable)
    shape_hits = texture_hits = other = excluded = 0
    for decision, shape, texture in zip(decisions, shapes, textures, strict=True):
        if shape == texture:
            continue
        if shape not in nameable or texture not in nameable:
            excluded += 1
        elif decision == shape:
            shape_hits += 1
        elif decision == texture:
            texture_hits += 1
        else:
            other += 1
    scored = shape_hits + texture_hits + other
    cue_decisions = shape_hits + texture_hits
    return ShapeBiasResult(
        shape_bias=shape_hits / cue_decisions if cue_decisions else math.nan,
        shape_accuracy=shape_hits / scored if scored else math.nan,
        texture_accuracy=texture_hits / scored if scored else math.nan,
        cue_decision_rate=cue_decisions / scored if scored else math.nan,
        shape_decisions=shape_hits,
        texture_decisions=texture_hits,
        other_decisions=other,
        excluded=excluded,
    )


def shape_bias_per_category(
    decisions: Sequence[str],
    shapes: Sequence[str],
    textures: Sequence[str],
    nameable: Iterable[str],
) -> dict[str, float]:
    """Shape bias over the conflict images of each shape category the model can name (NaN-free)."""
    nameable = set(nameable)
    biases = {}
    for category in sorted({shape for shape in shapes if shape in nameable}):
        mine = [i for i, shape in enumerate(shapes) if shape == category]
        result = score_decisions(
            [decisions[i] for i in mine], [shapes[i] for i in mine], [textures[i] for i in mine], nameable
        )
        if math.isfinite(result.shape_bias):  # no shape or texture decision at all: nothing to report
            biases[category] = result.shape_bias
    return biases


def decisions_csv(stimuli: Stimuli, decisions: Sequence[str], subject: str) -> str:
    """Per-image decisions as the text of a model-vs-human CSV."""
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(CSV_COLUMNS)
    for trial, (decision, shape, name) in enumerate(zip(decisions, stimuli.shapes, stimuli.names, strict=True), 1):
        writer.writerow([subject, 1, trial, "NaN", decision, shape, 0, name])
    return handle.getvalue()


def write_decisions_csv(path: str | Path, stimuli: Stimuli, decisions: Sequence[str], subject: str) -> None:
    """Per-image decisions in the model-vs-human CSV format."""
    write_text_atomically(Path(path), decisions_csv(stimuli, decisions, subject))


def read_decisions_csv(path: str | Path) -> tuple[list[str], list[str], list[str]]:
    """(decisions, shapes, textures) from a model-vs-human CSV."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"decisions CSV not found: {path}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks model-vs-human columns {sorted(missing)}")
        rows = list(reader)
    return (
        [row["object_response"] for row in rows],
        [row["category"] for row in rows],
        [texture_of(row["imagename"]) for row in rows],
    )


def shape_bias_from_csv(path: str | Path, nameable: Iterable[str] | None = None) -> ShapeBiasResult:
    """Shape bias and cue-decision rate of a model-vs-human CSV's decisions (all 16 categories nameable by default)."""
    decisions, shapes, textures = read_decisions_csv(path)
    return score_decisions(decisions, shapes, textures, CATEGORIES if nameable is None else nameable)
