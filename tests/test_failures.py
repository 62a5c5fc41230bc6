"""Bad inputs and failure states: each is one line on stderr naming the bad value, exit code 2, no
traceback, and nothing half-written (no MLflow parent run, no Ray experiment folder).

The fast cases never reach Ray; the slow group at the end runs real searches (two at once,
failing trials, SIGTERM then resume, a cluster too small for a trial).
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import (
    POSTGRES,
    QUICKSTART,
    TINY,
    assert_nothing_written,
    assert_one_line_error,
    cli,
    closed_port,
    free_port,
    popen_search,
    search_runs,
)
from orchestrator.search.opening import STATE_FORMAT

# --- search: settings refused before Ray starts --------------------------------------------------

CONFIG_ERRORS = {
    "infinite lr": (["training.lr=.inf"], ["training.lr", "finite", "inf"]),
    "nan in a search range": (["search.lr={low: 0.01, high: .nan}"], ["search.lr.high", "finite"]),
    "optuna scheme": (["optuna_storage=foo://db"], ["optuna_storage", "'foo://db'", "sqlite://"]),
    "tracking scheme": (["tracking_uri=htp://mlflow:5000"], ["tracking_uri", "'htp://mlflow:5000'", "http://"]),
    "tracking port": (["tracking_uri=http://mlflow:50x0"], ["'http://mlflow:50x0'", "port"]),
    "optuna url port": (["optuna_storage=postgresql://me@db:port/x"], ["optuna_storage", "not a database URL"]),
    "sqlite without file": (["optuna_storage=sqlite://"], ["'sqlite://'", "names no file"]),
    "ray address": (["address=headnode"], ["'headnode'", "host:port"]),
    "storage scheme": (["storage_path=zz://bucket/x"], ["'zz://bucket/x'", "storage URI"]),
    "batch above train_size": (["training.batch_size=5000"], ["batch size 5000", "train_size 1200"]),
    "searched batch above train_size": (["search.batch_size=[16, 4000]"], ["batch size 4000", "train_size 1200"]),
    "override without =": (["epochs"], ["'epochs'", "key=value"]),
    "override duplicate key": (["search.fraction={low: 0.1, low: 0.2, high: 0.5}"], ["'low'", "twice"]),
    "unknown key": (["trainng.lr=0.1"], ["trainng", "Extra inputs"]),
    "confirm more than proposed": (["confirm={top: 8, seeds: 3}"], ["confirm.top 8", "7 configurations"]),
    "confirm on one seed": (["confirm={top: 1, seeds: 1}"], ["confirm.seeds", "greater than or equal to 2"]),
    "folder data missing": (
        [
            "data={kind: folder, train_dir: /nonexistent/train, test_dir: /nonexistent/test, "
            "stimuli_dir: /nonexistent/stimuli}"
        ],
        ["/nonexistent/train", "not found"],
    ),
}


@pytest.mark.parametrize("overrides, needles", CONFIG_ERRORS.values(), ids=CONFIG_ERRORS.keys())
def test_bad_settings_are_one_line_before_ray(tmp_path, overrides, needles):
    out = cli("search", "--config", str(QUICKSTART), *overrides, cwd=tmp_path)
    assert_one_line_error(out, *needles)
    assert sorted(os.listdir(tmp_path)) == []  # not even an empty store


def test_password_never_reaches_the_console(tmp_path):
    out = cli(
        "search",
        "--config",
        str(QUICKSTART),
        "optuna_storage=postgresql://me:s3cret@db:port/x",
        cwd=tmp_path,
        fresh=True,
    )
    line = assert_one_line_error(out, "postgresql://me:***@db:port/x")
    assert "s3cret" not in out.stderr + out.stdout, line


CONFIG_FILES = {
    "duplicate keys": ("name: a\nconfigurations: 2\nconfigurations: 5000\n", ["'configurations'", "twice", "line 3"]),
    "alias bomb": (
        "a: &a [x,x,x,x,x,x,x,x,x]\n"
        + "".join(f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)),
        ["aliases", "100000"],
    ),
    "not yaml": ("name: [unclosed\n", ["not valid YAML"]),
    "not a mapping": ("- just\n- a list\n", ["expected a mapping", "list"]),
}


@pytest.mark.parametrize("text, needles", CONFIG_FILES.values(), ids=CONFIG_FILES.keys())
def test_bad_config_files_are_one_line(tmp_path, text, needles):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    start = time.monotonic()
    out = cli("search", "--config", str(config), cwd=tmp_path)
    assert time.monotonic() - start < 60  # the bomb is refused, not expanded
    assert_one_line_error(out, "bad.yaml", *needles)


def test_non_utf8_and_missing_config_files(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("name: caf\xe9\n".encode("latin-1"))
    # In a real process: a refused config is exit code 2 and one line on the console.
    assert_one_line_error(cli("search", "--config", str(config), cwd=tmp_path, fresh=True), "latin1.yaml", "not UTF-8")
    assert_one_line_error(
        cli("resume", "--config", str(tmp_path / "nope.yaml"), cwd=tmp_path, fresh=True), "nope.yaml", "not found"
    )


# --- search: what only the disk, the network and this machine can say --------------------------


def world_errors(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    return {
        "storage_path is a file": (["storage_path=" + str(a_file)], [str(a_file), "is a file"]),
        "storage_path under a file": ([f"storage_path={a_file}/ray"], [f"{a_file}/ray", "not writable"]),
        "optuna sqlite folder missing": (
            ["optuna_storage=sqlite:////nonexistent/o.db"],
            ["/nonexistent", "does not exist"],
        ),
        "tracking sqlite folder missing": (
            ["tracking_uri=sqlite:////nonexistent/m.db"],
            ["/nonexistent", "does not exist"],
        ),
        "more CPUs than the machine": (["resources.cpu=512"], ["resources.cpu=512", f"{os.cpu_count()} CPUs"]),
        "a GPU on a CPU machine": (["resources.gpu=1"], ["resources.gpu=1", "0 GPUs"]),
        "tracking server down": (
            [f"tracking_uri=http://127.0.0.1:{closed_port()}"],
            ["cannot reach the MLflow", "127.0.0.1"],
        ),
        "optuna database down": (
            [f"optuna_storage=postgresql://me:s3cret@127.0.0.1:{closed_port()}/db"],
            ["cannot reach the Optuna database", "me:***@"],
        ),
        "ray head down": ([f"address=127.0.0.1:{closed_port()}"], ["cannot reach the Ray cluster", "ray start --head"]),
        "mlflow postgres down": (
            [f"tracking_uri=postgresql://127.0.0.1:{closed_port()}/x"],
            ["cannot reach the MLflow"],
        ),
        # PostgreSQL listens there: a port that answers, but not as a Ray head.
        "not a ray head": (["address=127.0.0.1:5432"], ["127.0.0.1:5432", "did not answer as a Ray head"]),
    }


WORLD_CASES = [
    "storage_path is a file",
    "storage_path under a file",
    "optuna sqlite folder missing",
    "tracking sqlite folder missing",
    "more CPUs than the machine",
    "tracking server down",
    "optuna database down",
    "ray head down",
    "mlflow postgres down",
    # Waits out the 20 s a Ray head has to answer: in the slow group.
    pytest.param("not a ray head", marks=pytest.mark.slow),
]
if not torch.cuda.is_available():
    WORLD_CASES.append("a GPU on a CPU machine")


@pytest.mark.parametrize("case", WORLD_CASES)
def test_world_problems_are_one_line_within_seconds_and_leave_nothing(tmp_path, case):
    overrides, needles = world_errors(tmp_path)[case]
    start = time.monotonic()
    out = cli("search", "--config", str(QUICKSTART), *overrides, cwd=tmp_path, fresh="s3cret" in str(overrides))
    assert time.monotonic() - start < 60, "a service check must not hang"
    line = assert_one_line_error(out, *needles)
    assert "s3cret" not in line
    assert_nothing_written(tmp_path)


# --- resume, pareto: which search, which store, which folder ------------------------------------


def recorded_search(client, experiment, search_id, status, path, **tags):
    """A search's parent run as a start leaves it (its tags and seeds), ended with `status`; its run id."""
    tags = {
        "search_id": search_id,
        "search_name": "quickstart",
        "search_path": str(path),
        "mlflow.runName": search_id,
        **tags,
    }
    run = client.create_run(experiment, tags=tags)
    client.log_param(run.info.run_id, "seeds", "[0]")
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


