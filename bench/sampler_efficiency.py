"""Which sampler finds the front in fewest configurations: replayed searches, scored on held-out data.

Replays (bench/replay.py) random, TPE, NSGA-II and Optuna's GP sampler, each `--repeats` times
with different sampler seeds, against the per-layer table (bench/data/replay_per_layer.csv: 144
distinct networks: per-placement K at layer1 and layer2, and the learning rate), `--concurrency`
trials at a time (default 2, the quickstart's: the sampler proposes before it has heard the
configuration before). The samplers select on what a search reads (test accuracy and the shape
bias of the selection half of the stimuli); each search is scored on held-out data: the
hypervolume of its configurations' last-epoch seed means by test accuracy and the report half's
shape bias, above the table's nadir (the worst of each any configuration reaches).

The target is 95% of the table's best attainable held-out hypervolume: that of every recorded
configuration at its last epoch. Prints, per sampler, the median number of configurations it
proposes before its front reaches the target (a replay that never does within `--budget` counts
as budget + 1, and a median past the budget prints as '>budget'), its interquartile range, how
many replays got there, and that count over random search's. The target is demanding on purpose:
the front is a few configurations, and missing one of them costs more than 5%; a random search
draws the table's configurations with replacement, so it may need more proposals than the table
holds. GP's ask grows with the study (about a second past 100 configurations on 2 cores), so it
runs only when asked (`--samplers gp`), with `--gp-repeats` replays of at most `--gp-budget`.
The last line is the default sampler's count over random search's: below 1, it needs fewer
configurations than random.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import HELD_OUT, PER_LAYER, Replay, load_table, replay, replay_spec  # noqa: E402

from search_spaces.params import Params  # noqa: E402
from search_spaces.spec import SearchSpec  # noqa: E402

SAMPLERS = ("random", "tpe", "nsga2", "gp")
SHARE = 0.95  # of the best attainable hypervolume


def configurations_to_target(table_path: Path, sampler: str, seed: int, budget: int, concurrency: int) -> int:
    """How many configurations a replayed search proposes to reach the held-out target (budget + 1: never)."""
    table = load_table(table_path)
    target = SHARE * table.best_hypervolume(HELD_OUT)
    reference = table.reference(HELD_OUT)

    def volume(configurations: list[Params]) -> float:
        return Replay([(p, False) for p in configurations], 0, 0).hypervolume(table, None, reference, HELD_OUT)

    spec = replay_spec(table, sampler, budget + 1, sampler_seed=seed)
    # Proposing stops at the target: what comes after cannot change the count (and GP's asks are slow).
    result = replay(table, spec, concurrency=concurrency, until=lambda proposed: volume(proposed) >= target)
    sparse = [p for p, _ in result.configurations if not p.dense]
    return next((n for n in range(1, len(sparse) + 1) if volume(sparse[:n]) >= target), budget + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--table", type=Path, default=PER_LAYER)
    # GP is left to ask for: 10 of its replays ran past 25 minutes on 2 cores (its ask grows with the study).
    parser.add_argument("--samplers", nargs="+", default=["random", "tpe", "nsga2"], choices=SAMPLERS)
    parser.add_argument(
        "--budget", type=int, default=400, help="configurations a replayed search may propose before it counts as never"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="trials replayed side by side")
    parser.add_argument("--gp-repeats", type=int, default=10, help="GP's replays (its asks are slow)")
    parser.add_argument("--gp-budget", type=int, default=120, help="GP's budget")
    args = parser.parse_args()
    default = SearchSpec.model_fields["sampler"].default
    # Random search is the yardstick, and the last line is the default sampler's: both always run.
    samplers = ["random", *dict.fromkeys(s for s in [default, *args.samplers] if s != "random")]
    table = load_table(args.table)
    sparse = [p for p in table.configurations() if not p.dense]
    print(
        f"table {args.table.name}: {len(sparse)} configurations x {len(table.seeds)} seeds x {table.epochs} epochs; "
        f"target {SHARE:g} of the best attainable held-out hypervolume ({table.best_hypervolume(HELD_OUT):.5f}); "
        f"budget {args.budget}, {args.concurrency} trials at a time"
    )
    needed: dict[str, float] = {}
    with ProcessPoolExecutor() as pool:  # replays are independent: one per core
        for sampler in samplers:
            start = time.perf_counter()
            # GP's ask grows with the study (about 1 s past 100 configurations here): fewer, shorter replays.
            repeats, budget = (
                (args.gp_repeats, min(args.budget, args.gp_budget))
                if sampler == "gp"
                else (
                    args.repeats,
                    args.budget,
                )
            )
            jobs = [(args.table, sampler, seed, budget, args.concurrency) for seed in range(repeats)]
            counts = list(pool.map(configurations_to_target, *zip(*jobs, strict=True)))
            needed[sampler] = statistics.median(counts)
            q = statistics.quantiles(counts, n=4, method="inclusive")
            shown = f"{needed[sampler]:g}" if needed[sampler] <= budget else f">{budget}"
            over = needed[sampler] / needed["random"]
            print(
                f"{sampler:<7} configurations to target: median {shown} [q1 {q[0]:g}, q3 {q[2]:g}], reached in "
                f"{sum(c <= budget for c in counts)}/{repeats} (budget {budget}); over random "
                f"{'>' if needed[sampler] > budget else ''}{over:.2f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    print(f"default sampler: {default}")
    print(f"default_sampler_configs_over_random: {needed[default] / needed['random']:.3f}")


if __name__ == "__main__":
    main()
