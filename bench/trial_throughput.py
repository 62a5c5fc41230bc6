"""A trial inside Ray Tune against a plain PyTorch loop: images/s and whole wall time, interleaved.

Same model (sparse ResNet-18), same in-memory synthetic data, same batch size and thread count.
The two run alternately over `--rounds` rounds (plain, Ray, plain, Ray, ...), so drift in machine
load hits both sides; each round gives one ratio and the script prints their median with the
range. Two ratios:
- images/s while training: each side's median over epochs after the first (warm-up);
- whole wall time: the Ray trial's data, training, per-epoch evaluation (accuracy, shape bias on
  both stimuli sets) and checkpoints, over the plain loop's data and training alone.
Then where the Ray trial's extra wall time goes: one evaluation and one checkpoint, timed
directly. The last line is the median images/s ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import ray
import torch
import torch.nn.functional as F
from ray import tune

from trainables.checkpoint import temporary_checkpoint
from trainables.config import TrialConfig
from trainables.evaluate import evaluate, model_outputs
from trainables.models import build_model, preprocess
from trainables.trial import train_trial

# The quickstart's trial: 32 px synthetic benchmark, Top-K 10% after layer1 and layer2.
TRIAL: dict[str, Any] = {
    "data": {"kind": "synthetic", "train_size": 1200, "test_size": 300, "conflicts_per_pair": 10},
    "model": {"stem": "imagenet", "topk": {"layer1": 0.1, "layer2": 0.1}},
    "training": {"epochs": 4, "batch_size": 32, "lr": 0.02, "augment": False},
    "seed": 0,
}


def plain_loop(config: TrialConfig) -> tuple[float, float]:
    """(median images/s over epochs 2.., wall seconds with data) of a bare SGD loop over the trial's data."""
    start_wall = time.perf_counter()
    torch.set_num_threads(config.training.threads)
    data = config.data.build(config.training.batch_size, config.seed, config.training.augment)
    torch.manual_seed(config.seed)
    model = build_model(len(data.class_names), config.model.stem, config.model.topk)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.training.lr, momentum=0.9, weight_decay=5e-4)
    rates = []
    for epoch in range(1, config.training.epochs + 1):
        data.train.set_epoch(epoch)
        model.train()
        seen, start = 0, time.perf_counter()
        for images, labels in data.train:
            loss = F.cross_entropy(model(preprocess(images, data.image_size)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates[1:]), time.perf_counter() - start_wall


def extras(config: TrialConfig) -> tuple[float, float]:
    """(seconds of one evaluation, seconds of one checkpoint write) for the trial's model and data."""
    data = config.data.build(config.training.batch_size, config.seed, config.training.augment)
    model = build_model(len(data.class_names), config.model.stem, config.model.topk)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start = time.perf_counter()
    evaluate(model, data, model_outputs(config.model.head, data))  # what a trial runs after every epoch
    evaluation = time.perf_counter() - start
    start = time.perf_counter()
    with temporary_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict()}):
        pass
    return evaluation, time.perf_counter() - start


def ray_trial(config: TrialConfig, storage: str) -> tuple[float, float]:
    """(median images/s over epochs 2.., wall seconds) of the trainable inside Ray Tune."""
    cpus = config.training.threads
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": cpus}),
        param_space=config.model_dump(mode="json"),
        run_config=tune.RunConfig(
            name="throughput", storage_path=storage, verbose=0, checkpoint_config=tune.CheckpointConfig(num_to_keep=1)
        ),
    )
    result = tuner.fit()[0]
    if result.error:
        raise result.error
    history = result.metrics_dataframe
    assert history is not None, "the trial reported nothing"
    return statistics.median(history["images_per_s"].tolist()[1:]), float(history["time_total_s"].iloc[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads and Ray CPUs for the trial")
    parser.add_argument("--rounds", type=int, default=4, help="plain / Ray pairs, run alternately")
    parser.add_argument("--storage", default="/tmp/sparse-shape-search-bench", help="Ray Tune storage path")
    args = parser.parse_args()
    config = TrialConfig.model_validate({**TRIAL, "training": {**TRIAL["training"], "threads": args.threads}})

    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rate_ratios, wall_ratios = [], []
    for round_ in range(1, args.rounds + 1):
        plain_rate, plain_wall = plain_loop(config)
        ray_rate, ray_wall = ray_trial(config, args.storage)
        rate_ratios.append(ray_rate / plain_rate)
        wall_ratios.append(ray_wall / plain_wall)
        print(
            f"round {round_}: plain {plain_rate:.0f} img/s, {plain_wall:.1f} s;  Ray trial {ray_rate:.0f} img/s, "
            f"{ray_wall:.1f} s",
            flush=True,
        )
    ray.shutdown()
    evaluation, checkpoint = extras(config)
    epochs = config.training.epochs

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} (range {min(values):.3f} to {max(values):.3f}, {len(values)} rounds)"

    print(f"images/s, Ray trial over plain loop: {spread(rate_ratios)}")
    print(f"wall time, whole Ray trial over plain loop: {spread(wall_ratios)}")
    print(
        f"per epoch the trial also evaluates ({evaluation:.2f} s: test accuracy and shape bias on both stimuli "
        f"sets) and checkpoints ({checkpoint:.2f} s): {epochs * (evaluation + checkpoint):.1f} s over {epochs} epochs"
    )
    print(f"trial_wall_over_plain_wall: {statistics.median(wall_ratios):.3f}")
    print(f"trial_over_plain_loop: {statistics.median(rate_ratios):.3f}")


if __name__ == "__main__":
    main()
