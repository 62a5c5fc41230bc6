"""What early stopping saves and costs: replayed searches with and without it, on recorded trials.

Replays (bench/replay.py) the default sampler's search of 32 configurations (plus the dense
reference) `--repeats` times with different sampler seeds, `--concurrency` trials at a time
(default 2, the quickstart's), once without early stopping and once with the rungs and reduction
factor given, each pair under the same sampler seed. The front of a search with early stopping
holds only the configurations it trained to the end; both fronts' hypervolumes are measured on
full-training seed means from the table, above the table's nadir (see sampler_efficiency.py).
Prints the median fraction of training epochs used and the median ratio of hypervolumes (with
their interquartile ranges); the last line is the cost ratio. `--sweep` first prints the same
two medians for a ladder of other settings: the trade-off the headline setting was chosen from.
The first line says how well each epoch orders the configurations as their last epoch does
(Spearman rank correlation of seed means): what any rung decision can know.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import TABLE, Replay, Table, load_table, replay, replay_spec  # noqa: E402

from orchestrator.search.early_stopping import RungLadder  # noqa: E402
from search_spaces.spec import SearchSpec  # noqa: E402

SWEEP = [
    ([1], 2),
    ([1], 3),
    ([1], 4),
    ([1], 6),
    ([1], 8),
    ([1], 12),
    ([1], 16),
    ([2], 3),
    ([2], 6),
    ([1, 2], 2),
    ([1, 3], 2),
]


def spearman(xs: list[float], ys: list[float]) -> float:
    """Rank correlation (ties share their mean rank)."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in order[i : j + 1]:
                result[k] = (i + j) / 2
            i = j + 1
        return result

    return statistics.correlation(ranks(xs), ranks(ys))


def predictiveness(table: Table) -> str:
    """How well each epoch's seed means order the configurations as their last epoch does."""
    configurations = table.configurations()
    final = [table.means(params) for params in configurations]
    cells = []
    for epoch in range(1, table.epochs):
        at = [table.means(params, epoch) for params in configurations]
        cells.append(
            f"epoch {epoch}: {spearman([a[0] for a in at], [z[0] for z in final]):.2f} / "
            f"{spearman([a[1] for a in at], [z[1] for z in final]):.2f}"
        )
    return "rank correlation with the last epoch, accuracy / shape bias: " + "; ".join(cells)


def paired_replays(
    table: Table, args: argparse.Namespace, rungs: list[int], factor: float, without: dict[int, Replay]
) -> tuple[list[float], list[float], list[int]]:
    """Per sampler seed: hypervolume ratio and epoch ratio of the search with early stopping over the one without."""
    reference = table.reference()
    hv_ratios, cost_ratios, stopped = [], [], []
    for repeat in range(args.repeats):
        spec = replay_spec(table, args.sampler, args.configurations + 1, sampler_seed=repeat)
        if repeat not in without:  # the same for every setting: replayed once
            without[repeat] = replay(table, spec, concurrency=args.concurrency)
        full = without[repeat]
        ladder = RungLadder(tuple(rungs), factor)
        early = replay(table, spec, ladder, concurrency=args.concurrency)
        full_volume = full.hypervolume(table, reference=reference)
        if full_volume > 0:  # a table whose configurations all tie has nothing to compare
            hv_ratios.append(early.hypervolume(table, reference=reference) / full_volume)
        cost_ratios.append(early.epochs_trained / full.epochs_trained)
        stopped.append(len(ladder.stopped_at))
    return hv_ratios, cost_ratios, stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--configurations", type=int, default=32)
    parser.add_argument("--rungs", type=int, nargs="+", default=[1])
    parser.add_argument("--reduction-factor", type=float, default=12.0)
    parser.add_argument("--sampler", default=SearchSpec.model_fields["sampler"].default)
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--concurrency", type=int, default=2, help="trials replayed side by side")
    parser.add_argument("--sweep", action="store_true", help="also print the trade-off of other rungs and factors")
    args = parser.parse_args()
    table = load_table(args.table)
    print(predictiveness(table))
    without: dict[int, Replay] = {}
    if args.sweep:
        print(
            f"{'rungs':<8} {'factor':>6} {'hypervolume':>12} {'epochs':>7}   (medians of {args.repeats} paired replays)"
        )
        for rungs, factor in SWEEP:
            hv, cost, _ = paired_replays(table, args, rungs, factor, without)
            print(
                f"{str(rungs):<8} {factor:>6g} {statistics.median(hv):>12.3f} {statistics.median(cost):>7.3f}",
                flush=True,
            )
    hv_ratios, cost_ratios, stopped = paired_replays(table, args, args.rungs, args.reduction_factor, without)

    def summary(values: list[float]) -> str:
        q = statistics.quantiles(values, n=4, method="inclusive")
        return f"{statistics.median(values):.3f} [q1 {q[0]:.3f}, q3 {q[2]:.3f}]"

    print(
        f"{args.repeats} replayed searches of {args.configurations} configurations x {len(table.seeds)} seeds x "
        f"{table.epochs} epochs, sampler {args.sampler}, {args.concurrency} trials at a time; early stopping at rungs "
        f"{args.rungs}, reduction factor {args.reduction_factor:g}; median {statistics.median(stopped):g} "
        "configurations stopped per search"
    )
    print(f"hypervolume with / without early stopping: {summary(hv_ratios)}")
    print(f"training epochs with / without early stopping: {summary(cost_ratios)}")
    print(f"early_stopping_hv_ratio: {statistics.median(hv_ratios):.3f}")
    print(f"early_stopping_cost_ratio: {statistics.median(cost_ratios):.3f}")


if __name__ == "__main__":
    main()
