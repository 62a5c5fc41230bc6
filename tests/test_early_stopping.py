"""Replicate-aware multi-objective early stopping: the ranking rule, the rung ladder, the spec."""

import random

import pytest

from conftest import QUICKSTART, REDUCED, run_search, search_runs
from orchestrator.pareto import dominates, hypervolume
from orchestrator.search.early_stopping import RungLadder, hypervolume_contributions, rank_order
from search_spaces.params import Params
from search_spaces.spec import ConfigError, load_spec
from trainables.config import TrialConfig


def test_hypervolume_contribution_is_the_area_a_point_alone_adds():
    points = [(0.9, 0.1), (0.8, 0.2), (0.5, 0.5), (0.1, 0.9)]
    contributions = hypervolume_contributions(points, reference=(0.0, 0.0))
    # Each point's own rectangle, between its neighbours on the front.
    assert contributions == pytest.approx([0.1 * 0.1, 0.3 * 0.1, 0.4 * 0.3, 0.1 * 0.4])
    assert hypervolume_contributions([(0.5, 0.5), (0.5, 0.5)], reference=(0.0, 0.0)) == [0.0, 0.0]


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("one_front", [True, False])
def test_each_contribution_is_what_removing_the_point_takes_away(seed, one_front):
    rng = random.Random(seed)
    points = [(rng.randint(0, 6) / 6, rng.randint(0, 6) / 6) for _ in range(rng.randint(1, 30))]
    if one_front:  # as rank_order asks: one front's members, repeats included
        points = [p for p in points if not any(dominates(q, p) for q in points)]
    reference = (0.1, 0.0)  # some points on or below it add nothing
    total = hypervolume(points, reference)
    left_out = [total - hypervolume(points[:i] + points[i + 1 :], reference) for i in range(len(points))]
    assert hypervolume_contributions(points, reference) == pytest.approx(left_out)


def test_rank_order_is_front_first_then_hypervolume_contribution_then_id():
    points = {"a": (0.9, 0.1), "b": (0.8, 0.2), "c": (0.5, 0.5), "d": (0.1, 0.9), "e": (0.4, 0.4), "f": (0.8, 0.2)}
    # e is dominated by c; c adds the most area to the front, then d, then a; b and f duplicate
    # each other, so neither adds anything alone, and the id breaks their tie.
    assert rank_order(points) == ["c", "d", "a", "b", "f", "e"]


def test_the_ladder_stops_a_configuration_as_one_and_lets_the_first_ones_through():
    ladder = RungLadder(rungs=(2, 4), reduction_factor=2)
    assert ladder.observe("c001", 0, 1, (0.1, 0.1))  # not a rung: nothing to decide
    assert ladder.observe("c001", 0, 2, (0.5, 0.5))  # the first to reach a rung always continues
    assert not ladder.observe("c002", 0, 2, (0.35, 0.35))  # 2 at the rung, keep ceil(2/2) = 1: dominated
    assert ladder.stopped_at == {"c002": 2}
    # Its other seeds follow the decision, even with better numbers, and stop at their first result.
    assert not ladder.observe("c002", 1, 1, (0.9, 0.9))
    assert not ladder.observe("c002", 1, 2, (0.9, 0.9))
    # c001's second seed joins its mean at the rung; its own decision stands.
    assert ladder.observe("c001", 1, 2, (0.3, 0.3))
    assert ladder.values[2]["c001"] == {0: (0.5, 0.5), 1: (0.3, 0.3)}
    # A third configuration: 3 at the rung, keep 2. It is judged against c001's mean (0.4, 0.4).
    assert ladder.observe("c003", 0, 2, (0.45, 0.2))  # on the front with c001; c002 (stopped, still counted) is not
    assert not ladder.observe("c004", 0, 2, (0.3, 0.3))  # 4 at the rung, keep 2: behind the front
    assert ladder.observe("c001", 0, 4, (0.6, 0.6)) and ladder.observe("c001", 0, 5, (0.6, 0.6))


def test_a_resumed_scheduler_relearns_which_configurations_were_stopped():
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from orchestrator.search.early_stopping import ReplicateSuccessiveHalving

    def trial(configuration, seed, status, epoch):
        return SimpleNamespace(
            status=status,
            config={"configuration": configuration, "seed": seed, "params": {"placement": "layer1", "fraction": 0.1}},
            last_result={"epoch": epoch, "accuracy": 0.5, "shape_bias": 0.5},
        )

    # As Tune restores a search: its scheduler as pickled at the start, then every trial added again.
    scheduler = ReplicateSuccessiveHalving([1], 2, epochs=3)
    scheduler.on_trial_add(None, trial("c001", 0, "TERMINATED", 3))  # complete: nothing to relearn
    scheduler.on_trial_add(None, trial("c002", 0, "TERMINATED", 1))  # ended at epoch 1 of 3: stopped
    scheduler.on_trial_add(None, trial("c002", 1, "PENDING", 1))  # unfinished: resumes from its checkpoint
    assert scheduler.ladder.stopped_at == {"c002": 1}
    # The unfinished seed of the stopped configuration stops at its next result, however good.
    best = {"epoch": 2, "accuracy": 0.99, "shape_bias": 0.99}
    assert scheduler.on_trial_result(None, trial("c002", 1, "RUNNING", 1), best) == TrialScheduler.STOP
    assert (
        scheduler.on_trial_result(None, trial("c003", 0, "RUNNING", 1), {**best, "epoch": 1}) == TrialScheduler.CONTINUE
    )