@pytest.fixture
def store(tmp_path):
    """A real MLflow store holding searches as three kinds of failed or finished start leave them."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("sparse-shape-search-quickstart")
    storage = tmp_path / "ray_results"
    storage.mkdir()
    made = {}
    for search_id, status, path in (
        ("quickstart-20261101-100000-aaaaaa", "FINISHED", storage / "quickstart-20261101-100000-aaaaaa"),
        ("quickstart-20261101-110000-bbbbbb", "FAILED", storage / "quickstart-20261101-110000-bbbbbb"),  # no Ray state
        ("quickstart-20261101-120000-cccccc", "KILLED", Path("/etc/elsewhere")),  # state outside storage_path
    ):
        recorded_search(client, experiment, search_id, status, path)
        made[status] = search_id
    return made


def test_resume_chooses_only_what_can_be_resumed(tmp_path, store):
    config = ["--config", str(QUICKSTART)]
    assert_one_line_error(
        cli("resume", *config, "--search", "x' or '1'='1", cwd=tmp_path), "x' or '1'='1", "not a search id"
    )
    assert_one_line_error(
        cli("resume", *config, "--search", "quickstart-19990101-000000-000000", cwd=tmp_path),
        "quickstart-19990101-000000-000000",
        "searches there",
    )
    assert_one_line_error(
        cli("resume", *config, "--search", store["FINISHED"], cwd=tmp_path), store["FINISHED"], "already FINISHED"
    )
    assert_one_line_error(
        cli("resume", *config, "--search", store["FAILED"], cwd=tmp_path), store["FAILED"], "no Ray Tune state"
    )
    assert_one_line_error(
        cli("resume", *config, "--search", store["KILLED"], cwd=tmp_path), "/etc/elsewhere", "outside storage_path"
    )
    # By default the newest unfinished search is taken, and one whose state lies outside the
    # storage_path is refused rather than unpickled.
    assert_one_line_error(cli("resume", *config, cwd=tmp_path), "/etc/elsewhere", "outside storage_path")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    statuses = sorted(
        r.info.status
        for r in client.search_runs([client.get_experiment_by_name("sparse-shape-search-quickstart").experiment_id])
    )
    assert statuses == ["FAILED", "FINISHED", "KILLED"]  # resume changed nothing


def test_resume_skips_starts_that_never_ran(tmp_path, store):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    killed = client.search_runs(
        [client.get_experiment_by_name("sparse-shape-search-quickstart").experiment_id],
        filter_string=f"tags.search_id = '{store['KILLED']}'",
    )[0]
    client.delete_run(killed.info.run_id)
    out = cli("resume", "--config", str(QUICKSTART), cwd=tmp_path)
    assert_one_line_error(
        out, "no unfinished search named 'quickstart' has Ray Tune state", store["FAILED"], "--search"
    )


class _Payload:
    """Unpickling it runs code: it writes a marker file (what a hostile Ray state could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))


