"""The confirmation stage end to end (real Ray, Optuna, MLflow): fresh seeds, its verdict, promote, a resume."""

import csv
import json
import math
import signal
import time

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import QUICKSTART, REDUCED, TINY, cli, popen_search, run_search, search_runs

pytestmark = pytest.mark.slow

GAINS = [
    f"confirmed.{{c}}.{objective}_{stat}"
    for objective in ("accuracy", "shape_bias")
    for stat in ("gain", "ci_low", "ci_high", "p_adjusted")
]


@pytest.fixture(scope="module")
def confirmed_search(tmp_path_factory):
    """A reduced search whose YAML asks to confirm its top configuration on two fresh seeds."""
    folder = tmp_path_factory.mktemp("confirm")
    out = run_search(
        "search", "--config", str(QUICKSTART), *REDUCED, "configurations=3", "confirm={top: 1, seeds: 2}", cwd=folder
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return folder, out


def test_a_confirmation_trains_fresh_seeds_beside_dense_and_logs_its_gains(confirmed_search):
    folder, out = confirmed_search
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (parent,), children = search_runs(client)
    assert parent.info.status == "FINISHED"
    stage = lambda name: [c for c in children if c.data.tags["stage"] == name]  # noqa: E731
    searched, confirming = stage("search"), stage("confirm")
    assert len(searched) == 6 and {int(c.data.tags["seed"]) for c in searched} == {0, 1}
    # The dense reference and the one chosen configuration, each on two seeds the search never used.
    assert len(confirming) == 4 and {c.info.status for c in confirming} == {"FINISHED"}
    assert {int(c.data.tags["seed"]) for c in confirming} == {2, 3}
    confirmed = {c.data.tags["configuration"] for c in confirming} - {"c000"}
    assert len(confirmed) == 1 and "c000" in {c.data.tags["configuration"] for c in confirming}
    (configuration,) = confirmed
    metrics = parent.data.metrics
    for name in GAINS:
        assert name.format(c=configuration) in metrics or "p_adjusted" in name, name  # p is NaN for flat seeds
    gain = metrics[f"confirmed.{configuration}.shape_bias_gain"]
    low, high = (
        metrics[f"confirmed.{configuration}.shape_bias_ci_low"],
        metrics[f"confirmed.{configuration}.shape_bias_ci_high"],
    )
    assert low <= gain <= high
    assert "confirmation on fresh seeds 2, 3 (never used by the search)" in out.stdout
    assert f"  {configuration}: " in out.stdout and "2 fresh seeds)" in out.stdout
    # Optuna never saw them: its trials are the two proposals, and no confirmation is among its values.
    study = optuna.load_study(study_name=parent.data.tags["search_id"], storage=f"sqlite:///{folder / 'optuna.db'}")
    assert len([t for t in study.trials if "reused_configuration" not in t.user_attrs]) == 2
    # The front is the search's alone: its seeds 0 and 1, with an interval and p_front for each.
    rows = list(csv.DictReader((folder / f"pareto-{parent.data.tags['search_id']}.csv").open()))
    assert len(rows) == 3 and {r["seeds"] for r in rows} == {"2"}
    for row in rows:
        for objective in ("accuracy", "shape_bias"):
            low, mean, high = (float(row[f"{objective}_{s}"]) for s in ("ci_low", "mean", "ci_high"))
            assert low <= mean <= high and low < high, row
        assert 0.0 <= float(row["p_front"]) <= 1.0 and row["images_resampled"] == "True"
    assert any(math.isfinite(v) for k, v in metrics.items() if k.endswith(".p_front"))


def test_promote_shows_a_confirmed_gain_and_warns_for_an_unconfirmed_one(confirmed_search):
    folder, _ = confirmed_search
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    _, children = search_runs(client)
    confirmed = {c.data.tags["configuration"] for c in children if c.data.tags["stage"] == "confirm"} - {"c000"}
    (configuration,) = confirmed
    (other,) = {"c001", "c002"} - confirmed
    args = ["promote", "--experiment", "sparse-shape-search-quickstart", "--yes"]
    out = cli(*args, "--configuration", configuration, cwd=folder, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.strip().startswith("confirmed"))
    assert "on fresh seeds 2, 3:" in line and "shape bias" in line and "[" in line, line
    assert "never confirmed" not in out.stderr
    version = client.get_model_version("sparse-resnet18-sparse-shape-search-quickstart", "1")
    assert version.tags["confirmed"] == "yes" and version.tags["confirmed_seeds"] == "2,3"
    assert "Confirmed on fresh seeds 2, 3" in version.description
    # --force: this test is about the warning; whether the gate passes depends on which one was confirmed.
    out = cli(*args, "--configuration", other, "--force", cwd=folder, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    warning = [x for x in out.stderr.splitlines() if x.startswith("warning:")]
    assert len(warning) == 1 and f"{other}'s gain over dense was never confirmed" in warning[0], out.stderr
    assert client.get_model_version("sparse-resnet18-sparse-shape-search-quickstart", "2").tags["confirmed"] == "no"
    # --confirmed chooses on the fresh seeds' figures, among what was confirmed (and the dense reference).
    out = cli(*args, "--maximize", "accuracy", "--confirmed", "--force", cwd=folder, timeout=300)
    assert out.returncode == 0 and "(confirmed figures: fresh seeds 2, 3)" in out.stdout, out.stdout + out.stderr


def test_a_confirmation_stopped_by_sigterm_resumes_with_its_own_seeds(tmp_path):
    args = ["--config", str(QUICKSTART), *TINY, "confirm={top: 1, seeds: 2}"]
    driver = popen_search("search", *args, cwd=tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def confirming():
        try:
            return [c for c in search_runs(client)[1] if c.data.tags.get("stage") == "confirm"]
        except Exception:  # the store may not exist yet
            return []

    deadline = time.monotonic() + 600
    while not any(c.info.status == "FINISHED" for c in confirming()) and driver.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(1)
    assert driver.poll() is None, driver.communicate()[0][-3000:]
    driver.send_signal(signal.SIGTERM)
    stdout, stderr = driver.communicate(timeout=180)
    assert driver.returncode == 130, stdout[-2000:] + stderr[-3000:]
    (parent,), _ = search_runs(client)
    assert parent.info.status == "KILLED" and "run_search.py resume" in stderr
    out = cli("resume", "--config", str(QUICKSTART), cwd=tmp_path, timeout=900, fresh=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming the confirmation of" in out.stdout and "on seeds [1, 2]" in out.stdout
    (parent,), children = search_runs(client)
    assert parent.info.status == "FINISHED"
    confirmed = [c for c in children if c.data.tags["stage"] == "confirm"]
    # Each (configuration, fresh seed) once: the resumed trials reattached to their runs.
    keys = sorted((c.data.tags["configuration"], c.data.tags["seed"]) for c in confirmed)
    assert len(keys) == 4 and len(set(keys)) == 4 and {s for _, s in keys} == {"1", "2"}, keys
    assert {c.info.status for c in confirmed} == {"FINISHED"}
    assert any(k.startswith("confirmed.") and k.endswith(".shape_bias_gain") for k in parent.data.metrics)


def test_the_front_is_found_in_mlflow_and_pareto_reads_only_unless_asked(confirmed_search):
    folder, _ = confirmed_search
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (parent,), children = search_runs(client)
    search_id = parent.data.tags["search_id"]
    rows = list(csv.DictReader((folder / f"pareto-{search_id}.csv").open()))
    front_runs = {run_id for r in rows if r["on_front"] == "True" for run_id in r["child_run_ids"].split()}
    tagged = client.search_runs([parent.info.experiment_id], filter_string="tags.pareto_front = 'true'")
    assert {r.info.run_id for r in tagged} == front_runs and front_runs

    # The front as an MLflow table, beside the CSV and the plots.
    def table():
        return pd.read_json(
            client.download_artifacts(parent.info.run_id, "pareto_table.json", str(folder)), orient="split"
        )

    assert sorted(table()["configuration"]) == sorted(r["configuration"] for r in rows)
    assert {"path": "pareto_table.json", "type": "table"} in json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    # optuna-dashboard and MLflow side by side: each trained proposal names its configuration and parent run.
    study = optuna.load_study(study_name=search_id, storage=f"sqlite:///{folder / 'optuna.db'}")
    trained = [t for t in study.trials if "reused_configuration" not in t.user_attrs]
    assert {t.user_attrs["configuration"] for t in trained} == {"c001", "c002"}
    assert {t.user_attrs["mlflow_parent_run_id"] for t in study.trials} == {parent.info.run_id}
    # `pareto` only reads MLflow unless --log: a tag taken off stays off, then --log puts it back.
    some = next(iter(front_runs))
    client.delete_tag(some, "pareto_front")
    args = ["pareto", "--experiment", "sparse-shape-search-quickstart", "--out", str(folder / "again")]
    assert cli(*args, cwd=folder, timeout=300).returncode == 0
    assert "pareto_front" not in client.get_run(some).data.tags
    assert cli(*args, "--log", cwd=folder, timeout=300).returncode == 0
    assert client.get_run(some).data.tags["pareto_front"] == "true"
    assert len(table()) == len(rows)  # replaced, not appended to
    assert {c.data.tags.get("pareto_front") for c in children if c.data.tags["stage"] == "confirm"} == {None}
