"""Replay a search against the recorded table (bench/data/replay_quickstart.csv) instead of training.

The real `ReplicateSearcher` drives a real Optuna sampler (in-memory storage), and, with early
stopping, the real `RungLadder` decides at each rung; only training is replaced: a trial's
per-epoch metrics are read from the table. A continuous fraction reads the NEAREST recorded
fraction in log space for its placement set (no interpolation: every value replayed is one a
real trial produced). Trials run one at a time, seeds of a configuration in order, so Optuna
hears each configuration before proposing the next (a real search with concurrency hears later).

A configuration's quality is always judged on its full-training metrics from the table (the
last epoch, seed means), whether or not early stopping cut it short: that is what a front
would have shown had it been trained.
"""

from __future__ import annotations

import bisect
import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import optuna

from orchestrator.early_stopping import RungLadder
from orchestrator.pareto import front_of, hypervolume
from orchestrator.pareto import ConfigurationResult, Replicate
from orchestrator.searcher import ReplicateSearcher, make_optuna_search
from search_spaces.params import Params
from search_spaces.spec import SearchSpec, load_spec

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "bench" / "data" / "replay_quickstart.csv"
Metrics = dict[str, float]


@dataclass
class Table:
    """Recorded trials: (placement, fraction, seed) -> per-epoch metrics, epoch 1 first."""

    runs: dict[tuple[str, float, int], list[Metrics]]
    epochs: int
    seeds: tuple[int, ...]

    def fractions(self, placement: str) -> list[float]:
        return sorted({f for p, f, _ in self.runs if p == placement})

    def placements(self) -> list[str]:
        return sorted({p for p, _, _ in self.runs if p != "dense"})

    def lookup(self, params: Params, seed: int) -> list[Metrics]:
        """The recorded history nearest to `params` (in log fraction) under `seed`."""
        if params.dense:
            return self.runs[("dense", 1.0, seed)]
        recorded = self.fractions(params.placement)
        if not recorded:
            raise KeyError(f"placement {params.placement} is not in the table ({', '.join(self.placements())})")
        i = bisect.bisect_left(recorded, params.fraction)
        candidates = recorded[max(0, i - 1) : i + 1]
        nearest = min(candidates, key=lambda f: abs(math.log(f) - math.log(params.fraction)))
        return self.runs[(params.placement, nearest, seed)]

    def full_result(self, params: Params) -> tuple[float, float]:
        """Seed means of the last epoch: what the configuration scores when fully trained."""
        finals = [self.lookup(params, seed)[-1] for seed in self.seeds]
        return statistics.fmean(m["accuracy"] for m in finals), statistics.fmean(m["shape_bias"] for m in finals)

    def reference(self) -> tuple[float, float]:
        """The nadir of all configurations' full-training means: the hypervolume's corner."""
        points = [self.full_result(Params("dense") if p == "dense" else Params(p, f))
                  for p, f in {(p, f) for p, f, _ in self.runs}]
        return min(p[0] for p in points), min(p[1] for p in points)


def load_table(path: Path = TABLE) -> Table:
    """Read the replay CSV (comment lines start with '#')."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    runs: dict[tuple[str, float, int], list[Metrics]] = {}
    for row in rows:
        key = (row["placement"], float(row["fraction"]), int(row["seed"]))
        runs.setdefault(key, []).append({k: float(row[k]) for k in ("epoch", "accuracy", "shape_bias")})
    for history in runs.values():
        history.sort(key=lambda m: m["epoch"])
    epochs = max(len(h) for h in runs.values())
    return Table(runs, epochs, tuple(sorted({seed for _, _, seed in runs})))


@dataclass(frozen=True)
class Replay:
    """One replayed search: the configurations in the order they were proposed, and its cost."""

    configurations: list[tuple[Params, bool]]  # (params, stopped early)
    epochs_trained: int
    epochs_full: int

    def hypervolume(self, table: Table, budget: int | None = None, reference: tuple[float, float] | None = None) -> float:
        """Hypervolume of the front of the first `budget` proposed configurations (dense excluded), on full-training metrics."""
        chosen = [(p, stopped) for p, stopped in self.configurations if not p.dense][:budget]
        results = [ConfigurationResult(f"c{i}", p, (Replicate("", 0, *table.full_result(p)),))
                   for i, (p, stopped) in enumerate(chosen) if not stopped]
        return hypervolume([(r.accuracy, r.shape_bias) for r in front_of(results)], reference or table.reference())


def replay_spec(table: Table, sampler: str, configurations: int, sampler_seed: int, extra: list[str] = ()) -> SearchSpec:
    """The quickstart spec over the table's placements and fraction range, with this sampler."""
    placements = "[" + ", ".join("[" + ", ".join(p.split("+")) + "]" for p in table.placements()) + "]"
    fractions = sorted({f for p, f, _ in table.runs if p != "dense"})
    return load_spec(ROOT / "search_spaces" / "quickstart.yaml", [
        f"sampler={sampler}", f"sampler_seed={sampler_seed}", f"configurations={configurations}",
        f"seeds=[{', '.join(map(str, table.seeds))}]", f"training.epochs={table.epochs}",
        f"search.placements={placements}", f"search.fraction={{low: {fractions[0]}, high: {fractions[-1]}, log: true}}",
        *extra,
    ])


def replay(table: Table, spec: SearchSpec, ladder: RungLadder | None = None) -> Replay:
    """Run `spec`'s search against the table: the real searcher and sampler, no training."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    inner = make_optuna_search(spec, study_name="replay", storage=optuna.storages.InMemoryStorage())
    searcher = ReplicateSearcher(inner, spec.seeds, spec.configurations, spec.trial_config, spec.training.epochs,
                                 spec.accuracy_floor)
    proposed: dict[str, Params] = {}
    trained = 0
    for i in range(spec.configurations * len(spec.seeds)):
        config = searcher.suggest(f"t{i}")
        params, seed, name = Params.from_dict(config["params"]), config["seed"], config["configuration"]
        proposed.setdefault(name, params)
        history = table.lookup(params, seed)
        last = history[-1]
        for metrics in history:
            if ladder is not None and not params.dense and not ladder.observe(name, seed, int(metrics["epoch"]),
                                                                               (metrics["accuracy"], metrics["shape_bias"])):
                last = metrics
                break
        trained += int(last["epoch"])
        searcher.on_trial_complete(f"t{i}", {**last})
    stopped = set(ladder.stopped_at) if ladder is not None else set()
    return Replay([(p, n in stopped) for n, p in proposed.items()], trained,
                  spec.configurations * len(spec.seeds) * spec.training.epochs)
