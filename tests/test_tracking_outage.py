"""A trial's MLflow writes survive a tracking server that goes away: a real `mlflow server`,
stopped and started again on the same port while a trial's tracker logs epochs."""

import copy
import threading

import pytest
from mlflow.tracking import MlflowClient

from conftest import MlflowServer
from orchestrator.search.outbox import Outbox
from orchestrator.search.worker import MLflowTrialTracker
from search_spaces.params import Params
from trainables.config import TrialConfig


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One real server for the module (it takes seconds to start); each test stops and starts it."""
    tmp_path = tmp_path_factory.mktemp("outage")
    server = MlflowServer(
        f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", tmp_path / "server.log", serve_artifacts=True
    )
    yield server
    server.stop()


@pytest.fixture
def server(shared_server, monkeypatch):
    """The module's server, answering as the test starts (a test before may have left it stopped)."""
    if shared_server.process is None:
        shared_server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_server.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: the outbox does the retrying
    return shared_server


def _tracker(client, experiment_name):
    """A tracker for one trial of a search whose parent run exists, in an experiment of the test's own."""
    experiment = client.get_experiment_by_name(experiment_name)
    experiment = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    parent = client.search_runs([experiment], "tags.role = 'parent'") or [
        client.create_run(experiment, tags={"role": "parent"})
    ]
    search_config = {"configuration": "c001", "seed": 0, "params": Params("layer1", 0.1, 0.02, 5e-4, 16).to_dict()}
    return lambda: MLflowTrialTracker(parent[0].info.run_id, experiment, "t1", search_config)


CONFIG = TrialConfig.model_validate({"data": {"kind": "synthetic", "train_size": 32, "test_size": 12}})


def test_epochs_logged_while_the_server_is_away_reach_it_even_through_a_lost_worker(server, capsys, request):
    client = MlflowClient(server.uri)
    new_tracker = _tracker(client, request.node.name)
    first = new_tracker()
    slot = first.start(CONFIG, {})
    first.log_epoch({"epoch": 1, "accuracy": 0.1})

    server.stop()
    first.log_epoch({"epoch": 2, "accuracy": 0.2})  # returns: training goes on
    assert sorted(step for _, _, _, step in slot["unsent"]) == [2, 2]  # held for the checkpoint
    assert "the MLflow tracking server is not answering" in capsys.readouterr().err

    # The worker is lost before the server returns; Ray restarts the trial from its epoch-2
    # checkpoint, and the new attempt waits for the server to reattach to the run.
    checkpoint = copy.deepcopy(slot)
    back = threading.Timer(3, server.start)
    back.start()
    try:
        again = new_tracker()
        again.start(CONFIG, checkpoint)
    finally:
        back.join()  # so the fixture stops the server this started, even if the test failed
    again.log_epoch({"epoch": 3, "accuracy": 0.3})
    again.finish(None)

    run = client.get_run(slot["mlflow_run_id"])
    assert (
        run.info.status == "FINISHED"
        and run.data.tags["restarts"] == "1"
        and run.data.tags["resumed_after_epoch"] == "2"
    )
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "accuracy")] == [
        (1, 0.1),
        (2, 0.2),
        (3, 0.3),
    ]
    assert "answers again after" in capsys.readouterr().err
    assert len(client.search_runs([run.info.experiment_id], "tags.configuration = 'c001'")) == 1


def test_a_trial_waits_for_the_server_to_close_its_run_and_gives_up_after_its_patience(server, capsys, request):
    client = MlflowClient(server.uri)
    tracker = _tracker(client, request.node.name)()
    slot = tracker.start(CONFIG, {})
    server.stop()
    tracker.log_epoch({"epoch": 1, "accuracy": 0.1})
    tracker.outbox.patience_s, tracker.outbox.retry_every_s = 2, 0.5
    with pytest.raises(
        ConnectionError, match=r"did not answer for \d+ s while trial c001-seed0 tried to write 2 queued"
    ):
        tracker.finish(None)
    server.start()
    tracker.finish(None)  # a later attempt (Ray's retry) gets through
    assert [m.step for m in client.get_metric_history(slot["mlflow_run_id"], "accuracy")] == [1]


def test_the_queue_is_bounded_past_it_an_epoch_waits_for_the_server(server, request):
    client = MlflowClient(server.uri)
    tracker = _tracker(client, request.node.name)()
    slot = tracker.start(CONFIG, {})
    tracker.outbox.max_pending, tracker.outbox.patience_s, tracker.outbox.retry_every_s = 6, 1, 0.5
    server.stop()
    tracker.log_epoch({"epoch": 1, "accuracy": 0.1, "loss": 1.0})  # 3 values held (epoch is one)
    tracker.log_epoch({"epoch": 2, "accuracy": 0.2, "loss": 0.9})  # 6 values held
    with pytest.raises(ConnectionError, match="9 queued metric values"):
        tracker.log_epoch({"epoch": 3, "accuracy": 0.3, "loss": 0.8})
    assert len(slot["unsent"]) == 9


def test_a_refused_write_is_not_retried(server):
    client = MlflowClient(server.uri)
    outbox = Outbox(client, "c001-seed0", patience_s=60)
    with pytest.raises(Exception, match="RESOURCE_DOES_NOT_EXIST|not found"):
        outbox.call("read a run", client.get_run, "0" * 32)


def test_a_trial_costs_the_tracking_server_one_request_per_epoch_and_a_few_around_them(server, tmp_path, request):
    """The request budget docs/scaling.md scales up: counted in the server's own access log."""
    client = MlflowClient(server.uri)
    tracker = _tracker(client, request.node.name)()
    served = _requests(server)
    tracker.start(CONFIG, {})
    for epoch in range(1, 6):
        tracker.log_epoch({"epoch": epoch, "accuracy": 0.1 * epoch, "shape_bias": 0.5, "train_loss": 1.0})
    tracker.finish(None, checkpoint_uri=str(tmp_path / "checkpoint"))
    server.stop()  # flushes the access log
    requests = _requests(server)[len(served) :]
    # The parameters, one per epoch, and the checkpoint's URI and digest as one batch of tags.
    assert sum("/runs/log-batch" in r for r in requests) == 1 + 5 + 1, requests
    # Around the epochs: search for an earlier attempt's run, create, parameters, trial_config.yaml
    # (a run lookup and an upload), inputs, the checkpoint tags, and closing (a lookup and an update).
    assert len(requests) <= 5 + 9, requests
    server.start()


def _requests(server):
    return [line.split('"')[1] for line in server.log_path.read_text().splitlines() if 'HTTP/1.1"' in line]
