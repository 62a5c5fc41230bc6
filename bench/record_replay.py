"""Record the replay table: a grid of real quickstart trials, every epoch's metrics, as one CSV.

Runs the product itself (`sampler: grid`, Optuna's GridSampler) over the quickstart benchmark:
every placement set of `quickstart.yaml` plus two single-block placements, 8 log-spaced fractions
from 2% to 50%, the dense reference, 3 seeds, 6 epochs. Then it reads every child run's metric
history from MLflow and writes `bench/data/replay_quickstart.csv`, one row per (configuration,
seed, epoch), with a header comment holding the command and how long the search took.

`--grid` takes a count or a list of fractions, and `--set KEY=VALUE` any further override: the
per-layer table (`bench/data/replay_per_layer.csv`, the sampler and early-stopping benchmarks'
table) was recorded with per-placement fractions, a learning-rate grid, 8 epochs, 2 seeds and
fewer images; its first lines hold the commands. Every metric the replays read is a column,
the held-out ones included.

`--merge OLD.csv` adds the rows of an earlier recording of the same settings (other placements or
fractions) and keeps its header lines, so a table can be recorded in parts. A trial both hold
(the dense reference, which every recording trains) is kept once, from the earlier table, and the
largest differences between the two recordings of it are printed: seeded training is not
bit-for-bit repeatable between searches here (see the README).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from search_spaces.spec import load_spec  # noqa: E402

PLACEMENTS = "[[layer1], [layer2], [layer1, layer2], [layer1, layer2, layer3], [layer2.0], [layer2.1]]"


def overrides(placements: str, grid: str, extra: list[str]) -> list[str]:
    """The quickstart search turned into the recording grid: every placement set x the fraction's `grid` points.

    `extra` overrides come last (per-placement fractions, a learning-rate grid, fewer images, more
    epochs); `configurations` is then every distinct network the grid holds, plus the dense reference.
    """
    settings = [
        "name=replay",
        "sampler=grid",
        f"search.fraction.grid={grid}",
        f"search.placements={placements}",
        "seeds=[0, 1, 2]",
        "training.epochs=6",
        "concurrency=2",
        "experiment=replay",
        *extra,
    ]
    spec = load_spec(ROOT / "search_spaces" / "quickstart.yaml", [*settings, "configurations=2"])
    distinct = spec.distinct_networks()
    assert distinct is not None, "every searched knob needs grid points"
    return [*settings, f"configurations={distinct + 1}"]


COLUMNS = (
    "configuration",
    "placement",
    "fraction",
    "fractions",  # per-placement fractions, 'layer1=0.125 layer2=0.5' (empty for a shared one)
    "lr",  # empty when the search kept the base learning rate
    "seed",
    "epoch",
    "accuracy",
    "shape_bias",
    "shape_bias_holdout",
    "cue_decision_rate",
    "cue_decision_rate_holdout",
    "train_loss",
)
KEY = COLUMNS[1:7]  # a trial's epoch: what it trained, under which seed
METRICS = COLUMNS[7:]


def merge(old: Path, rows: list[dict[str, str]]) -> tuple[list[str], list[dict[str, str]]]:
    """The earlier table's header lines, and its rows plus `rows` (a trial in both kept once, from the earlier)."""
    with old.open(newline="") as handle:
        lines = handle.readlines()
    header = [line for line in lines if line.startswith("#")]
    earlier = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    known = {key(row): row for row in earlier}
    both = [row for row in rows if key(row) in known]
    # Seeded training still differs between recordings (see the README): say by how much, keep the earlier.
    differences = {
        m: max([abs(float(known[key(row)][m]) - float(row[m])) for row in both if known[key(row)].get(m)], default=0.0)
        for m in METRICS
    }
    fresh = [row for row in rows if key(row) not in known]
    # Configuration ids are per search: the new ones continue the earlier table's numbering.
    renumber: dict[str, str] = {}
    start = 1 + max(int(row["configuration"].lstrip("c")) for row in earlier)
    for row in sorted(fresh, key=lambda r: r["configuration"]):
        row["configuration"] = renumber.setdefault(row["configuration"], f"c{start + len(renumber):03d}")
    print(
        f"merged {len(earlier)} rows from {old}; {len(both)} rows both recorded (kept from {old.name}), largest "
        f"differences: {', '.join(f'{m} {d:.3f}' for m, d in differences.items())}"
    )
    return header, earlier + fresh