def hostile_state(folder, marker):
    """A folder Ray would take for a search's state, whose tuner.pkl runs code when read."""
    import pickle

    folder.mkdir(parents=True)
    (folder / "experiment_state-2026-11-01_10-00-00.json").write_text("{}")
    (folder / "tuner.pkl").write_bytes(pickle.dumps(_Payload(marker)))


@pytest.mark.parametrize("how", ["id climbs out", "path points out", "folder links out"])
def test_resume_reads_no_state_from_outside_the_storage_path(tmp_path, how):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("sparse-shape-search-quickstart")
    storage, outside, marker = tmp_path / "ray_results", tmp_path / "outside", tmp_path / "unpickled"
    storage.mkdir()
    hostile_state(outside, marker)
    search_id = {"id climbs out": "../outside"}.get(how, "quickstart-20261101-130000-dddddd")
    path = {"path points out": outside}.get(how, storage / search_id)
    if how == "folder links out":
        (storage / search_id).symlink_to(outside)
    # Anyone who can write tags to the tracking server can write these.
    run_id = recorded_search(client, experiment, search_id, "KILLED", path)
    out = cli("resume", "--config", str(QUICKSTART), cwd=tmp_path)
    line = assert_one_line_error(out)
    if how == "id climbs out":
        assert "'../outside' is not a search id" in line, line
    else:
        assert "outside storage_path" in line and search_id in line, line
    assert not marker.exists(), "resume unpickled state from outside the storage path"
    assert client.get_run(run_id).info.status == "KILLED"


