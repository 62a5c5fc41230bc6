"""A reduced search end to end: real Ray, Optuna (PostgreSQL / SQLite) and MLflow (HTTP server)."""

import csv
import signal
import statistics
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import POSTGRES, QUICKSTART, REDUCED, popen_search, run_search, search_runs, wait_for

pytestmark = pytest.mark.slow


def test_search_over_mlflow_server_and_postgres(tmp_path, mlflow_server):
    out = run_search(
        "search",
        "--config",
        str(QUICKSTART),
        *REDUCED,
        "configurations=3",
        f"tracking_uri={mlflow_server}",
        f"optuna_storage={POSTGRES}",
        f"storage_path={tmp_path / 'ray'}",
        "experiment=e2e-http",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Pareto front of" in out.stdout and "configurations 3/3 done" in out.stdout

    client = MlflowClient(mlflow_server)
    parents, children = search_runs(client, "e2e-http")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.tags["git_commit"] and parent.data.tags["version.torch"].startswith("2.14")
    assert len(children) == 6 and all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["ray_trial_id"] for c in children}) == 6
    for child in children:
        for metric in (
            "accuracy",
            "shape_bias",
            "shape_accuracy",
            "texture_accuracy",
            "train_loss",
            "images_per_s",
            "shape_bias_holdout",
        ):
            history = client.get_metric_history(child.info.run_id, metric)
            assert [m.step for m in history] == [1, 2], metric
        # The report set is other images: the two numbers are two measurements, not one copied.
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"decisions.csv", "decisions_holdout.csv"}
    assert any(c.data.metrics["shape_bias"] != c.data.metrics["shape_bias_holdout"] for c in children)
    assert {p.path for p in client.list_artifacts(parent.info.run_id)} >= {
        "pareto.csv",
        "pareto.png",
        "pareto-categories.png",
        "search_spec.yaml",
    }

    # The front in pareto.csv agrees with means recomputed from the stored metrics.
    by_config = {}
    for child in children:
        by_config.setdefault(child.data.tags["configuration"], []).append(child.data.metrics)
    front_csv = tmp_path / f"pareto-{parent.data.tags['search_id']}.csv"  # named after its search
    rows = list(csv.DictReader(front_csv.open()))
    assert {r["configuration"] for r in rows} == set(by_config)
    points = {}
    for row in rows:
        metrics = by_config[row["configuration"]]
        assert float(row["accuracy_mean"]) == pytest.approx(statistics.fmean(m["accuracy"] for m in metrics))
        assert float(row["shape_bias_mean"]) == pytest.approx(statistics.fmean(m["shape_bias"] for m in metrics))
        assert float(row["shape_bias_holdout_mean"]) == pytest.approx(
            statistics.fmean(m["shape_bias_holdout"] for m in metrics)
        )
        points[row["configuration"]] = (
            float(row["accuracy_mean"]),
            float(row["shape_bias_mean"]),
            row["on_front"] == "True",
        )
    for name, (acc, bias, on_front) in points.items():
        dominated = any(a >= acc and b >= bias and (a, b) != (acc, bias) for a, b, _ in points.values())
        assert on_front == (not dominated), name
    assert any(r["dense_reference"] == "True" for r in rows)
    # The search's progress: the front's hypervolume as each configuration completed, the last
    # one the front's; `pareto` below adds no second point.
    history = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert [m.step for m in history] == [1, 2, 3] and [m.value for m in history] == sorted(m.value for m in history)
    assert f"hypervolume {history[-1].value:.4f} above (0, 0)" in out.stdout
    # What mattered, per objective, from Optuna's fANOVA over the study: printed and logged.
    assert "parameter importance (fANOVA over 2 configurations" in out.stdout
    importance = {
        k: v for k, v in client.get_run(parent.info.run_id).data.metrics.items() if k.startswith("importance.")
    }
    for objective in ("accuracy", "shape_bias"):
        assert sum(v for k, v in importance.items() if k.startswith(f"importance.{objective}.")) == pytest.approx(1.0)

    # `pareto` recomputes the same front from MLflow alone.
    again = run_search(
        "pareto",
        "--experiment",
        "e2e-http",
        "--tracking-uri",
        mlflow_server,
        "--out",
        str(tmp_path / "again"),
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "again" / front_csv.name).read_text() == front_csv.read_text()
    assert len(client.get_metric_history(parent.info.run_id, "hypervolume")) == 3
    missing = run_search("pareto", "--experiment", "no-such", "--tracking-uri", mlflow_server, cwd=tmp_path)
    assert missing.returncode == 2 and "no MLflow experiment 'no-such'" in missing.stderr

    # Optuna was told the seed means of the two proposed configurations (not of the dense one).
    study = optuna.load_study(study_name=parent.data.tags["search_id"], storage=POSTGRES)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2 and study.metric_names == ["accuracy", "shape_bias"]  # what optuna-dashboard shows
    for trial in complete:
        assert trial.values == [
            pytest.approx(trial.user_attrs["accuracy_mean"]),
            pytest.approx(trial.user_attrs["shape_bias_mean"]),
        ]
        assert {"accuracy_std", "shape_bias_std", "seeds"} <= set(trial.user_attrs)
        # The held-out number is recorded beside them, never told as an objective.
        assert 0 <= trial.user_attrs["shape_bias_holdout_mean"] <= 1 and "shape_bias_holdout_std" in trial.user_attrs


def test_killed_driver_resumes_without_rerunning_or_duplicating(tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "--config",
        str(QUICKSTART),
        *REDUCED,
        "configurations=4",
        f"tracking_uri={tracking}",
        f"optuna_storage=sqlite:///{tmp_path / 'optuna.db'}",
        f"storage_path={tmp_path / 'ray'}",
        "experiment=e2e-resume",
    ]
    driver = popen_search("search", *args, cwd=tmp_path)
    client = MlflowClient(tracking)

    def finished_children():
        try:
            return [c for c in search_runs(client, "e2e-resume")[1] if c.info.status == "FINISHED"]
        except Exception:  # the store may not exist yet
            return []

    wait_for(lambda: len(finished_children()) >= 3 or driver.poll() is not None, 600, "three finished trials")
    assert driver.poll() is None, driver.communicate()[1][-3000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    time.sleep(5)  # let Ray's own processes notice their driver is gone
    before = {c.info.run_id: c.info.end_time for c in finished_children()}

    out = run_search("resume", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming search" in out.stdout and "Pareto front of" in out.stdout

    parents, children = search_runs(client, "e2e-resume")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 8, sorted(
        (c.data.tags["ray_trial_id"], c.data.tags["configuration"], c.data.tags["seed"], c.info.status)
        for c in children
    )
    assert len({c.data.tags["ray_trial_id"] for c in children}) == 8
    assert {c.info.status for c in children} == {"FINISHED"}
    after = {c.info.run_id: c.info.end_time for c in children}
    assert all(after[run] == end for run, end in before.items()), "a finished trial ran again"
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "accuracy")][-1] == 2

    study = optuna.load_study(
        study_name=parents[0].data.tags["search_id"], storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    )
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 3
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
