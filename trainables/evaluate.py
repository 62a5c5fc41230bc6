"""Evaluating a model: the one function that training, promotion and `run_search.py evaluate` share.

`evaluate(model, data, outputs)` scores top-1 accuracy on the held-out test images and shape bias
on the cue-conflict stimuli (the selection set, then the report set when the data has one), and
with `detailed=True` adds what a trial logs at its last epoch: shape bias per category and the
per-image decisions as model-vs-human CSV and as `per_image.json` (`trainables.per_image`, with each
test image's correctness), under the metric names of `trainables.metrics`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from trainables.cue_conflict import (
    ShapeBiasResult,
    Stimuli,
    decisions_csv,
    score_decisions,
    shape_bias_per_category,
)
from trainables.data import TrialData
from trainables.label_spaces import IMAGENET_OUTPUTS, LabelMapping, imagenet_mapping
from trainables.metrics import (
    ACCURACY,
    CUE_DECISION_RATE,
    HOLDOUT,
    SHAPE_ACCURACY,
    SHAPE_BIAS,
    TEXTURE_ACCURACY,
    per_category,
)
from trainables.models import preprocess
from trainables.per_image import PER_IMAGE, decision_codes, encode


@dataclass(frozen=True)
class Outputs:
    """What a model's outputs mean: its classes, their categories, and the targets to score them on."""

    class_names: tuple[str, ...]
    mapping: LabelMapping
    test_targets: torch.Tensor
    by_category: bool  # targets are categories (a 1000-way ImageNet head), not the model's classes


def model_outputs(head: str, data: TrialData) -> Outputs:
    """The outputs of a model with this `head` on `data`.

    A model trained here has one output per data class. torchvision's 1000-way ImageNet head
    (`model.head: imagenet1k`) is scored as the authors did: the category whose member classes
    have the highest mean probability, against the category of each test image's folder.
    """
    if head != "imagenet1k":
        return Outputs(data.class_names, data.mapping, data.test_labels, by_category=False)
    mapping = imagenet_mapping()
    targets = torch.tensor([mapping.categories.index(data.class_names[label]) for label in data.test_labels.tolist()])
    return Outputs(IMAGENET_OUTPUTS, mapping, targets, by_category=True)


@dataclass(frozen=True)
class Evaluation:
    """Every number one evaluation gives, by metric name, and (detailed) the decision files."""

    metrics: dict[str, float]
    decisions: dict[str, str] = field(default_factory=dict)  # file name -> model-vs-human CSV text
    images: int = 0  # images the model saw


def stimuli_sets(data: TrialData) -> list[tuple[str, Stimuli]]:
    """(metric suffix, stimuli): the set Optuna and the front see, then the report set if there is one."""
    return [("", data.stimuli)] + ([(HOLDOUT, data.holdout)] if data.holdout is not None else [])


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: TrialData,
    outputs: Outputs,
    device: torch.device | str = "cpu",
    detailed: bool = False,
    subject: str = "model",
) -> Evaluation:
    """Accuracy and shape bias (with shape and texture accuracy) of `model`; per category and image if `detailed`.

    Each measurement puts the model in eval mode meanwhile (`eval_mode`) and back as it was.
    """
    mapping = outputs.mapping if outputs.by_category else None
    correct = correct_per_image(model, data.test_images, outputs.test_targets, data.image_size, device, mapping)
    metrics = {ACCURACY: float(correct.float().mean().item())}
    decisions: dict[str, str] = {}
    codes: dict[str, str] = {}
    sets = stimuli_sets(data)
    for suffix, stimuli in sets:
        result, decided = evaluate_shape_bias(model, stimuli, outputs.mapping, data.image_size, device)
        metrics |= stimuli_metrics(result, suffix)
        if detailed:
            # The per-image decisions, for any model-vs-human tool to re-score.
            decisions[f"decisions{suffix}.csv"] = decisions_csv(stimuli, decided, subject=subject)
            codes[suffix] = decision_codes(decided, stimuli.shapes, stimuli.textures, outputs.mapping.categories)
        if detailed and suffix == sets[-1][0]:
            # Categories differ (the paper's ablation): each one's own, on the report set.
            for category, value in shape_bias_per_category(
                decided, stimuli.shapes, stimuli.textures, outputs.mapping.categories
            ).items():
                metrics[per_category(SHAPE_BIAS + suffix, category)] = value
    if detailed:
        # Compact, for the report's bootstrap over images (orchestrator/intervals.py).
        decisions[PER_IMAGE] = encode(correct.tolist(), codes)
    return Evaluation(metrics, decisions, len(outputs.test_targets) + sum(len(s) for _, s in sets))


def stimuli_metrics(result: ShapeBiasResult, suffix: str = "") -> dict[str, float]:
    """A shape-bias result under its metric names (`suffix` HOLDOUT for the report set)."""
    return {
        SHAPE_BIAS + suffix: result.shape_bias,
        SHAPE_ACCURACY + suffix: result.shape_accuracy,
        TEXTURE_ACCURACY + suffix: result.texture_accuracy,
        CUE_DECISION_RATE + suffix: result.cue_decision_rate,
    }


@torch.no_grad()
def correct_per_image(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    image_size: int,
    device: torch.device | str = "cpu",
    mapping: LabelMapping | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Whether each image's top-1 decision is its label, one bool per image (their mean is the accuracy).

    With `mapping`, the decision is the category (a 1000-way ImageNet head; labels are categories).
    """
    correct = []
    with eval_mode(model):
        for start in range(0, len(labels), batch_size):
            logits = model(preprocess(images[start : start + batch_size].to(device), image_size)).float().cpu()
            predicted = mapping.category_scores(logits).argmax(dim=-1) if mapping else logits.argmax(dim=-1)
            correct.append(predicted == labels[start : start + batch_size])
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)


@torch.no_grad()
def model_decisions(
    model: torch.nn.Module,
    stimuli: Stimuli,
    mapping: LabelMapping,
    image_size: int,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> list[str]:
    """The model's category decision on every stimulus (Top-K stays on: it is part of the model)."""
    decisions: list[str] = []
    with eval_mode(model):
        for start in range(0, len(stimuli), batch_size):
            # Resize and normalise on the device: on a GPU this is where the work is cheap.
            batch = preprocess(stimuli.images[start : start + batch_size].to(device), image_size)
            decisions += mapping.decide(model(batch).float().cpu())
    return decisions


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """`model` in eval mode (BatchNorm's running statistics) meanwhile, in its former mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def evaluate_shape_bias(
    model: torch.nn.Module,
    stimuli: Stimuli,
    mapping: LabelMapping,
    image_size: int,
    device: torch.device | str = "cpu",
) -> tuple[ShapeBiasResult, list[str]]:
    """Shape bias of `model` (in eval mode) on `stimuli`, and its per-image decisions."""
    decisions = model_decisions(model, stimuli, mapping, image_size, device=device)
    return score_decisions(decisions, stimuli.shapes, stimuli.textures, mapping.categories), decisions