@pytest.mark.parametrize("case", ["another state layout", "another optuna database"])
def test_resume_refuses_state_it_cannot_read_and_a_study_elsewhere_before_reading_any(tmp_path, case):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("sparse-shape-search-quickstart")
    search_id, marker = "quickstart-20261101-140000-eeeeee", tmp_path / "unpickled"
    hostile_state(tmp_path / "ray_results" / search_id, marker)
    # What a start of this version records; an older version recorded an older layout (the first none).
    tags = {
        "another state layout": {"state_format": "2"},  # before the searcher kept its networks
        "another optuna database": {"state_format": STATE_FORMAT, "optuna_storage": "sqlite:////elsewhere/optuna.db"},
    }[case]
    run_id = recorded_search(client, experiment, search_id, "KILLED", tmp_path / "ray_results" / search_id, **tags)
    line = assert_one_line_error(cli("resume", "--config", str(QUICKSTART), cwd=tmp_path), search_id)
    expected = {
        "another state layout": "started by an older version",
        "another optuna database": "keeps its Optuna study in sqlite:////elsewhere/optuna.db",
    }[case]
    assert expected in line, line
    assert not marker.exists() and client.get_run(run_id).info.status == "KILLED"


def test_resume_in_a_folder_without_a_store(tmp_path):
    assert_one_line_error(
        cli("resume", "--config", str(QUICKSTART), cwd=tmp_path), "no MLflow database", "no search to resume"
    )
    assert os.listdir(tmp_path) == []


def test_pareto_refuses_bad_ids_folders_and_stores(tmp_path, store):
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = ["--experiment", "sparse-shape-search-quickstart", "--tracking-uri", db]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        ([*experiment, "--search", "it's"], ['"it\'s"', "not a search id"]),
        ([*experiment, "--search", 'a" or tags.x = "y'], ["not a search id"]),
        ([*experiment, "--out", str(a_file)], [str(a_file), "is a file"]),
        ([*experiment, "--out", f"{a_file}/sub"], [f"{a_file}/sub", "not writable"]),
        ([*experiment, "--search", store["FAILED"]], [store["FAILED"], "no configuration"]),
        (["--experiment", "x" * 20_000, "--tracking-uri", db], ["no MLflow experiment", "xxx..."]),
        (["--experiment", "e", "--tracking-uri", "foo://bar"], ["'foo://bar'", "scheme"]),
        (
            ["--experiment", "e", "--tracking-uri", "sqlite:////nonexistent/m.db"],
            ["no MLflow database", "/nonexistent/m.db"],
        ),
        (
            ["--experiment", "e", "--tracking-uri", f"http://me:s3cret@127.0.0.1:{closed_port()}"],
            ["cannot reach", "me:***@"],
        ),
    ]
    for args, needles in cases:
        line = assert_one_line_error(cli("pareto", *args, cwd=tmp_path, fresh="s3cret" in str(args)), *needles)
        assert "s3cret" not in line
    assert not list(tmp_path.glob("pareto-*"))


# --- the trial CLI: config, data, checkpoint and numerical failures -----------------------------

TINY_TRIAL = """data: {kind: synthetic, num_classes: 3, image_size: 16, train_size: 32, test_size: 12,
       conflicts_per_pair: 1}
training: {epochs: 1, batch_size: 16, lr: LR, threads: 1}
"""


def trial(tmp_path, *args, text=None, fresh=False):
    """`python -m trainables.trial --config trial.yaml ARGS`: in this process unless `fresh`."""
    config = tmp_path / "trial.yaml"
    if text is not None:
        config.write_text(text)
    return cli("--config", str(config), *args, cwd=tmp_path, module="trainables.trial", fresh=fresh)


def test_trial_cli_checkpoint_problems_are_one_line(tmp_path):
    from trainables.models import build_model

    text = TINY_TRIAL.replace("LR", "0.01")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    start = time.monotonic()
    assert_one_line_error(trial(tmp_path, "--checkpoint-dir", str(a_file), text=text), str(a_file), "is a file")
    assert time.monotonic() - start < 60, "checked before training"

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    torch.save({"model": build_model(3).state_dict()}, truncated / "state.pt")
    (truncated / "state.pt").write_bytes((truncated / "state.pt").read_bytes()[:5000])
    line = assert_one_line_error(trial(tmp_path, "--checkpoint-dir", str(truncated)), "truncated", "state.pt")
    assert "weights_only=False" not in line

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save(socket.socket, foreign / "state.pt")  # a pickled class: weights_only refuses it
    line = assert_one_line_error(trial(tmp_path, "--checkpoint-dir", str(foreign)), "not a readable trial checkpoint")
    assert "weights_only" not in line

    plain = tmp_path / "plain"
    plain.mkdir()
    torch.save({"weights": torch.zeros(3)}, plain / "state.pt")
    assert_one_line_error(trial(tmp_path, "--checkpoint-dir", str(plain)), "not a trial checkpoint", "'epoch'")

    other = tmp_path / "other-shape"
    other.mkdir()
    state = {
        "model": build_model(num_classes=10).state_dict(),
        "optimizer": {},
        "scheduler": {},
        "epoch": 0,
        "metrics": {},
        "rng": {},
    }
    torch.save(state, other / "state.pt")
    assert_one_line_error(trial(tmp_path, "--checkpoint-dir", str(other)), "another model", "fc.weight")


