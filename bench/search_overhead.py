"""The driver's overhead per trial: search wall time minus time spent inside trials, per trial.

Runs a real search (Ray Tune + Optuna on SQLite + MLflow on SQLite) of 50 near-empty trials
(25 configurations x 2 seeds; 16 px, 16 training images, 12 test, one epoch) one at a time, so that the
wall time is the sum of trial times plus everything the orchestration adds: Ray start-up, Optuna
asks and tells, MLflow parent and child runs, checkpoint persistence, the Pareto report. Trial
time is each MLflow child run's own start-to-end. The last line is the headline figure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.search.driver import run_search
from orchestrator.tracking import child_runs, experiment_id
from search_spaces.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configurations", type=int, default=25, help="configurations (x 2 seeds = trials)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="search-overhead-"))
    os.chdir(workdir)
    spec = load_spec(
        ROOT / "search_spaces" / "quickstart.yaml",
        [
            "name=overhead",
            f"configurations={args.configurations}",
            "seeds=[0, 1]",
            "concurrency=1",
            "data.image_size=16",
            "data.train_size=16",
            "data.test_size=12",
            "data.conflicts_per_pair=1",
            "training.epochs=1",
            "training.batch_size=8",
            "sampler=random",
            f"tracking_uri=sqlite:///{workdir}/mlflow.db",
            f"optuna_storage=sqlite:///{workdir}/optuna.db",
            f"storage_path={workdir}/ray_results",
            "experiment=overhead",
        ],
    )
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = run_search(spec)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu

    client = MlflowClient(spec.resolved_tracking_uri())
    experiment = experiment_id(client, "overhead")
    runs = child_runs(client, experiment, outcome.parent_run_id)
    inside = sum((r.info.end_time - r.info.start_time) / 1000 for r in runs)
    trials = len(runs)
    print(
        f"{trials} trials, one at a time: search wall {wall:.1f} s, inside trials {inside:.1f} s "
        f"({inside / trials:.2f} s per trial), workdir {workdir}"
    )
    print(f"driver CPU {cpu:.1f} s: {cpu / trials:.3f} s per trial (each trial: start, 1 epoch result, end)")
    with sqlite3.connect(workdir / "optuna.db") as optuna_db:
        tables = [t for (t,) in optuna_db.execute("select name from sqlite_master where type = 'table'")]
        rows = {
            t: optuna_db.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables if t.startswith("trial")
        }
    studied = rows.get("trials", 0) or 1  # one Optuna trial per configuration; seeds are replicates
    print(
        f"Optuna rows per configuration: {sum(rows.values()) / studied:.1f} "
        f"({', '.join(f'{t} {n}' for t, n in rows.items() if n)})"
    )
    checkpoints = list((workdir / "ray_results").rglob("state.pt"))
    size = sum(p.stat().st_size for p in checkpoints) / len(checkpoints)
    print(f"one trial checkpoint (state.pt, model + optimizer): {size / 1e6:.1f} MB")
    print(f"driver_overhead_s_per_trial: {(wall - inside) / trials:.3f}")


if __name__ == "__main__":
    main()
