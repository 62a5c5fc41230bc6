"""Replay a search against the recorded table (bench/data/replay_quickstart.csv) instead of training.

The real `ReplicateSearcher` drives a real Optuna sampler (in-memory storage), and, with early
stopping, the real `RungLadder` decides at each rung; only training is replaced: a trial's
per-epoch metrics are read from the table. A continuous fraction reads the NEAREST recorded
fraction in log space for its placement set (no interpolation: every value replayed is one a
real trial produced); the replayed range reaches half a grid step beyond the first and last
recorded fractions, so every recorded fraction is read from an equal stretch of log fraction.

Time runs in epochs: `concurrency` trials train side by side, one epoch per tick, and a free
slot asks the searcher for the next trial, as Ray Tune does. So with concurrency 2 the sampler
proposes a configuration before it has heard the one before (as in the quickstart), and the
seeds of a configuration reach a rung together; concurrency 1 is the most informed search.

A configuration stopped early is not on its search's front (a real front never shows partial
scores); the front's hypervolume is always measured on the full-training metrics (seed means of
the last epoch) of the configurations it holds.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna

from orchestrator import names
from orchestrator.pareto import ConfigurationResult, Replicate, front_of, hypervolume
from orchestrator.search.early_stopping import RungLadder
from orchestrator.search.searcher import ReplicateSearcher, make_study
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

    def configurations(self) -> list[Params]:
        """Every recorded configuration, the dense reference included."""
        return [Params("dense") if p == "dense" else Params(p, f) for p, f in sorted({(p, f) for p, f, _ in self.runs})]

    def means(self, params: Params, epoch: int | None = None) -> tuple[float, float]:
        """Seed means of accuracy and shape bias at `epoch` (default: the last)."""
        points = [self.lookup(params, seed)[(epoch or self.epochs) - 1] for seed in self.seeds]
        return statistics.fmean(m["accuracy"] for m in points), statistics.fmean(m["shape_bias"] for m in points)

    def full_result(self, params: Params) -> tuple[float, float]:
        """Seed means of the last epoch: what the configuration scores when fully trained."""
        return self.means(params)

    def reference(self) -> tuple[float, float]:
        """The nadir of all configurations' full-training means: the hypervolume's corner."""
        points = [self.full_result(params) for params in self.configurations()]
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

    def hypervolume(
        self, table: Table, budget: int | None = None, reference: tuple[float, float] | None = None
    ) -> float:
        """Hypervolume of the front of the first `budget` proposed configurations (dense excluded).

        Measured on full-training metrics, whether or not a configuration was stopped early.
        """
        chosen = [(p, stopped) for p, stopped in self.configurations if not p.dense][:budget]
        results = [
            ConfigurationResult(f"c{i}", p, (Replicate("", 0, *table.full_result(p)),))
            for i, (p, stopped) in enumerate(chosen)
            if not stopped
        ]
        return hypervolume([(r.accuracy, r.shape_bias) for r in front_of(results)], reference or table.reference())


def replay_spec(
    table: Table, sampler: str, configurations: int, sampler_seed: int, extra: Sequence[str] = ()
) -> SearchSpec:
    """The quickstart spec over the table's placements and fraction range, with this sampler."""
    placements = "[" + ", ".join("[" + ", ".join(p.split("+")) + "]" for p in table.placements()) + "]"
    fractions = sorted({f for p, f, _ in table.runs if p != "dense"})
    # Half a grid step beyond each end: the end fractions then own as much log range as any other.
    half_step = math.sqrt(statistics.median(b / a for a, b in itertools.pairwise(fractions)))
    return load_spec(
        ROOT / "search_spaces" / "quickstart.yaml",
        [
            f"sampler={sampler}",
            f"sampler_seed={sampler_seed}",
            f"configurations={configurations}",
            f"seeds=[{', '.join(map(str, table.seeds))}]",
            f"training.epochs={table.epochs}",
            f"search.placements={placements}",
            f"search.fraction={{low: {fractions[0] / half_step:.6g}, "
            f"high: {min(1.0, fractions[-1] * half_step):.6g}, log: true}}",
            *extra,
        ],
    )


@dataclass
class _Running:
    trial_id: str
    configuration: str
    params: Params
    seed: int
    history: list[Metrics]
    epoch: int = 0  # epochs trained so far


def replay(
    table: Table,
    spec: SearchSpec,
    ladder: RungLadder | None = None,
    concurrency: int = 1,
    study: optuna.Study | None = None,
) -> Replay:
    """Run `spec`'s search against the table: the real searcher and sampler, no training (in `study`, or a new one)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = study or make_study(spec, "replay", storage=optuna.storages.InMemoryStorage())
    searcher = ReplicateSearcher.for_spec(spec, study)
    proposed: dict[str, Params] = {}
    running: list[_Running] = []
    trained, asked, finished = 0, 0, False
    while running or not finished:
        while not finished and len(running) < concurrency:  # free slots ask for the next trial
            config = searcher.suggest(f"t{asked}")
            if not isinstance(config, dict):
                finished = True
                break
            params = Params.from_dict(config[names.PARAMS])
            proposed.setdefault(config[names.CONFIGURATION], params)
            running.append(
                _Running(
                    f"t{asked}",
                    config[names.CONFIGURATION],
                    params,
                    config[names.SEED],
                    table.lookup(params, config[names.SEED]),
                )
            )
            asked += 1
        ended = []
        for trial in running:  # one epoch each
            metrics = trial.history[trial.epoch]
            trial.epoch += 1
            keep = (
                ladder is None
                or trial.params.dense
                or ladder.observe(
                    trial.configuration, trial.seed, trial.epoch, (metrics["accuracy"], metrics["shape_bias"])
                )
            )
            if not keep or trial.epoch == len(trial.history):
                ended.append(trial)
        for trial in ended:
            running.remove(trial)
            trained += trial.epoch
            searcher.on_trial_complete(trial.trial_id, {**trial.history[trial.epoch - 1]})
    stopped = set(ladder.stopped_at) if ladder is not None else set()
    return Replay(
        [(p, n in stopped) for n, p in proposed.items()],
        trained,
        spec.configurations * len(spec.seeds) * spec.training.epochs,
    )