def test_trial_cli_nan_loss_and_bad_text_are_one_line(tmp_path):
    assert_one_line_error(trial(tmp_path, text=TINY_TRIAL.replace("LR", "1.0e12")), "training loss became", "lr 1e+12")
    assert_one_line_error(trial(tmp_path, text=TINY_TRIAL.replace("LR", ".nan")), "training.lr", "finite")
    assert_one_line_error(trial(tmp_path, text="seed: 1\nseed: 2\n"), "'seed'", "twice")
    (tmp_path / "trial.yaml").write_bytes(b"seed: \xff\xfe\n")
    assert_one_line_error(trial(tmp_path, fresh=True), "trial.yaml", "not UTF-8")  # a real process's exit code


def small_folders(tmp_path, shared_data):
    """A 3-class copy of the shared CIFAR-10 folders, small enough to decode in a second."""
    root = tmp_path / "cifar"
    for split in ("train", "test"):
        for name in ("airplane", "cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for image in sorted((shared_data / "cifar10" / split / name).iterdir())[:4]:
                shutil.copy(image, root / split / name)
    stimuli = tmp_path / "stimuli"
    shutil.copytree(shared_data / "cue-conflict", stimuli)
    return root, stimuli


def folder_trial(root, stimuli, **extra):
    data = {
        "kind": "folder",
        "train_dir": str(root / "train"),
        "test_dir": str(root / "test"),
        "stimuli_dir": str(stimuli),
        "image_size": 16,
        "label_space": "categories",
        **extra,
    }
    return json.dumps({"data": data, "training": {"epochs": 1, "batch_size": 4, "threads": 1}})


def test_silent_wrong_data_is_refused(tmp_path, shared_data):
    root, stimuli = small_folders(tmp_path, shared_data)
    (root / "train" / "bird").mkdir()
    (root / "test" / "bird").mkdir()
    assert_one_line_error(trial(tmp_path, text=folder_trial(root, stimuli)), str(root / "test" / "bird"), "no images")
    shutil.rmtree(root / "train" / "bird")
    shutil.rmtree(root / "test" / "bird")

    for image in (stimuli / "cat").iterdir():
        image.unlink()
    assert_one_line_error(trial(tmp_path, text=folder_trial(root, stimuli)), str(stimuli / "cat"), "no .png stimuli")
    shutil.rmtree(stimuli / "cat")
    (stimuli / "cat").symlink_to(tmp_path / "nowhere")  # a folder that cannot be read
    assert_one_line_error(trial(tmp_path, text=folder_trial(root, stimuli)), str(stimuli / "cat"), "cannot read")
    (stimuli / "cat").unlink()

    # A corrupt image in a streamed training set (not decoded up front) still ends as one line naming it.
    broken = root / "train" / "dog" / "zz-broken.png"
    broken.write_bytes(b"\x89PNG not really")
    out = trial(tmp_path, text=folder_trial(root, stimuli, in_memory_limit=0, workers=1))
    assert_one_line_error(out, "cannot decode image", str(broken))


# --- the tracker: a restarted trial logs each epoch once and drops the error it retried ---------


@pytest.fixture
def tracked(tmp_path, monkeypatch):
    """A store with a search's parent run: (client, experiment, parent run id, the searcher's config, trial config)."""
    from search_spaces.params import Params
    from trainables.config import TrialConfig

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("tracker")
    parent = client.create_run(experiment).info.run_id
    search_config = {"configuration": "c001", "seed": 0, "params": Params("layer1", 0.1, 0.02, 5e-4, 16).to_dict()}
    config = TrialConfig.model_validate({"data": {"kind": "synthetic", "train_size": 32, "test_size": 12}})
    return client, experiment, parent, search_config, config


def test_reattached_child_run_logs_each_step_once_and_drops_a_stale_error(tracked):
    from orchestrator.search.worker import MLflowTrialTracker

    client, experiment, parent, search_config, config = tracked

    first = MLflowTrialTracker(parent, experiment, "t1", search_config)
    slot = first.start(config, {})
    for epoch in (1, 2):
        first.log_epoch({"epoch": epoch, "accuracy": 0.1 * epoch})
    first.finish(RuntimeError("worker lost"))
    assert client.get_run(slot["mlflow_run_id"]).data.tags["error"] == "RuntimeError: worker lost"

    # Ray restarts the trial from its epoch-1 checkpoint: epoch 2 is trained again.
    again = MLflowTrialTracker(parent, experiment, "t1", search_config)
    again.start(config, {"mlflow_run_id": slot["mlflow_run_id"]})
    for epoch in (2, 3):
        again.log_epoch({"epoch": epoch, "accuracy": 0.1 * epoch})
    again.finish(None)
    run = client.get_run(slot["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [1, 2, 3]


def test_a_run_whose_worker_died_before_describing_it_is_taken_over_not_duplicated(tracked):
    from orchestrator.search.worker import MLflowTrialTracker

    client, experiment, parent, search_config, config = tracked

    # The first attempt created its run, then its worker was killed with the driver: tags only.
    first = MLflowTrialTracker(parent, experiment, "t1", search_config)
    first.outbox.call = lambda what, call, *args, **kwargs: (
        call(*args, **kwargs) if what == "create its MLflow run" else None
    )
    orphan = first.start(config, {})["mlflow_run_id"]
    assert not client.get_run(orphan).data.params

    # The resumed search reruns it under a new Ray trial id, with no checkpoint to name the run.
    again = MLflowTrialTracker(parent, experiment, "t2", search_config)
    assert again.start(config, {})["mlflow_run_id"] == orphan
    again.log_epoch({"epoch": 1, "accuracy": 0.5})
    again.finish(None)
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert [c.info.run_id for c in children] == [orphan]
    run = client.get_run(orphan)
    assert run.info.status == "FINISHED" and run.data.params["placement"] == "layer1"
    assert run.data.tags["ray_trial_id"] == "t2" and run.inputs.dataset_inputs


# --- slow: real searches ------------------------------------------------------------------------


def store_runs(tmp_path, experiment="sparse-shape-search-quickstart"):
    """(client, parent runs, child runs) of the search store in `tmp_path`."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return (client, *search_runs(client, experiment))


@pytest.mark.slow
def test_two_searches_started_together_in_a_fresh_folder_stay_apart(tmp_path):
    args = ["search", "--config", str(QUICKSTART), *TINY, "training.epochs=1"]
    drivers = [popen_search(*args, cwd=tmp_path) for _ in range(2)]
    outs = [d.communicate(timeout=900) for d in drivers]
    for driver, (stdout, stderr) in zip(drivers, outs, strict=True):
        assert driver.returncode == 0, stdout[-2000:] + stderr[-3000:]
    ids = [
        next(line.split()[1].rstrip(":") for line in stdout.splitlines() if line.startswith("search "))
        for stdout, _ in outs
    ]
    assert len(set(ids)) == 2, ids
    for search_id in ids:
        assert (tmp_path / f"pareto-{search_id}.csv").is_file() and (tmp_path / f"pareto-{search_id}.png").is_file()
        assert (tmp_path / "ray_results" / search_id).is_dir()
    _, parents, children = store_runs(tmp_path)
    assert sorted(p.data.tags["search_id"] for p in parents) == sorted(ids)
    assert {p.info.status for p in parents} == {"FINISHED"}
    for parent in parents:
        mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert len(mine) == 2 and {c.info.status for c in mine} == {"FINISHED"}
    import optuna

    studies = {s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'optuna.db'}")}
    assert studies == set(ids)


@pytest.mark.slow
def test_failing_trials_end_the_search_with_their_reasons_without_retries(tmp_path):
    start = time.monotonic()
    out = cli(
        "search",
        "--config",
        str(QUICKSTART),
        *TINY,
        "training.lr=1e12",
        "max_failures=3",
        cwd=tmp_path,
        timeout=900,
        fresh=True,
    )
    line = assert_one_line_error(
        out, "2 of 2 trials failed: NonFiniteLossError: training loss became nan at epoch 1 (lr 1e+12)"
    )
    _, parents, children = store_runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert "NonFiniteLossError" in parents[0].data.tags["failure_reason"]
    assert len(children) == 2 and {c.info.status for c in children} == {"FAILED"}
    assert all("restarts" not in c.data.tags for c in children), "a deterministic failure was retried"
    assert time.monotonic() - start < 600, line


def interrupted_search(tmp_path, args, how):
    """Start a search, interrupt it with signal `how` once two trials finished: (trials finished, stderr)."""
    driver = popen_search("search", *args, cwd=tmp_path)

    def finished():
        try:
            return [c for c in store_runs(tmp_path)[2] if c.info.status == "FINISHED"]
        except Exception:  # the store may not exist yet
            return []

    deadline = time.monotonic() + 600
    while len(finished()) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    assert driver.poll() is None, driver.communicate()[0][-3000:]
    done_before = len(finished())
    driver.send_signal(how)
    stdout, stderr = driver.communicate(timeout=180)
    assert driver.returncode == 130, stdout[-2000:] + stderr[-3000:]
    _, parents, _ = store_runs(tmp_path)
    assert [p.info.status for p in parents] == ["KILLED"]
    return done_before, stderr


def assert_resumed_to_the_end(tmp_path, out, done_before, configurations, seeds):
    """The resume printed its front, and every trial of the search finished once, each epoch logged once."""
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Pareto front of" in out.stdout, out.stdout[-3000:]
    progress = [line for line in out.stdout.splitlines() if "trials " in line and " done" in line]
    first_done = int(progress[0].split("trials ")[1].split(" done")[0])
    assert first_done >= done_before, progress[0]
    trials = configurations * seeds
    assert f"configurations {configurations}/{configurations} done" in progress[-1], progress[-1]
    assert f"trials {trials} done" in progress[-1], progress[-1]
    client, parents, children = store_runs(tmp_path)
    assert [p.info.status for p in parents] == ["FINISHED"] and "failure_reason" not in parents[0].data.tags
    assert len(children) == trials and {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        assert "error" not in child.data.tags
        for metric in ("epoch", "accuracy", "train_loss"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, metric)] == [1, 2], metric


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_and_resume_counts_what_was_done(tmp_path):
    args = ["--config", str(QUICKSTART), *TINY, "configurations=3", "seeds=[0, 1]"]
    done_before, stderr = interrupted_search(tmp_path, args, signal.SIGTERM)
    search_id = store_runs(tmp_path)[1][0].data.tags["search_id"]
    assert f"--search {search_id}" in stderr and "run_search.py resume --config" in stderr
    # The overrides the search started with may be given again: they change nothing.
    out = cli("resume", *args, "--search", search_id, cwd=tmp_path, timeout=900, fresh=True)
    assert_resumed_to_the_end(tmp_path, out, done_before, configurations=3, seeds=2)


@pytest.mark.slow
def test_a_trial_storage_lost_mid_search_stops_it_in_one_line_and_it_resumes_once_back(tmp_path):
    # Root ignores permissions (CI runs as root): a file in the folder's place breaks it for anyone.
    args = ["--config", str(QUICKSTART), *TINY, "configurations=3", "seeds=[0, 1]", "max_failures=2"]
    driver = popen_search("search", *args, cwd=tmp_path)
    deadline = time.monotonic() + 600
    while driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        with contextlib.suppress(Exception):  # the store may not exist yet
            if any(c.info.status == "FINISHED" for c in store_runs(tmp_path)[2]):
                break
    assert driver.poll() is None, driver.communicate()[0][-3000:]
    (folder,) = (tmp_path / "ray_results").iterdir()
    folder.rename(tmp_path / "away")
    folder.write_text("not a folder")
    stdout, stderr = driver.communicate(timeout=600)

    assert driver.returncode == 2, stdout[-2000:] + stderr[-3000:]
    line = assert_one_line_error(
        subprocess.CompletedProcess([], 2, stdout, stderr),
        f"the trial storage {folder} cannot hold checkpoints (a file replaced the folder)",
        "the search stopped",
        f"--search {folder.name}",
    )
    assert len(stderr) < 1500, stderr  # no Ray tracebacks: they are in the log file the line names
    log = Path(line.split("the libraries' own log: ")[1].rstrip(")"))
    assert "Trial task failed" in log.read_text()
    assert "lost its worker" not in stdout, stdout[-3000:]
    _, parents, children = store_runs(tmp_path)
    assert parents[0].info.status == "FAILED" and "cannot hold checkpoints" in parents[0].data.tags["failure_reason"]
    assert "RUNNING" not in {c.info.status for c in children}
    finished = {c.info.run_id: c.info.end_time for c in children if c.info.status == "FINISHED"}

    folder.unlink()
    (tmp_path / "away").rename(folder)
    out = cli("resume", *args, "--search", folder.name, cwd=tmp_path, timeout=900, fresh=True)
    # Tune's state in the folder may predate the trials that finished last: those start again,
    # find their complete runs and end at once, untouched (`assert_resumed_to_the_end` counts epochs).
    assert_resumed_to_the_end(tmp_path, out, 0, configurations=3, seeds=2)
    again = {c.info.run_id: c.info.end_time for c in store_runs(tmp_path)[2]}
    assert all(again[run] == end for run, end in finished.items()), "a finished trial was trained again"


@pytest.mark.slow
def test_a_search_stopped_with_ctrl_c_resumes_to_the_end_from_its_config_file_alone(tmp_path):
    args = ["--config", str(QUICKSTART), *TINY, "configurations=3", "seeds=[0, 1]"]
    done_before, stderr = interrupted_search(tmp_path, args, signal.SIGINT)
    search_id = store_runs(tmp_path)[1][0].data.tags["search_id"]
    # The line it prints needs none of the overrides: the search keeps the settings it started with.
    assert stderr.strip().endswith(f"run_search.py resume --config {QUICKSTART} --search {search_id}"), stderr[-2000:]
    # An override that would change the search is refused before anything runs.
    refused = cli("resume", "--config", str(QUICKSTART), "configurations=5", cwd=tmp_path)
    assert_one_line_error(
        refused, "override configurations=5 would change", search_id, "started with configurations = 3"
    )
    assert [p.info.status for p in store_runs(tmp_path)[1]] == ["KILLED"]

    out = cli("resume", "--config", str(QUICKSTART), cwd=tmp_path, timeout=900, fresh=True)
    assert_resumed_to_the_end(tmp_path, out, done_before, configurations=3, seeds=2)
    assert f"resuming search {search_id}" in out.stdout
    assert (tmp_path / f"pareto-{search_id}.csv").is_file()


@pytest.mark.slow
def test_a_cluster_too_small_for_a_trial_is_refused_before_any_run(tmp_path):
    import tempfile

    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    with open(tmp_path / "ray-head.log", "w") as log:  # the child keeps its own copy of the file
        head = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("ray")),
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                "--num-cpus=1",
                "--num-gpus=0",
                "--include-dashboard=false",
                f"--temp-dir={temp_dir}",
                "--disable-usage-stats",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "ray-head.log").read_text()[
                    -3000:
                ]
                time.sleep(1)
        time.sleep(5)  # the GCS accepts connections a moment before the node registers
        search = ["search", "--config", str(QUICKSTART), *TINY, f"address=127.0.0.1:{port}", "resources.cpu=2"]
        # Without the head's token (Ray's default authentication) the head refuses the driver.
        start = time.monotonic()
        out = cli(
            *search, cwd=tmp_path, timeout=300, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}, fresh=True
        )
        assert_one_line_error(out, f"cannot join the Ray cluster at 127.0.0.1:{port}", "RAY_AUTH_MODE=token")
        assert time.monotonic() - start < 60
        assert_nothing_written(tmp_path)

        out = cli(*search, cwd=tmp_path, timeout=300, env={"RAY_AUTH_MODE": "token"}, fresh=True)
        assert_one_line_error(out, "resources.cpu=2", "largest node has 1 CPUs")
        assert_nothing_written(tmp_path)
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_passwords_in_urls_reach_neither_mlflow_nor_the_console(tmp_path, mlflow_server):
    tracking = mlflow_server.replace("http://", "http://me:s3cret@")  # the server has no auth: it ignores them
    optuna_url = POSTGRES.replace("root@", "root:s3cret@")  # trust auth ignores the password
    out = cli(
        "search",
        "--config",
        str(QUICKSTART),
        *TINY,
        "training.epochs=1",
        f"tracking_uri={tracking}",
        f"optuna_storage={optuna_url}",
        "experiment=redaction",
        cwd=tmp_path,
        timeout=900,
        fresh=True,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "s3cret" not in out.stdout + out.stderr
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("redaction").experiment_id])
    assert len(runs) == 3
    for run in runs:
        assert "s3cret" not in json.dumps([run.data.params, run.data.tags]), run.info.run_name
    parent = next(r for r in runs if "search_id" in r.data.tags)
    spec = client.download_artifacts(parent.info.run_id, "search_spec.yaml", str(tmp_path))
    text = Path(spec).read_text()
    assert "me:***@127.0.0.1" in text and "root:***@127.0.0.1" in text and "s3cret" not in text
