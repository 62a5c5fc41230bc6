"""The training recipe for one sparse ResNet-18, as plain functions (after torchvision's reference).

`train_and_evaluate` runs the epochs and hands every epoch's metrics and full training state to a
`report` callback: the Ray trainable turns that into `tune.report(..., checkpoint=...)`, the
command line prints it. The last epoch's numbers are the result; nothing selects the best epoch.
Its helpers live beside it: the data (`trainables.data`), the model (`trainables.models`), one
evaluation (`trainables.evaluate`), where it computes (`trainables.runtime`), checkpoints
(`trainables.checkpoint`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from trainables.batches import Batches
from trainables.checkpoint import CheckpointError, labels_of
from trainables.config import TrainingConfig, TrialConfig
from trainables.data import TrialData
from trainables.evaluate import evaluate, model_outputs
from trainables.metrics import EPOCH, IMAGES_PER_S, TRAIN_LOSS, TRAINING_METRICS
from trainables.models import build_model, preprocess
from trainables.runtime import autocast_dtype, resolve_device, rng_state, seed_everything, set_rng_state, set_threads

# What every epoch reports (with data.split: half also `metrics.HOLDOUT_METRICS`).
METRICS = TRAINING_METRICS
Report = Callable[[dict[str, float], dict[str, Any]], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


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
    data = data or config.data.build(training.batch_size, config.seed, training.augment, device.type == "cuda")
    if len(data.train) == 0:
        raise ValueError(f"training.batch_size {training.batch_size} exceeds the {data.train_size} training images")

    seed_everything(config.seed)
    outputs = model_outputs(config.model.head, data)
    model = build_model(
        num_classes=len(outputs.class_names),
        stem=config.model.stem,
        topk=config.model.topk,
        arch=config.model.arch,
        weights=config.model.weights,
    )
    memory_format = torch.channels_last if device.type == "cuda" and training.channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=memory_format)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, training.epochs))
    amp_dtype = autocast_dtype(device, training.amp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    forward: torch.nn.Module = torch.compile(model) if training.compile else model  # type: ignore[assignment]

    first_epoch, tracking = 1, {}
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
        except RuntimeError as error:
            # torch lists every mismatched tensor over many lines; the first says enough.
            first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
            raise CheckpointError(
                f"the checkpoint holds another model than this config builds ({first[:300]})"
            ) from None
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and "scaler" in resume:
            scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng"])
        first_epoch, tracking = resume["epoch"] + 1, dict(resume.get("tracking", {}))

    metrics: dict[str, float] = {}
    # epochs: 0 trains nothing: the weights as loaded, evaluated and reported once (as epoch 0).
    for epoch in range(first_epoch, training.epochs + 1) if training.epochs else ([0] if first_epoch == 1 else []):
        last = epoch == training.epochs
        start = time.perf_counter()
        if epoch:
            data.train.set_epoch(epoch)
            loss, images_per_s = train_one_epoch(
                forward, optimizer, data.train, data.image_size, device, amp_dtype, scaler, memory_format
            )
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"training loss became {loss} at epoch {epoch} (lr {training.lr:g}); stopping")
            scheduler.step()
        evaluation = evaluate(forward, data, outputs, device=device, detailed=last, subject=config.model.arch)
        if epoch:
            metrics = {EPOCH: epoch, TRAIN_LOSS: loss, **evaluation.metrics, IMAGES_PER_S: images_per_s}
        else:  # evaluated as loaded: the throughput is the evaluation's
            metrics = {
                EPOCH: 0,
                **evaluation.metrics,
                "images_per_s": evaluation.images / (time.perf_counter() - start),
            }
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "metrics": metrics,
            "rng": rng_state(),
            # What built this model, so a checkpoint alone rebuilds it (torchvision saves "args").
            "config": config.model_dump(mode="json"),
            "labels": labels_of(outputs.class_names, outputs.mapping),
            "threads": threads,  # the count actually used (0 in the config means Ray's allocation)
            # A free slot for the tracking system (e.g. the MLflow run id), carried across resumes.
            "tracking": tracking,
        }
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        if evaluation.decisions:
            # {file name: CSV text}; the caller logs them, never checkpoints them
            state["decision_files"] = evaluation.decisions
        report(metrics, state)
    return metrics
