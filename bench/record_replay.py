"""Record the replay table: a grid of real quickstart trials, every epoch's metrics, as one CSV.

Runs the product itself (`sampler: grid`, Optuna's GridSampler) over the quickstart benchmark:
every placement set of `quickstart.yaml` plus two single-block placements, 8 log-spaced fractions
from 2% to 50%, the dense reference, 3 seeds, 6 epochs. Then it reads every child run's metric
history from MLflow and writes `bench/data/replay_quickstart.csv`, one row per (configuration,
seed, epoch), with a header comment holding the command and how long the search took. The
sampler and early-stopping benchmarks replay this table instead of training.

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
PLACEMENTS = "[[layer1], [layer2], [layer1, layer2], [layer1, layer2, layer3], [layer2.0], [layer2.1]]"


def overrides(placements: str, points: int) -> list[str]:
    """The quickstart search turned into the recording grid: every placement set x `points` fractions."""
    sets = placements.count("[") - 1
    return [
        "name=replay",
        "sampler=grid",
        f"search.fraction.grid={points}",
        f"search.placements={placements}",
        f"configurations={sets * points + 1}",
        "seeds=[0, 1, 2]",
        "training.epochs=6",
        "concurrency=2",
        "experiment=replay",
    ]


COLUMNS = (
    "configuration",
    "placement",
    "fraction",
    "seed",
    "epoch",
    "accuracy",
    "shape_bias",
    "shape_bias_holdout",
    "train_loss",
)


def merge(old: Path, rows: list[list]) -> tuple[list[str], list[list]]:
    """The earlier table's header lines, and its rows plus `rows` (a trial in both kept once, checked equal)."""
    with old.open(newline="") as handle:
        lines = handle.readlines()
    header = [line for line in lines if line.startswith("#")]
    earlier = list(csv.reader(line for line in lines if not line.startswith("#")))[1:]
    key = lambda row: (row[1], f"{float(row[2]):.6g}", str(row[3]), str(row[4]))  # noqa: E731
    known = {key(row): row for row in earlier}
    both = [row for row in rows if key(row) in known]
    # Seeded training still differs between recordings (see the README): say by how much, keep the earlier.
    differences = {
        m: max([abs(float(known[key(row)][i]) - float(row[i])) for row in both], default=0.0)
        for i, m in enumerate(COLUMNS[5:], 5)
    }
    fresh = [row for row in rows if key(row) not in known]
    # Configuration ids are per search: the new ones continue the earlier table's numbering.
    renumber: dict[str, str] = {}
    start = 1 + max(int(row[0].lstrip("c")) for row in earlier)
    for row in sorted(fresh, key=lambda r: r[0]):
        row[0] = renumber.setdefault(row[0], f"c{start + len(renumber):03d}")
    print(
        f"merged {len(earlier)} rows from {old}; {len(both)} rows both recorded (kept from {old.name}), largest "
        f"differences: {', '.join(f'{m} {d:.3f}' for m, d in differences.items())}"
    )
    return header, earlier + fresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "data" / "replay_quickstart.csv")
    parser.add_argument("--workdir", type=Path, default=None, help="where the search runs (default: a new temp dir)")
    parser.add_argument("--placements", default=PLACEMENTS, help="placement sets, as YAML")
    parser.add_argument("--grid", type=int, default=8, help="log-spaced fractions from 2%% to 50%%")
    parser.add_argument("--merge", type=Path, default=None, help="an earlier table of the same settings to add")
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="do not search: read the finished search in --workdir, which took this long",
    )
    args = parser.parse_args()
    settings = overrides(args.placements, args.grid)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="replay-"))
    workdir.mkdir(parents=True, exist_ok=True)
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
    rows: list[list[Any]] = []
    for run in runs:
        params = run.data.params
        history = {m: {p.step: p.value for p in client.get_metric_history(run.info.run_id, m)} for m in COLUMNS[5:]}
        for epoch in sorted(history["accuracy"]):
            rows.append(
                [
                    run.data.tags["configuration"],
                    params["placement"],
                    params.get("fraction", "1.0"),
                    run.data.tags["seed"],
                    epoch,
                    *(f"{history[m][epoch]:.6f}" for m in COLUMNS[5:]),
                ]
            )
    header: list[str] = []
    if args.merge:
        header, rows = merge(args.merge, rows)
    rows.sort(key=lambda r: (r[1], float(r[2]), int(r[3]), int(r[4])))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        handle.writelines(header)
        merged = f" --merge {args.merge.name}" if args.merge else ""
        handle.write(
            f"# made by: python bench/record_replay.py --placements '{args.placements}' --grid {args.grid}{merged}, "
            "which runs: run_search.py search --config search_spaces/quickstart.yaml "
            f"{' '.join(repr(o) if ' ' in o else o for o in settings)}\n"
        )
        handle.write(
            f"# {len(runs)} trials, search wall {minutes:.1f} min on {os.cpu_count()} CPUs, "
            f"{time.strftime('%Y-%m-%d')}\n"
        )
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    print(f"wrote {args.out}: {len(rows)} rows from {len(runs)} trials; the search took {minutes:.1f} min")


if __name__ == "__main__":
    main()
