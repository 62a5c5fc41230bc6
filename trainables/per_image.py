"""What one evaluation decided image by image, compactly: what a bootstrap over images needs.

A trial logs it at its last epoch as `per_image.json` beside the model-vs-human CSVs. Test images
are one character each, `1` correct or `0` wrong; conflict stimuli one each too: `s` the shape
decided, `t` the texture, `o` another category, `-` not scored (shape and texture agree, or the
model cannot name one of them). The order is the data's, the same in every trial of a search
(the data seed is fixed), so images pair across configurations.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

PER_IMAGE = "per_image.json"
TEST = "test_correct"  # key of the test set's string; the stimuli's keys are `stimuli<metric suffix>`
SHAPE, TEXTURE, OTHER, UNSCORED = "s", "t", "o", "-"


def stimuli_key(suffix: str) -> str:
    """`stimuli` (the selection set) or `stimuli_holdout` (the report set)."""
    return f"stimuli{suffix}"


def decision_codes(
    decisions: Sequence[str], shapes: Sequence[str], textures: Sequence[str], nameable: Iterable[str]
) -> str:
    """One character per stimulus, scored as `cue_conflict.score_decisions` scores it."""
    nameable = set(nameable)
    codes = []
    for decision, shape, texture in zip(decisions, shapes, textures, strict=True):
        if shape == texture or shape not in nameable or texture not in nameable:
            codes.append(UNSCORED)
        else:
            codes.append(SHAPE if decision == shape else TEXTURE if decision == texture else OTHER)
    return "".join(codes)


def encode(test_correct: Sequence[bool], stimuli: dict[str, str]) -> str:
    """The JSON text of `per_image.json`: the test set's correctness and each stimuli set's codes by suffix."""
    return json.dumps(
        {TEST: "".join("1" if c else "0" for c in test_correct), **{stimuli_key(s): v for s, v in stimuli.items()}}
    )


@dataclass(frozen=True)
class StimuliOutcomes:
    """Indicator vectors over one stimuli set: shape decided, texture decided, scored at all."""

    shape: np.ndarray
    texture: np.ndarray
    scored: np.ndarray


@dataclass(frozen=True)
class PerImage:
    """One trial's per-image outcomes, decoded."""

    test_correct: np.ndarray  # float 0/1 per test image
    stimuli: dict[str, StimuliOutcomes]  # by metric suffix: "" and "_holdout"


def decode(text: str) -> PerImage:
    """`per_image.json`'s text as vectors; ValueError if it is not one."""
    raw = json.loads(text)
    if not isinstance(raw, dict) or not isinstance(raw.get(TEST), str):
        raise ValueError(f"not a {PER_IMAGE}: expected an object with a {TEST!r} string")
    sets = {}
    for key, codes in raw.items():
        if key == TEST or not key.startswith("stimuli"):
            continue
        chars = np.frombuffer(codes.encode(), dtype="S1")
        sets[key.removeprefix("stimuli")] = StimuliOutcomes(
            shape=(chars == b"s").astype(float),
            texture=(chars == b"t").astype(float),
            scored=(chars != b"-").astype(float),
        )
    correct = np.frombuffer(raw[TEST].encode(), dtype="S1") == b"1"
    return PerImage(correct.astype(float), sets)
