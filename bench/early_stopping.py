"""Does early stopping beat random search that simply stops sooner? Cross-validated, scored on held-out data.

Replays (bench/replay.py) the default sampler's search with early stopping against the per-layer
table (bench/data/replay_per_layer.csv: 144 distinct networks, 8 epochs, 2 seeds) and compares it
with random search without early stopping **at the same total epochs**: random search stops
proposing once it has trained what the search with early stopping trained. Both are scored on
held-out data: each search's configurations at their last epoch, by test accuracy and the shape
bias of the report half of the cue-conflict stimuli (`shape_bias_holdout`), which neither the
search nor the rungs ever read. The figure is the held-out hypervolume with early stopping over
that of the equal-cost random search, per sampler seed (paired: with the random sampler, both
searches propose the same configurations in the same order), median over `--repeats`.

The rungs and reduction factor are chosen by two-fold cross-validation **by configurations**: the
table's learning rates alternate between the folds (each fold holds every placement's fractions
at half the learning rates), so no configuration is in both. A setting is chosen on one fold
(the best median ratio there over the sweep), then scored on the other; only the held-out fold's
figures make the last line (the replays of both directions, pooled). Each fold is searched with a
budget of a quarter of its configurations, as 32 is of the whole table's 144 (under a quarter).

The first line says how well each epoch orders the configurations as the last epoch does
(Spearman, seed means): what any rung decision can know.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import HELD_OUT, PER_LAYER, Replay, Table, load_table, replay, replay_spec  # noqa: E402

from orchestrator.search.early_stopping import RungLadder  # noqa: E402
from search_spaces.params import Params  # noqa: E402
from search_spaces.spec import SearchSpec  # noqa: E402

# (rungs, reduction factor): the settings cross-validation chooses among.
SWEEP = [
    ([1], 2),
    ([1], 3),
    ([1], 4),
    ([2], 2),
    ([2], 3),
    ([2], 4),
    ([4], 2),
    ([4], 3),
    ([1, 2], 2),
    ([2, 4], 2),
    ([1, 4], 3),
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
            f"{epoch}: {spearman([a[0] for a in at], [z[0] for z in final]):.2f}/"
            f"{spearman([a[1] for a in at], [z[1] for z in final]):.2f}"
        )
    return "rank correlation with the last epoch by epoch, accuracy/shape bias: " + ", ".join(cells)


def folds(table: Table) -> list[Table]:
    """The table split by configurations: alternate learning rates to each fold (the dense reference in both)."""
    rates = table.learning_rates()
    if len(rates) < 2:
        raise SystemExit(f"{len(rates)} learning rates in the table: cross-validation by configurations needs 2")
    halves = [set(rates[0::2]), set(rates[1::2])]
    return [table.subset(functools.partial(_learning_rate_in, half)) for half in halves]


def _learning_rate_in(rates: set[float], params: Params) -> bool:
    return params.lr in rates


class Fold:
    """One fold's replays: the equal-cost random searches are replayed once per seed and shared by every setting."""

    def __init__(self, table: Table, sampler: str, repeats: int, concurrency: int) -> None:
        self.table, self.sampler, self.repeats, self.concurrency = table, sampler, repeats, concurrency
        sparse = [p for p in table.configurations() if not p.dense]
        self.budget = max(4, len(sparse) // 4)
        self.reference = table.reference(HELD_OUT)
        self.random: dict[int, Replay] = {}

    def ratios(self, rungs: list[int], factor: float) -> tuple[list[float], list[float]]:
        """Per sampler seed: held-out hypervolume over equal-cost random search's, and the share of epochs trained."""
        table, ratios, costs = self.table, [], []
        per_configuration = len(table.seeds) * table.epochs
        for seed in range(self.repeats):
            spec = replay_spec(table, self.sampler, self.budget + 1, sampler_seed=seed)
            early = replay(table, spec, RungLadder(tuple(rungs), factor), concurrency=self.concurrency)
            if seed not in self.random:  # every configuration trained to the end: as many as any budget needs
                plain = replay_spec(table, "random", self.budget + 1, sampler_seed=seed)
                self.random[seed] = replay(table, plain, concurrency=self.concurrency)
            # Random search stops once it has spent what early stopping spent (the dense reference is in both).
            affordable = (early.epochs_trained - per_configuration) // per_configuration
            equal = self.random[seed].hypervolume(table, affordable, self.reference, HELD_OUT)
            if equal > 0:
                ratios.append(early.hypervolume(table, reference=self.reference, metrics=HELD_OUT) / equal)
            costs.append(early.epochs_trained / early.epochs_full)
        return ratios, costs


def summary(values: list[float]) -> str:
    """'1.012 [0.981, 1.040]': median and interquartile range."""
    q = statistics.quantiles(values, n=4, method="inclusive")
    return f"{statistics.median(values):.3f} [{q[0]:.3f}, {q[2]:.3f}]"


def describe(table: Table) -> str:
    """'72 configurations (lr 0.004, 0.009, ...)'."""
    sparse = [p for p in table.configurations() if not p.dense]
    return f"{len(sparse)} configurations (lr {', '.join(f'{r:g}' for r in table.learning_rates())})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--sampler", default=SearchSpec.model_fields["sampler"].default)
    parser.add_argument("--table", type=Path, default=PER_LAYER)
    parser.add_argument("--concurrency", type=int, default=2, help="trials replayed side by side")
    args = parser.parse_args()
    table = load_table(args.table)
    print(predictiveness(table))
    held_out: list[float] = []
    held_out_costs: list[float] = []
    for name, (choose, score) in {"A": folds(table), "B": folds(table)[::-1]}.items():
        chooser = Fold(choose, args.sampler, args.repeats, args.concurrency)
        print(
            f"choose on {describe(choose)}, budget {chooser.budget}; "
            f"held-out hypervolume over equal-cost random, median [q1, q3] of {args.repeats} paired replays:"
        )
        swept: dict[tuple[tuple[int, ...], float], float] = {}
        for rungs, factor in SWEEP:
            ratios, costs = chooser.ratios(rungs, factor)
            swept[(tuple(rungs), factor)] = statistics.median(ratios)
            print(f"  rungs {str(rungs):<7} factor {factor:<3g} {summary(ratios)}  epochs {summary(costs)}", flush=True)
        (chosen, chosen_factor), best = max(swept.items(), key=lambda item: item[1])
        scorer = Fold(score, args.sampler, args.repeats, args.concurrency)
        ratios, costs = scorer.ratios(list(chosen), chosen_factor)
        held_out += ratios
        held_out_costs += costs
        print(
            f"fold {name}: chose rungs {list(chosen)} factor {chosen_factor:g} ({best:.3f} where chosen); scored on "
            f"{describe(score)}, budget {scorer.budget}: {summary(ratios)}, epochs {summary(costs)}"
        )
    print(
        f"held out, both folds ({len(held_out)} paired replays, sampler {args.sampler}, {args.concurrency} trials "
        f"at a time): early stopping over equal-cost random search {summary(held_out)}; epochs trained "
        f"{summary(held_out_costs)} of the full budget"
    )
    print(f"early_stopping_over_equal_cost_random: {statistics.median(held_out):.3f}")


if __name__ == "__main__":
    main()
