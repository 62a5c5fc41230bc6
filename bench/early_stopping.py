"""What early stopping saves and costs: replayed searches with and without it, on recorded trials.

Replays (bench/replay.py) the default sampler's search of 32 configurations (plus the dense
reference) `--repeats` times with different sampler seeds, once without early stopping and once
with the rungs and reduction factor given, each pair under the same sampler seed. The front of a
search with early stopping holds only the configurations it trained to the end; both fronts'
hypervolumes are measured on full-training seed means from the table, above the table's nadir.
Prints the median fraction of training epochs used and the median ratio of hypervolumes (with
their interquartile ranges); the last line is the cost ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import TABLE, load_table, replay, replay_spec  # noqa: E402

from orchestrator.early_stopping import RungLadder  # noqa: E402
from search_spaces.spec import SearchSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--configurations", type=int, default=32)
    parser.add_argument("--rungs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--sampler", default=SearchSpec.model_fields["sampler"].default)
    parser.add_argument("--table", type=Path, default=TABLE)
    args = parser.parse_args()
    table = load_table(args.table)
    reference = table.reference()
    hv_ratios, cost_ratios, stopped = [], [], []
    for repeat in range(args.repeats):
        spec = replay_spec(table, args.sampler, args.configurations + 1, sampler_seed=repeat)
        full = replay(table, spec)
        ladder = RungLadder(tuple(args.rungs), args.reduction_factor)
        early = replay(table, spec, ladder)
        hv_ratios.append(early.hypervolume(table, reference=reference) / full.hypervolume(table, reference=reference))
        cost_ratios.append(early.epochs_trained / full.epochs_trained)
        stopped.append(len(ladder.stopped_at))

    def summary(values: list[float]) -> str:
        q = statistics.quantiles(values, n=4, method="inclusive")
        return f"{statistics.median(values):.3f} [q1 {q[0]:.3f}, q3 {q[2]:.3f}]"

    print(f"{args.repeats} replayed searches of {args.configurations} configurations x {len(table.seeds)} seeds x "
          f"{table.epochs} epochs, sampler {args.sampler}; early stopping at rungs {args.rungs}, reduction factor "
          f"{args.reduction_factor:g}; median {statistics.median(stopped):g} configurations stopped per search")
    print(f"hypervolume with / without early stopping: {summary(hv_ratios)}")
    print(f"training epochs with / without early stopping: {summary(cost_ratios)}")
    print(f"early_stopping_hv_ratio: {statistics.median(hv_ratios):.3f}")
    print(f"early_stopping_cost_ratio: {statistics.median(cost_ratios):.3f}")


if __name__ == "__main__":
    main()