def test_the_driver_closes_a_stopped_run_its_worker_left_open(tmp_path):
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from orchestrator.search.early_stopping import StoppedRuns

    # Tune tore down the worker of a stopped trial before it closed its run (a slow store).
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("stopped")
    parent = client.create_run(experiment).info.run_id

    def child(configuration, seed="0"):
        tags = {MLFLOW_PARENT_RUN_ID: parent, "configuration": configuration, "seed": seed}
        return client.create_run(experiment, tags=tags).info.run_id

    # c002's run is tagged for another seed than its trial's, so only the id it reported finds it.
    stopped, complete, unreported = child("c002", seed="9"), child("c001"), child("c003")

    def trial(configuration, epoch, run_id=None):
        result = {"epoch": epoch, "accuracy": 0.5, "shape_bias": 0.5}
        return SimpleNamespace(
            config={"configuration": configuration, "seed": 0},
            last_result=result | ({"mlflow_run_id": run_id} if run_id else {}),
        )

    callback = StoppedRuns(uri, parent, epochs=3)
    callback.on_trial_complete(0, [], trial("c002", 1, stopped))  # found by the id its worker reported
    callback.on_trial_complete(0, [], trial("c003", 2))  # reported none (its first epoch never came): searched for
    callback.on_trial_complete(0, [], trial("c001", 3, complete))  # complete: its worker closes it, not the driver
    callback.on_experiment_end([])  # the closes run off Tune's event loop; the experiment's end waits for them
    for run_id, epoch in ((stopped, "1"), (unreported, "2")):
        assert client.get_run(run_id).info.status == "FINISHED"
        assert client.get_run(run_id).data.tags["stopped_at_epoch"] == epoch
    assert client.get_run(complete).info.status == "RUNNING"


def test_a_reused_worker_waits_for_a_stopped_trial_to_close_its_run():
    from orchestrator.search.outbox import PATIENCE_S
    from orchestrator.search.ray_session import worker_env

    # Tune's 2 s default: a slower close errors the next trial and hangs the search (Ray's searcher
    # never hears of that trial). A close may wait for the tracking server as long as the outbox does.
    assert float(worker_env("sqlite:///m.db")["TUNE_FUNCTION_THREAD_TIMEOUT_S"]) > PATIENCE_S


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["early_stopping={rungs: [1, 3], reduction_factor: 3}"],
            "must all lie before the last epoch (training.epochs 3)",
        ),
        (["early_stopping={rungs: [2, 1]}"], "rungs [2, 1] must be strictly increasing"),
        (["early_stopping={rungs: [1], reduction_factor: 1}"], "reduction_factor: Input should be greater than 1"),
    ],
)
def test_early_stopping_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")
    ):
        load_spec(QUICKSTART, overrides)
    assert load_spec(QUICKSTART, ["early_stopping={rungs: [1, 2]}"]).early_stopping.reduction_factor == 3


def test_a_trial_saves_its_state_at_every_rung_and_at_its_last_epoch_whatever_its_interval():
    spec = load_spec(QUICKSTART, ["training.epochs=9", "training.checkpoint_every=4", "early_stopping={rungs: [1, 3]}"])
    training = TrialConfig.model_validate(spec.trial_config(Params.dense_reference(), seed=0)).training
    assert [epoch for epoch in range(1, 10) if training.saves_checkpoint(epoch)] == [1, 3, 4, 8, 9]


@pytest.mark.slow
def test_a_search_with_early_stopping_stops_configurations_that_never_reach_the_front(tmp_path):
    import csv

    import optuna
    from mlflow.tracking import MlflowClient

    tracking, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    out = run_search(
        "search",
        "--config",
        str(QUICKSTART),
        *REDUCED,
        "configurations=5",
        "early_stopping={rungs: [1], reduction_factor: 4}",
        f"tracking_uri={tracking}",
        f"optuna_storage={storage}",
        f"storage_path={tmp_path / 'ray'}",
        "experiment=e2e-stop",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(tracking)
    parents, children = search_runs(client, "e2e-stop")
    # Every run is closed, and a stopped run did not fail: FINISHED, with the epoch it stopped at.
    assert {c.info.status for c in children} == {"FINISHED"} and parents[0].info.status == "FINISHED"
    stopped = {c.data.tags["configuration"] for c in children if "stopped_at_epoch" in c.data.tags}
    assert stopped, out.stdout[-3000:]
    for child in children:
        configuration = child.data.tags["configuration"]
        # All seeds of a configuration stop together; the dense reference never stops.
        assert ("stopped_at_epoch" in child.data.tags) == (configuration in stopped), configuration
        if configuration in stopped:
            assert child.data.tags["stopped_at_epoch"] == "1" and child.data.metrics["epoch"] == 1
    assert "c000" not in stopped
    front = list(csv.DictReader(next(tmp_path.glob("pareto-*.csv")).open()))
    assert not stopped & {row["configuration"] for row in front}  # partial scores never reach the front
    metrics = parents[0].data.metrics
    assert metrics["stopped_configurations"] == len(stopped) and metrics["epochs_saved"] == len(stopped) * 2
    assert f"early stopping: {len(stopped)} of 5 configurations stopped" in out.stdout
    # The progress chart counts every finished configuration, stopped ones included.
    history = client.get_metric_history(parents[0].info.run_id, "hypervolume")
    assert [m.step for m in history] == [1, 2, 3, 4, 5] and [m.value for m in history] == sorted(
        m.value for m in history
    )
    # Optuna heard of a stopped configuration as a failed trial, tagged, never as values.
    study = optuna.load_study(study_name=parents[0].data.tags["search_id"], storage=storage)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == len(stopped) and all(
        t.user_attrs["stopped_at_epoch"] == 1 and t.values is None for t in failed
    )