def key(row: dict[str, str]) -> tuple[str, ...]:
    """What a row is an epoch of, with numbers compared at 6 significant digits."""
    return tuple(f"{float(row[c]):.6g}" if row[c] and c != "fractions" and c != "placement" else row[c] for c in KEY)


def rows_of(client: MlflowClient, run: Any) -> list[dict[str, str]]:
    """A child run's rows: one per epoch, every metric it logged that epoch."""
    params = run.data.params
    history = {m: {p.step: p.value for p in client.get_metric_history(run.info.run_id, m)} for m in METRICS}
    fractions = " ".join(f"{k.split('.', 1)[1]}={v}" for k, v in sorted(params.items()) if k.startswith("fraction."))
    trial = {
        "configuration": run.data.tags["configuration"],
        "placement": params["placement"],
        "fraction": "" if fractions else params.get("fraction", "1.0"),
        "fractions": fractions,
        "lr": params.get("lr", ""),
        "seed": run.data.tags["seed"],
    }
    return [
        {
            **trial,
            "epoch": str(epoch),
            **{m: f"{history[m][epoch]:.6f}" if epoch in history[m] else "" for m in METRICS},
        }
        for epoch in sorted(history["accuracy"])
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "data" / "replay_quickstart.csv")
    parser.add_argument("--workdir", type=Path, default=None, help="where the search runs (default: a new temp dir)")
    parser.add_argument("--placements", default=PLACEMENTS, help="placement sets, as YAML")
    parser.add_argument(
        "--grid", default="8", help="fractions: a count (log-spaced from 2%% to 50%%) or a YAML list of them"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further override of the recorded search (repeatable), e.g. training.epochs=8",
    )
    parser.add_argument("--merge", type=Path, default=None, help="an earlier table of the same settings to add")
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="do not search: read the finished search in --workdir, which took this long",
    )
    args = parser.parse_args()
    settings = overrides(args.placements, args.grid, args.set)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        record(args, settings, args.workdir)
        return
    # The search keeps two checkpoints a trial, about 90 MB each (a ResNet-18 and its momentum):
    # a temp folder goes as soon as its table is written, or a few recordings fill the disk.
    with tempfile.TemporaryDirectory(prefix="replay-") as workdir:
        record(args, settings, Path(workdir))


def record(args: argparse.Namespace, settings: list[str], workdir: Path) -> None:
    """Run the search in `workdir` (unless --minutes says it ran) and write its table to --out."""
    command = [
        sys.executable,
        str(ROOT / "run_search.py"),
        "search",
        "--config",
        str(ROOT / "search_spaces" / "quickstart.yaml"),
        *settings,
    ]
    if args.minutes is None:
        start = time.perf_counter()
        subprocess.run(command, cwd=workdir, check=True)
        minutes = (time.perf_counter() - start) / 60
    else:
        minutes = args.minutes

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    found = client.get_experiment_by_name("replay")
    assert found is not None, "the recorded search left no 'replay' experiment"
    experiment = found.experiment_id
    runs = [r for r in client.search_runs([experiment], max_results=5000) if "mlflow.parentRunId" in r.data.tags]
    rows = [row for run in runs for row in rows_of(client, run)]
    header: list[str] = []
    if args.merge:
        header, rows = merge(args.merge, rows)
    number = lambda value: float(value) if value else 0.0  # noqa: E731
    rows.sort(
        key=lambda r: (
            r["placement"],
            r["fractions"],
            number(r["fraction"]),
            number(r["lr"]),
            *map(int, (r["seed"], r["epoch"])),
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        handle.writelines(header)
        merged = f" --merge {args.merge.name}" if args.merge else ""
        merged += "".join(f" --set '{o}'" for o in args.set)
        handle.write(
            f"# made by: python bench/record_replay.py --placements '{args.placements}' --grid '{args.grid}'{merged}, "
            "which runs: run_search.py search --config search_spaces/quickstart.yaml "
            f"{' '.join(repr(o) if ' ' in o else o for o in settings)}\n"
        )
        handle.write(
            f"# {len(runs)} trials, search wall {minutes:.1f} min on {os.cpu_count()} CPUs, "
            f"{time.strftime('%Y-%m-%d')}\n"
        )
        writer = csv.DictWriter(handle, COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}: {len(rows)} rows from {len(runs)} trials; the search took {minutes:.1f} min")


if __name__ == "__main__":
    main()
