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

import csv
import itertools
import math
import statistics
from collections.abc import Callable, Sequence
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
# Per-placement K at layer1 and layer2 and the learning rate: 144 distinct networks (bench/record_replay.py).
PER_LAYER = ROOT / "bench" / "data" / "replay_per_layer.csv"
Metrics = dict[str, float]


@dataclass
class Table:
    """Recorded trials: (configuration, seed) -> per-epoch metrics, epoch 1 first.

    A configuration is the `Params` it was recorded under: a placement set with one fraction, or
    (`fractions`) one per placement, and the learning rate when the recording searched it.
    """

    runs: dict[tuple[Params, int], list[Metrics]]
    epochs: int
    seeds: tuple[int, ...]

    def placements(self) -> list[str]:
        return sorted({p.placement for p, _ in self.runs if not p.dense})

    def configurations(self) -> list[Params]:
        """Every recorded configuration, the dense reference included."""
        return sorted({p for p, _ in self.runs}, key=_order)

    def fractions(self) -> list[float]:
        """Every fraction recorded at any placement."""
        return sorted({f for p in self.configurations() if not p.dense for f in p.topk().values()})

    def learning_rates(self) -> list[float]:
        """The learning rates the sparse configurations were recorded at (none when the recording kept the base one)."""
        return sorted({p.lr for p in self.configurations() if p.lr is not None and not p.dense})

    def per_placement(self) -> bool:
        return any(p.fractions for p in self.configurations())

    def lookup(self, params: Params, seed: int) -> list[Metrics]:
        """The recorded history nearest to `params` (in log fraction at each placement, and log lr) under `seed`."""
        return self.runs[(self.nearest(params), seed)]

    def nearest(self, params: Params) -> Params:
        """The recorded configuration nearest to `params`: its own placement set, the smallest log distance."""
        if params in self._nearest:
            return self._nearest[params]
        recorded = [p for p in self.configurations() if p.placement == params.placement]
        if not recorded:
            raise KeyError(f"placement {params.placement} is not in the table ({', '.join(self.placements())})")
        found = min(recorded, key=lambda p: _log_distance(p, params))
        self._nearest[params] = found
        return found

    def means(self, params: Params, epoch: int | None = None, metrics: Objectives = None) -> tuple[float, float]:
        """Seed means of the two objectives (accuracy and shape bias) at `epoch` (default: the last)."""
        accuracy, shape = metrics or SELECTION
        points = [self.lookup(params, seed)[(epoch or self.epochs) - 1] for seed in self.seeds]
        return statistics.fmean(m[accuracy] for m in points), statistics.fmean(m[shape] for m in points)

    def full_result(self, params: Params, metrics: Objectives = None) -> tuple[float, float]:
        """Seed means of the last epoch: what the configuration scores when fully trained."""
        return self.means(params, metrics=metrics)

    def reference(self, metrics: Objectives = None) -> tuple[float, float]:
        """The nadir of all configurations' full-training means: the hypervolume's corner."""
        points = [self.full_result(params, metrics) for params in self.configurations()]
        return min(p[0] for p in points), min(p[1] for p in points)

    def best_hypervolume(self, metrics: Objectives = None) -> float:
        """The hypervolume of every recorded sparse configuration at its last epoch: what a search can reach."""
        points = [self.full_result(p, metrics) for p in self.configurations() if not p.dense]
        return hypervolume(points, self.reference(metrics))

    def subset(self, keep: Callable[[Params], bool]) -> Table:
        """The table of the configurations `keep` accepts (the dense reference always kept)."""
        runs = {(p, seed): h for (p, seed), h in self.runs.items() if p.dense or keep(p)}
        return Table(runs, self.epochs, self.seeds)

    def __post_init__(self) -> None:
        self._nearest: dict[Params, Params] = {}


Objectives = tuple[str, str] | None  # the accuracy and shape-bias metrics scored (default: SELECTION)
SELECTION = ("accuracy", "shape_bias")  # what the search selects on
HELD_OUT = ("accuracy", "shape_bias_holdout")  # the test accuracy, and the report half of the stimuli


def _order(params: Params) -> tuple:
    return (params.placement, sorted(params.topk().items()), params.lr or 0.0)


