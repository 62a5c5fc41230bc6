"""The training recipe for one sparse ResNet-18, as plain functions (after torchvision's reference).

`train_and_evaluate` runs the epochs and hands every epoch's metrics and full training state to a
`report` callback: the Ray trainable turns that into `tune.report(..., checkpoint=...)`, the
command line prints it. The last epoch's numbers are the result; nothing selects the best epoch.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from trainables.checkpoint import CheckpointError, labels_of
from trainables.config import TrainingConfig, TrialConfig
from trainables.cue_conflict import decisions_csv, evaluate_shape_bias, preprocess, shape_bias_per_category
from trainables.data import Batches, TrialData, build_data
from trainables.label_spaces import IMAGENET_OUTPUTS, LabelMapping, imagenet_mapping
from trainables.models import build_model

METRICS = ("epoch", "train_loss", "accuracy", "shape_bias", "shape_accuracy", "texture_accuracy", "images_per_s")
HOLDOUT_METRICS = ("shape_bias_holdout", "shape_accuracy_holdout", "texture_accuracy_holdout")  # data.split: half
Report = Callable[[dict[str, float], dict[str, Any]], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an error, not a silent fallback."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is visible")
    return torch.device(name)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it, fp16 on older GPUs, None (full fp32) on CPU or amp off."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def in_ray_session() -> bool:
    """True inside a Ray Tune trial (where ray.tune.report works)."""
    try:
        from ray.tune import get_context

        return get_context().get_trial_id() is not None
    except Exception:
        return False


def set_threads(requested: int) -> int:
    """Use `requested` torch threads, or (0) the CPUs Ray assigned to this trial."""
    threads = requested
    if threads == 0 and in_ray_session():
        import ray

        threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All RNG states, as plain tensors and lists a weights_only checkpoint can hold."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": np.random.get_state()[2],
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    image_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
    memory_format: torch.memory_format,
) -> tuple[float, float]:
    """One pass over the training batches: (mean loss, training images per second)."""
    model.train()
    total_loss = torch.zeros((), device=device)
    seen = 0
    start = time.perf_counter()
    for images, labels in batches:
        x = preprocess(images.to(device, non_blocking=True), image_size).contiguous(memory_format=memory_format)
        y = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        # Summing on the device avoids a GPU sync per step; the epoch's mean is read once below.
        total_loss += loss.detach() * len(y)
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return (total_loss / max(seen, 1)).item(), seen / elapsed


@torch.no_grad()
def accuracy(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, image_size: int,
    device: torch.device, batch_size: int = 256, mapping: LabelMapping | None = None,
) -> float:
    """Top-1 accuracy on held-out uint8 images; with `mapping`, of the category decision (labels are categories)."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(preprocess(images[start : start + batch_size].to(device), image_size)).cpu()
        predicted = mapping.category_scores(logits).argmax(dim=-1) if mapping else logits.argmax(dim=-1)
        correct += (predicted == labels[start : start + batch_size]).sum().item()
    return correct / len(labels)


def model_outputs(config: TrialConfig, data: TrialData) -> tuple[tuple[str, ...], LabelMapping, torch.Tensor, bool]:
    """(the model's output classes, their categories, the test targets, whether targets are categories).

    A model trained here has one output per data class. torchvision's 1000-way ImageNet head
    (`model.head: imagenet1k`) is scored as the authors did: the category whose member classes
    have the highest mean probability, against the category of each test image's folder.
    """
    if config.model.head != "imagenet1k":
        return data.class_names, data.mapping, data.test_labels, False
    mapping = imagenet_mapping()
    targets = torch.tensor([mapping.categories.index(data.class_names[label]) for label in data.test_labels.tolist()])
    return IMAGENET_OUTPUTS, mapping, targets, True


