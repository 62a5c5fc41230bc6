"""Which sampler finds the front in fewest configurations: replayed searches on recorded trials.

Replays (bench/replay.py) random, TPE, NSGA-II and Optuna's GP sampler, each `--repeats` times with
different sampler seeds and budgets up to 32 configurations (plus the dense reference), against
the recorded quickstart grid, `--concurrency` trials at a time (default 2, the quickstart's: the
sampler proposes before it has heard the configuration before). Hypervolumes are of the front of
the first 8 / 16 / 32 proposed configurations, on their full-training seed means, above the nadir
of the whole table (the worst accuracy and the worst shape bias any recorded configuration
reaches: a corner every configuration clears, so differences near the front are not diluted by
area no configuration contests). Prints each sampler's median hypervolume with its interquartile
range, and how many configurations it needs to reach the median hypervolume random search
reaches with 32 (median over repeats, a repeat that never gets there counted as 33; '>32' when
the median does not get there), with the share of repeats that get there at all. The last line
is the default sampler's median count over 32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import TABLE, load_table, replay, replay_spec  # noqa: E402

from search_spaces.spec import SearchSpec  # noqa: E402

SAMPLERS = ("random", "tpe", "nsga2", "gp")
BUDGETS = (8, 16, 32)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--concurrency", type=int, default=2, help="trials replayed side by side")
    args = parser.parse_args()
    default = SearchSpec.model_fields["sampler"].default
    # The target is random search's, and the last line is the default sampler's: both always run.
    samplers = ["random", *dict.fromkeys(s for s in [default, *args.samplers] if s != "random")]
    table = load_table(args.table)
    reference = table.reference()
    budget = max(BUDGETS)
    curves: dict[str, list[list[float]]] = {}  # sampler -> per repeat, hypervolume after 1..32 configurations
    for sampler in samplers:
        start = time.perf_counter()
        curves[sampler] = []
        for repeat in range(args.repeats):
            result = replay(
                table, replay_spec(table, sampler, budget + 1, sampler_seed=repeat), concurrency=args.concurrency
            )
            curves[sampler].append([result.hypervolume(table, b, reference) for b in range(1, budget + 1)])
        print(f"# {sampler}: {args.repeats} replays in {time.perf_counter() - start:.0f} s", flush=True)

    target = statistics.median(curve[budget - 1] for curve in curves["random"])
    print(
        f"table {args.table.name}: {len(table.runs)} recorded trials, {args.concurrency} at a time; "
        "reference point (nadir) "
        f"accuracy {reference[0]:.3f}, shape bias {reference[1]:.3f}; target = random search's median "
        f"hypervolume at 32: {target:.5f}"
    )
    print(
        f"{'sampler':<8} "
        + " ".join(f"{'hv@' + str(b) + ' median [q1, q3]':>30}" for b in BUDGETS)
        + f" {'configs to target':>18} {'reached':>8}"
    )
    needed: dict[str, float] = {}
    for sampler, runs in curves.items():
        cells = []
        for b in BUDGETS:
            q1, median, q3 = quartiles([curve[b - 1] for curve in runs])
            cells.append(f"{median:.5f} [{q1:.5f}, {q3:.5f}]")
        # Per repeat, the first budget whose hypervolume reaches the target (33 = never within 32).
        reach = [next((b for b, hv in enumerate(curve, 1) if hv >= target), budget + 1) for curve in runs]
        needed[sampler] = statistics.median(reach)
        shown = f"{needed[sampler]:g}" if needed[sampler] <= budget else f">{budget}"
        reached = sum(r <= budget for r in reach)
        print(f"{sampler:<8} " + " ".join(f"{c:>30}" for c in cells) + f" {shown:>18} {reached:>4}/{len(reach)}")
    print(f"default sampler: {default}")
    print(f"default_sampler_configs_over_random32: {needed[default] / budget:.3f}")


if __name__ == "__main__":
    main()
