"""Promotion end to end: a real reduced search, the MLflow Model Registry, pyfunc, evaluate, HTTP serving."""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import QUICKSTART, REDUCED, free_port, run_main, run_search, wait_for_http

pytestmark = pytest.mark.slow
EXPERIMENT = "promote-e2e"
MODEL = f"sparse-resnet18-{EXPERIMENT}"


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished reduced search (log_models on) in its own directory with SQLite MLflow."""
    workdir = tmp_path_factory.mktemp("promote")
    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    out = run_search(
        "search",
        "--config",
        str(QUICKSTART),
        *REDUCED,
        "configurations=3",
        "log_models=true",
        f"tracking_uri={tracking}",
        f"optuna_storage=sqlite:///{workdir / 'optuna.db'}",
        f"storage_path={workdir / 'ray'}",
        f"experiment={EXPERIMENT}",
        cwd=workdir,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    mlflow.set_tracking_uri(tracking)
    return workdir, tracking, MlflowClient(tracking)


def promote(workdir, tracking, *args, fresh=True):
    """`run_search.py promote` on this test's search; in this process (`run_main`) unless `fresh`."""
    args = ("promote", "--experiment", EXPERIMENT, "--tracking-uri", tracking, *args)
    return run_search(*args, cwd=workdir) if fresh else run_main(*args, cwd=workdir)


def registry_state(client):
    """Versions and aliases of the promoted model, to compare before and after a failure."""
    try:
        model = client.get_registered_model(MODEL)
    except mlflow.exceptions.MlflowException:
        return None
    versions = sorted(v.version for v in client.search_model_versions(f"name = '{MODEL}'"))
    return versions, dict(model.aliases)


def children(client):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], filter_string="tags.configuration != ''")


def test_every_child_run_can_be_rebuilt_and_shows_its_model_and_data(searched):
    _, _, client = searched
    runs = children(client)
    assert len(runs) == 6
    for run in runs:
        uri = run.data.tags["checkpoint_uri"]
        assert (Path(uri) / "state.pt").is_file()
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"trial_config.yaml"}
        contexts = sorted(tag.value for d in run.inputs.dataset_inputs for tag in d.tags)
        assert contexts == ["evaluation", "evaluation", "training"]
        assert len(run.outputs.model_outputs) == 1  # log_models=true: the run's Models tab


def test_promote_by_rule_registers_the_closest_seed_and_pyfunc_predicts(searched, shared_data):
    workdir, tracking, client = searched
    out = promote(workdir, tracking, "--maximize", "shape_bias", "--floor", "accuracy=dense-0.5", "--yes")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "on the Pareto front:" in out.stdout and "promoted replicate: seed" in out.stdout
    version = client.get_model_version_by_alias(MODEL, "production")
    tags = version.tags
    assert {
        "search_id",
        "configuration",
        "seed",
        "source_run_id",
        "accuracy_mean",
        "accuracy_std",
        "shape_bias_mean",
        "dense_accuracy_mean",
        "on_front",
        "git_commit",
    } <= set(tags)
    assert f"configuration {tags['configuration']}" in version.description
    # One paragraph that reads: how it was chosen, and that no confirmation tested it.
    assert "Chosen as the highest mean shape_bias with" in version.description
    if tags["configuration"] != "c000":  # the dense reference has no gain over itself to confirm
        assert version.description.endswith("Its gain over dense was never confirmed on fresh seeds.")
        assert "never confirmed on fresh seeds" in out.stderr  # the one-line warning
    # The logged model is named after what it is, and names the version it became.
    logged = client.get_logged_model(version.model_id or version.source.removeprefix("models:/"))
    assert logged.name == f"{tags['configuration']}-seed{tags['seed']}"
    assert logged.tags["registered_model"] == MODEL and logged.tags["registered_version"] == str(version.version)
    registered = client.get_registered_model(MODEL)
    assert registered.tags["experiment"] == EXPERIMENT and registered.tags["arch"] == "resnet18"
    assert (
        registered.tags["objectives"] == "accuracy,shape_bias" and registered.tags["latest_search"] == tags["search_id"]
    )

    # The promoted seed is the one closest to its configuration's means.
    runs = [r for r in children(client) if r.data.tags["configuration"] == tags["configuration"]]
    points = {r.data.tags["seed"]: (r.data.metrics["accuracy"], r.data.metrics["shape_bias"]) for r in runs}
    mean = np.mean(list(points.values()), axis=0)
    # Two seeds lie equally far from their mean: to 9 places, the lowest seed wins the tie.
    closest = min(points, key=lambda s: (round(float(np.hypot(*(np.array(points[s]) - mean))), 9), int(s)))
    assert tags["seed"] == closest and float(tags["accuracy_mean"]) == pytest.approx(mean[0], abs=1e-4)

    # production.yaml: written locally and logged with the version; the trial CLI accepts it.
    local = yaml.safe_load((workdir / "production.yaml").read_text())
    logged = yaml.safe_load(
        Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{MODEL}/{version.version}/production.yaml", dst_path=str(workdir / "dl")
            )
        ).read_text()
    )
    assert local == logged and local["provenance"]["source_run_id"] == tags["source_run_id"]
    assert set(local["provenance"]["data_fingerprint"]) == {"train", "test", "stimuli"}
    from trainables.config import TrialConfig

    assert TrialConfig.model_validate(local).training.threads == 1

    # pyfunc on real cue-conflict images, as an array and as encoded bytes; torch module beneath.
    files = sorted((shared_data / "cue-conflict").glob("*/*.png"))[:6]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@production")
    from_array = model.predict(images)
    from_bytes = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    pd.testing.assert_frame_equal(from_array, from_bytes)
    assert len(from_array) == 6 and {"label", "probability", "prob_circle"} <= set(from_array.columns)
    assert np.allclose(from_array.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)
    module = mlflow.pytorch.load_model(f"models:/{MODEL}@production")
    assert isinstance(module, torch.nn.Module)
    from trainables.models import preprocess

    with torch.no_grad():
        logits = module.eval()(preprocess(torch.from_numpy(images).permute(0, 3, 1, 2), 32))
    assert np.allclose(logits.softmax(-1).max(-1).values.numpy(), from_array["probability"], atol=1e-6)