def train_and_evaluate(
    config: TrialConfig,
    report: Report,
    resume: dict[str, Any] | None = None,
    data: TrialData | None = None,
) -> dict[str, float]:
    """Train `config` to its last epoch, calling `report(metrics, state)` after each one."""
    training: TrainingConfig = config.training
    # Results depend on the thread count (reduction order), so it is part of the recipe.
    threads = set_threads(training.threads)
    device = resolve_device(training.device)
    data = data or build_data(config.data, training.batch_size, config.seed, training.augment, device.type == "cuda")
    if len(data.train) == 0:
        raise ValueError(f"training.batch_size {training.batch_size} exceeds the {data.train_size} training images")

    seed_everything(config.seed)
    outputs, mapping, test_targets, by_category = model_outputs(config, data)
    model = build_model(num_classes=len(outputs), stem=config.model.stem, topk=config.model.topk,
                        arch=config.model.arch, weights=config.model.weights)
    memory_format = torch.channels_last if device.type == "cuda" and training.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, training.epochs))
    amp_dtype = autocast_dtype(device, training.amp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    forward = torch.compile(model) if training.compile else model

    first_epoch, tracking = 1, {}
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
        except RuntimeError as error:
            # torch lists every mismatched tensor over many lines; the first says enough.
            first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
            raise CheckpointError(f"the checkpoint holds another model than this config builds ({first[:300]})") from None
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and "scaler" in resume:
            scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng"])
        first_epoch, tracking = resume["epoch"] + 1, dict(resume.get("tracking", {}))

    # The set Optuna and the front see, then (data.split: half) the report set nothing selects on.
    stimuli_sets = [("", data.stimuli)] + ([("_holdout", data.holdout)] if data.holdout is not None else [])
    evaluated = len(test_targets) + sum(len(stimuli) for _, stimuli in stimuli_sets)  # images one evaluation sees

    def evaluate(last: bool) -> tuple[dict[str, float], dict[str, str]]:
        score = accuracy(forward, data.test_images, test_targets, data.image_size, device, mapping=mapping if by_category else None)
        metrics, files = {"accuracy": score}, {}
        for suffix, stimuli in stimuli_sets:
            bias, decisions = evaluate_shape_bias(forward, stimuli, mapping, data.image_size, device=device)
            metrics |= {f"shape_bias{suffix}": bias.shape_bias, f"shape_accuracy{suffix}": bias.shape_accuracy,
                        f"texture_accuracy{suffix}": bias.texture_accuracy}
            if last:
                # The per-image decisions, for any model-vs-human tool to re-score.
                files[f"decisions{suffix}.csv"] = decisions_csv(stimuli, decisions, subject=config.model.arch)
            if last and stimuli is stimuli_sets[-1][1]:
                # Categories differ (the paper's ablation): each one's own, on the report set.
                per_category = shape_bias_per_category(decisions, stimuli.shapes, stimuli.textures, mapping.categories)
                metrics |= {f"shape_bias{suffix}.{category}": value for category, value in per_category.items()}
        return metrics, files

    metrics: dict[str, float] = {}
    # epochs: 0 trains nothing: the weights as loaded, evaluated and reported once (as epoch 0).
    for epoch in range(first_epoch, training.epochs + 1) if training.epochs else ([0] if first_epoch == 1 else []):
        last = epoch == training.epochs
        if epoch:
            data.train.set_epoch(epoch)
            loss, images_per_s = train_one_epoch(forward, optimizer, data.train, data.image_size, device, amp_dtype, scaler, memory_format)
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"training loss became {loss} at epoch {epoch} (lr {training.lr:g}); stopping")
            scheduler.step()
            scores, files = evaluate(last)
            metrics = {"epoch": epoch, "train_loss": loss, **scores, "images_per_s": images_per_s}
        else:
            start = time.perf_counter()
            scores, files = evaluate(last)
            metrics = {"epoch": 0, **scores, "images_per_s": evaluated / (time.perf_counter() - start)}
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "metrics": metrics,
            "rng": rng_state(),
            # What built this model, so a checkpoint alone rebuilds it (torchvision saves "args").
            "config": config.model_dump(mode="json"),
            "labels": labels_of(outputs, mapping),
            "threads": threads,  # the count actually used (0 in the config means Ray's allocation)
            # A free slot for the tracking system (e.g. the MLflow run id), carried across resumes.
            "tracking": tracking,
        }
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        if files:
            state["decision_files"] = files  # {file name: CSV text}; the caller logs them, never checkpoints them
        report(metrics, state)
    return metrics
