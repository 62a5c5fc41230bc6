"""Top-K cost, measured side by side in one run (the targets are in the README).

1. sparse / dense ResNet-18 training step, batch 64, 64 px, imagenet stem, Top-K 20% after layer2
   and layer3 (target <= 1.05);
2. the same at the authors' setting scaled to CPU: cifar stem, 96 px, Top-K 20% after layer2;
3. our Top-K against the authors' topk + scatter_ float-mask version on one activation:
   forward+backward time (target: ours faster) and bytes autograd keeps for backward (target:
   ours <= 1/4 of theirs).

Timings alternate the contenders round by round and report medians, so machine noise hits both.
The last line is the headline figure alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from trainables.models import Stem, build_model
from trainables.topk import topk_sparsify


def authors_sparse_hw(x: torch.Tensor, topk: float) -> torch.Tensor:
    """The authors' implementation (`sparse_hw`): topk + scatter_ into a float mask, multiply."""
    n, c, h, w = x.shape
    if topk == 1:
        return x
    x_reshape = x.view(n, c, h * w)
    keep_top_num = max(int(topk * h * w), 1)
    _, index = torch.topk(x_reshape.abs(), keep_top_num, dim=2)
    mask = torch.zeros_like(x_reshape).scatter_(2, index, 1).to(x.device)
    return (mask * x_reshape).view(n, c, h, w)


def interleaved_medians(contenders: dict[str, Callable[[], None]], rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each contender, calls alternating round by round."""
    for _ in range(warmup):
        for run in contenders.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def training_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def step_ratio(image_size: int, stem: Stem, topk: dict[str, float], batch: int, rounds: int) -> tuple[float, float]:
    """Median seconds of a dense and a sparse training step with identical weights and data."""
    torch.manual_seed(0)
    dense = build_model(num_classes=10, stem=stem)
    sparse = build_model(num_classes=10, stem=stem, topk=topk)
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(batch, 3, image_size, image_size)
    y = torch.randint(0, 10, (batch,))
    steps = {
        name: training_step(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), x, y)
        for name, model in (("dense", dense), ("sparse", sparse))
    }
    medians = interleaved_medians(steps, rounds)
    return medians["dense"], medians["sparse"]


def saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for fn's backward, other than x itself."""
    x = x.detach().requires_grad_(True)
    saved: list[torch.Tensor] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        fn(x)
    return sum(t.numel() * t.element_size() for t in saved if t.data_ptr() != x.data_ptr())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per contender")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds, medians")

    dense64, sparse64 = step_ratio(64, "imagenet", {"layer2": 0.2, "layer3": 0.2}, 64, args.rounds)
    print(
        f"step 64px imagenet stem, Top-K 20% layer2+layer3: dense {dense64 * 1e3:.1f} ms  "
        f"sparse {sparse64 * 1e3:.1f} ms  ratio {sparse64 / dense64:.3f}"
    )
    dense96, sparse96 = step_ratio(96, "cifar", {"layer2": 0.2}, 64, max(3, args.rounds // 3))
    print(
        f"step 96px cifar stem, Top-K 20% layer2:          dense {dense96 * 1e3:.1f} ms  "
        f"sparse {sparse96 * 1e3:.1f} ms  ratio {sparse96 / dense96:.3f}"
    )

    # The activation Top-K sees after layer2 at the authors' scaled setting: 64 x 128 x 48 x 48.
    x = torch.randn(64, 128, 48, 48)
    grad = torch.randn_like(x)

    def forward_backward(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            leaf = x.detach().requires_grad_(True)
            fn(leaf, 0.2).backward(grad)

        return run

    medians = interleaved_medians(
        {"ours": forward_backward(topk_sparsify), "authors": forward_backward(authors_sparse_hw)}, args.rounds
    )
    ours_bytes = saved_bytes(lambda t: topk_sparsify(t, 0.2), x)
    theirs_bytes = saved_bytes(lambda t: authors_sparse_hw(t, 0.2), x)
    print(
        f"Top-K fwd+bwd on {tuple(x.shape)} float32: ours {medians['ours'] * 1e3:.1f} ms  "
        f"authors {medians['authors'] * 1e3:.1f} ms  ratio {medians['ours'] / medians['authors']:.3f}"
    )
    print(
        f"kept for backward: ours {ours_bytes / 2**20:.1f} MiB  authors {theirs_bytes / 2**20:.1f} MiB  "
        f"ratio {ours_bytes / theirs_bytes:.3f}"
    )
    print(f"sparse_over_dense_step_64px: {sparse64 / dense64:.3f}")


if __name__ == "__main__":
    main()
