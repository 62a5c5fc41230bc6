"""Images/s of a trial inside Ray Tune against a plain PyTorch loop, measured side by side.

Same model (sparse ResNet-18), same in-memory synthetic data, same batch size and thread count.
The plain loop runs before and after the Ray trial and its two figures are averaged, so drift in
machine load hits both sides. Each side's figure is the median over epochs after the first
(warm-up). Also prints the wall time of one quickstart-sized trial inside Ray (start to last
report, evaluation and checkpoints included). The last line is the headline ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ray
import torch
import torch.nn.functional as F
from ray import tune

from trainables.config import TrialConfig
from trainables.cue_conflict import preprocess
from trainables.data import build_data
from trainables.models import build_model
from trainables.trial import train_trial

# The quickstart's trial: 32 px synthetic benchmark, Top-K 10% after layer1 and layer2.
TRIAL = {
    "data": {"kind": "synthetic", "train_size": 1200, "test_size": 300, "conflicts_per_pair": 10},
    "model": {"stem": "imagenet", "topk": {"layer1": 0.1, "layer2": 0.1}},
    "training": {"epochs": 4, "batch_size": 32, "lr": 0.02, "augment": False},
    "seed": 0,
}


def plain_loop(config: TrialConfig) -> float:
    """Median images/s over epochs 2.. of a bare SGD loop over the trial's data."""
    torch.set_num_threads(config.training.threads)
    data = build_data(config.data, config.training.batch_size, config.seed, config.training.augment)
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
    return statistics.median(rates[1:])


def ray_trial(config: TrialConfig, storage: str) -> tuple[float, float]:
    """(median images/s over epochs 2.., wall seconds) of the trainable inside Ray Tune."""
    cpus = config.training.threads
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": cpus}),
        param_space=config.model_dump(mode="json"),
        run_config=tune.RunConfig(name="throughput", storage_path=storage, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    result = tuner.fit()[0]
    if result.error:
        raise result.error
    history = result.metrics_dataframe
    return statistics.median(history["images_per_s"].tolist()[1:]), float(history["time_total_s"].iloc[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads and Ray CPUs for the trial")
    parser.add_argument("--storage", default="/tmp/sparse-shape-search-bench", help="Ray Tune storage path")
    args = parser.parse_args()
    config = TrialConfig.model_validate({**TRIAL, "training": {**TRIAL["training"], "threads": args.threads}})

    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False, configure_logging=False)
    before = plain_loop(config)
    in_ray, wall = ray_trial(config, args.storage)
    after = plain_loop(config)
    ray.shutdown()
    plain = (before + after) / 2
    print(f"plain loop: {before:.0f} / {after:.0f} img/s (before / after), mean {plain:.0f} img/s, {args.threads} threads")
    print(f"Ray trial:  {in_ray:.0f} img/s; one quickstart-sized trial ({config.training.epochs} epochs of "
          f"{config.data.train_size} images, evaluation and checkpoints included) took {wall:.1f} s in Ray")
    print(f"trial_over_plain_loop: {in_ray / plain:.3f}")


if __name__ == "__main__":
    main()