def _log_distance(a: Params, b: Params) -> float:
    """Squared distance in log fraction at each placement, plus log learning rate where both have one."""
    fa, fb = a.topk(), b.topk()
    distance = sum((math.log(fa[n]) - math.log(fb[n])) ** 2 for n in fa)
    if a.lr is not None and b.lr is not None:
        distance += (math.log(a.lr) - math.log(b.lr)) ** 2
    return distance


def load_table(path: Path = TABLE) -> Table:
    """Read a replay CSV (comment lines start with '#'); columns a recording left empty are absent."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    runs: dict[tuple[Params, int], list[Metrics]] = {}
    for row in rows:
        runs.setdefault((_params(row), int(row["seed"])), []).append(
            {k: float(v) for k, v in row.items() if k in METRICS and v not in ("", None)}
        )
    for history in runs.values():
        history.sort(key=lambda m: m["epoch"])
    epochs = max(len(h) for h in runs.values())
    return Table(runs, epochs, tuple(sorted({seed for _, seed in runs})))


METRICS = ("epoch", "accuracy", "shape_bias", "shape_bias_holdout", "cue_decision_rate", "cue_decision_rate_holdout")


def _params(row: dict[str, str]) -> Params:
    """The configuration a row records."""
    lr = float(row["lr"]) if row.get("lr") else None
    if row["placement"] == "dense":
        return Params("dense", lr=lr)
    if row.get("fractions"):
        pairs = [pair.split("=") for pair in row["fractions"].split()]
        return Params(row["placement"], lr=lr, fractions=tuple((name, float(f)) for name, f in pairs))
    return Params(row["placement"], float(row["fraction"]), lr=lr)


@dataclass(frozen=True)
class Replay:
    """One replayed search: the configurations in the order they were proposed, and its cost."""

    configurations: list[tuple[Params, bool]]  # (params, stopped early)
    epochs_trained: int
    epochs_full: int

    def hypervolume(
        self,
        table: Table,
        budget: int | None = None,
        reference: tuple[float, float] | None = None,
        metrics: Objectives = None,
    ) -> float:
        """Hypervolume of the front of the first `budget` proposed configurations (dense excluded).

        Measured on full-training `metrics` (default: the selection ones), whether or not a
        configuration was stopped early; one stopped early is not on the front.
        """
        chosen = [(p, stopped) for p, stopped in self.configurations if not p.dense][:budget]
        results = [
            ConfigurationResult(f"c{i}", p, (Replicate("", 0, *table.full_result(p, metrics)),))
            for i, (p, stopped) in enumerate(chosen)
            if not stopped
        ]
        return hypervolume(
            [(r.accuracy, r.shape_bias) for r in front_of(results)], reference or table.reference(metrics)
        )


def replay_spec(
    table: Table, sampler: str, configurations: int, sampler_seed: int, extra: Sequence[str] = ()
) -> SearchSpec:
    """The quickstart spec over the table's placements and fraction range (and lr range, if recorded), this sampler."""
    placements = "[" + ", ".join("[" + ", ".join(p.split("+")) + "]" for p in table.placements()) + "]"
    searched = [
        f"search.fraction={_range(table.fractions(), high=1.0)}",
        f"search.fraction_per_placement={str(table.per_placement()).lower()}",
    ]
    if table.learning_rates():
        searched.append(f"search.lr={_range(table.learning_rates())}")
    return load_spec(
        ROOT / "search_spaces" / "quickstart.yaml",
        [
            f"sampler={sampler}",
            f"sampler_seed={sampler_seed}",
            f"configurations={configurations}",
            f"seeds=[{', '.join(map(str, table.seeds))}]",
            f"training.epochs={table.epochs}",
            f"search.placements={placements}",
            *searched,
            *extra,
        ],
    )


def _range(points: list[float], high: float = math.inf) -> str:
    """A log range half a grid step beyond the first and last points: each end point then owns as much as any other."""
    half_step = math.sqrt(statistics.median(b / a for a, b in itertools.pairwise(points)))
    return f"{{low: {points[0] / half_step:.6g}, high: {min(high, points[-1] * half_step):.6g}, log: true}}"


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
    until: Callable[[list[Params]], bool] | None = None,
) -> Replay:
    """Run `spec`'s search against the table: the real searcher and sampler, no training (in `study`, or a new one).

    With `until`, the search proposes no more once `until(the configurations proposed so far)` holds.
    """
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
            if config[names.CONFIGURATION] not in proposed:
                proposed[config[names.CONFIGURATION]] = params
                finished = until is not None and until(list(proposed.values()))
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