def test_evaluate_reproduces_the_recorded_metrics_exactly(searched):
    workdir, tracking, _ = searched
    out = run_search("evaluate", "--model", f"models:/{MODEL}@production", "--tracking-uri", tracking, cwd=workdir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {
        line.split()[0]: line.split() for line in out.stdout.splitlines() if line.startswith(("accuracy", "shape_bias"))
    }
    for name in ("accuracy", "shape_bias", "shape_bias_holdout"):
        assert rows[name][1] == rows[name][2] and rows[name][3] == "same", out.stdout
    # The evaluation is a run of its own, linked to the version it scored, both ways.
    client = MlflowClient(tracking)
    version = client.get_model_version_by_alias(MODEL, "production")
    run = client.get_run(version.tags["last_evaluation_run_id"])
    assert f"logged as MLflow run {run.info.run_id} in experiment {MODEL}-evaluations" in out.stdout
    assert run.info.status == "FINISHED" and run.data.tags["registered_version"] == str(version.version)
    assert run.data.metrics["shape_bias_holdout"] == run.data.metrics["recorded.shape_bias_holdout"]
    assert "cue_decision_rate" in run.data.metrics
    # The synthetic benchmark is generated from its settings: it has no folders to swap.
    for option in ("--data", "--stimuli"):
        refused = run_main(
            "evaluate",
            "--model",
            f"models:/{MODEL}@production",
            "--tracking-uri",
            tracking,
            option,
            str(workdir),
            cwd=workdir,
        )
        assert refused.returncode == 2 and "trained on the synthetic benchmark" in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1 and option in refused.stderr


def test_serving_over_http_answers_like_the_in_process_model(searched, shared_data):
    workdir, tracking, _ = searched
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking,
        # The scoring server starts uvicorn by name: it must be on PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with open(workdir / "serve.log", "w") as log:  # the child keeps its own copy of the file
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                f"models:/{MODEL}@production",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/ping", server, workdir / "serve.log")
        files = sorted((shared_data / "cue-conflict").glob("*/*.png"))[10:14]
        images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        expected = mlflow.pyfunc.load_model(f"models:/{MODEL}@production").predict(images)

        def invoke(payload):
            request = urllib.request.Request(
                f"{url}/invocations", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
            )
            return pd.DataFrame(json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"])

        as_array = invoke({"inputs": images.tolist()})
        encoded = [base64.b64encode(f.read_bytes()).decode() for f in files]
        as_bytes = invoke({"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}})
        for answer in (as_array, as_bytes):
            assert answer["label"].tolist() == expected["label"].tolist()
            assert np.allclose(answer["probability"], expected["probability"], atol=1e-6)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_second_promotion_moves_the_alias_and_keeps_the_first_version(searched):
    workdir, tracking, client = searched
    first = client.get_model_version_by_alias(MODEL, "production")
    other = next(c for c in ("c000", "c001", "c002") if c != first.tags["configuration"])
    out = promote(workdir, tracking, "--configuration", other, "--yes")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    second = client.get_model_version_by_alias(MODEL, "production")
    assert int(second.version) == int(first.version) + 1 and second.tags["configuration"] == other
    assert client.get_model_version(MODEL, first.version).tags["configuration"] == first.tags["configuration"]
    # Rollback is moving the alias back.
    client.set_registered_model_alias(MODEL, "production", first.version)
    assert client.get_model_version_by_alias(MODEL, "production").version == first.version
    # The first configuration again: its checkpoint is version `first` already, so nothing is registered.
    versions = len(client.search_model_versions(f"name = '{MODEL}'"))
    out = promote(workdir, tracking, "--configuration", first.tags["configuration"], "--yes")
    assert out.returncode == 0 and f"already version {first.version} of {MODEL}" in out.stdout, out.stdout + out.stderr
    assert "alias 'production' already on it" in out.stdout
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == versions
    client.set_registered_model_alias(MODEL, "production", second.version)  # elsewhere: then it moves back
    out = promote(workdir, tracking, "--configuration", first.tags["configuration"], "--yes")
    assert f"alias 'production' -> version {first.version} (from {second.version})" in out.stdout, out.stdout
    assert client.get_model_version_by_alias(MODEL, "production").version == first.version
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == versions


class RefusingAlias(MlflowClient):
    """A real client whose registry refuses the last step, as a server that dies there would."""

    def set_registered_model_alias(self, name, alias, version):
        if str(version) != str(self.allowed):
            raise mlflow.exceptions.MlflowException("injected: the registry went away")
        super().set_registered_model_alias(name, alias, version)


def test_a_failure_after_the_version_was_registered_takes_everything_back(searched):
    from orchestrator import tracking as lookup
    from orchestrator.errors import SearchError
    from orchestrator.promotion import choice, promote

    workdir, tracking, client = searched
    search = lookup.find_search(client, EXPERIMENT, status="FINISHED")
    # One no version holds yet: promoting a registered checkpoint again registers nothing (tested below).
    registered = {v.tags["configuration"] for v in client.search_model_versions(f"name = '{MODEL}'")}
    target = next(c for c in ("c002", "c001", "c000") if c not in registered)
    chosen = choice.by_id(lookup.collect(client, search), target, ["c000", "c001", "c002"])
    before = registry_state(client)
    models_before = {m.model_id for m in client.search_logged_models([search.experiment_id])}
    refusing = RefusingAlias(tracking)
    refusing.allowed = before[1]["production"]  # putting the alias back is allowed
    with pytest.raises(SearchError, match=r"promotion failed, registry left as it was \(alias 'production' on version"):
        promote.promote(refusing, search, chosen, MODEL, "production", workdir / "refused")
    assert registry_state(client) == before
    assert {m.model_id for m in client.search_logged_models([search.experiment_id])} == models_before
    assert not list((workdir / "refused").glob("production.yaml*"))


def failing(workdir, tracking, client, *args, expect, fresh=False):
    """A refused promotion: one line, exit code 2, the registry as it was (in this process unless `fresh`)."""
    before = registry_state(client)
    out = promote(workdir, tracking, *args, fresh=fresh)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and expect in lines[-1], out.stderr[-2000:]
    assert registry_state(client) == before


def test_every_failure_is_one_line_and_leaves_the_registry_unchanged(searched):
    workdir, tracking, client = searched
    rule = ["--maximize", "shape_bias", "--yes"]
    failing(
        workdir,
        tracking,
        client,
        "--configuration",
        "c000",
        "--yes",
        "--experiment",
        "no-such",
        expect="no MLflow experiment 'no-such'",
        fresh=True,
    )
    failing(workdir, tracking, client, *rule, "--search", "nope-1", expect="no search 'nope-1'")
    failing(
        workdir, tracking, client, *rule, "--floor", "accuracy=1.0", expect="no configuration of 3 meets accuracy >= 1"
    )
    failing(
        workdir,
        tracking,
        client,
        "--configuration",
        "c099",
        "--yes",
        expect="no configuration 'c099' in this search; valid: c000, c001, c002",
    )
    failing(workdir, tracking, client, *rule, "--floor", "loss=3", expect="bad --floor 'loss=3'")
    failing(
        workdir,
        tracking,
        client,
        *rule,
        "--tracking-uri",
        f"http://127.0.0.1:{free_port()}",
        expect="cannot reach the MLflow tracking store",
    )
    # Without a terminal and without --yes, promote refuses rather than guess.
    failing(workdir, tracking, client, "--maximize", "shape_bias", expect="add --yes")

    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parent = client.search_runs([experiment], filter_string="tags.search_id != ''")[0]
    search_id = parent.data.tags["search_id"]
    client.update_run(parent.info.run_id, status="RUNNING")
    try:
        failing(workdir, tracking, client, *rule, "--search", search_id, expect=f"search {search_id} is RUNNING")
    finally:
        client.set_terminated(parent.info.run_id, status="FINISHED")

    # A search whose every trial failed has an empty front.
    empty = client.create_run(
        experiment, tags={"search_id": "empty-1", "search_name": "empty", "search_path": "/nowhere"}
    )
    client.log_param(empty.info.run_id, "seeds", "[0, 1]")
    client.set_terminated(empty.info.run_id, status="FINISHED")
    failing(workdir, tracking, client, *rule, "--search", "empty-1", expect="search empty-1 has an empty front")
    client.delete_run(empty.info.run_id)

    # A missing, then an unreadable checkpoint of the replicate to promote.
    target = next(r for r in children(client) if r.data.tags["configuration"] == "c001")
    state = Path(target.data.tags["checkpoint_uri"]) / "state.pt"
    for run in children(client):
        if run.data.tags["configuration"] == "c001":
            moved = Path(run.data.tags["checkpoint_uri"]) / "state.pt"
            shutil.move(moved, moved.with_suffix(".bak"))
    try:
        failing(workdir, tracking, client, "--configuration", "c001", "--yes", expect="state.pt is missing")
        for run in children(client):
            if run.data.tags["configuration"] == "c001":
                (Path(run.data.tags["checkpoint_uri"]) / "state.pt").write_bytes(b"not a checkpoint")
        failing(
            workdir, tracking, client, "--configuration", "c001", "--yes", expect="is not a readable trial checkpoint"
        )
    finally:
        for run in children(client):
            if run.data.tags["configuration"] == "c001":
                moved = Path(run.data.tags["checkpoint_uri"]) / "state.pt"
                shutil.move(moved.with_suffix(".bak"), moved)
    assert state.is_file()

    # A name or alias the registry would refuse is found before anything is written.
    failing(workdir, tracking, client, "--configuration", "c001", "--yes", "--alias", "v3", expect="'v3' is reserved")
    failing(
        workdir, tracking, client, "--configuration", "c001", "--yes", "--model-name", "a/b", expect="model name 'a/b'"
    )


def test_confirm_and_promote_confirmed_refuse_in_one_line_before_ray(searched):
    workdir, tracking, client = searched
    failing(
        workdir,
        tracking,
        client,
        "--maximize",
        "accuracy",
        "--confirmed",
        "--yes",
        expect="has no finished confirmation",
    )
    failing(
        workdir,
        tracking,
        client,
        "--configuration",
        "c001",
        "--confirmed",
        "--yes",
        expect="--confirmed applies to --maximize",
    )
    confirm = ("confirm", "--experiment", EXPERIMENT, "--tracking-uri", tracking)
    cases = {
        ("--configuration", "c000", "--seeds", "3"): "c000 is the dense reference",
        ("--configuration", "c099", "--seeds", "3"): "cannot confirm 'c099'",
        ("--top", "1", "--seeds", "1"): "argument --seeds: 1 is below 2",
        ("--top", "1", "--seeds", "3", "--search", "nope-1"): "no search 'nope-1'",
    }
    for args, expect in cases.items():
        out = run_main(*confirm, *args, cwd=workdir)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2 and expect in lines[-1], (args, out.stderr[-2000:])
    # Nothing was trained or recorded: no confirmation round, no child run of stage confirm.
    parent = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.search_id != ''")[0]
    assert "confirmation" not in parent.data.tags
    assert all(r.data.tags.get("stage") == "search" for r in children(client))


def test_a_dry_run_stages_production_yaml_and_writes_nothing_to_mlflow(searched):
    workdir, tracking, client = searched
    before = registry_state(client)
    out_dir = workdir / "dry"
    out = promote(workdir, tracking, "--configuration", "c001", "--dry-run", "--out", str(out_dir), fresh=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "dry run: the model rebuilds from its checkpoint; nothing written to MLflow" in out.stdout
    staged = yaml.safe_load((out_dir / "production.dry-run.yaml").read_text())
    assert staged["provenance"]["configuration"] == "c001" and not (out_dir / "production.yaml").exists()
    assert registry_state(client) == before
