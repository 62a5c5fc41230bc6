"""Non-dominated sorting, hypervolume, and the replicate searcher's bookkeeping with real Optuna."""

import random

import optuna
import pytest
from ray.tune.search import Searcher

from conftest import QUICKSTART
from orchestrator.pareto import dominates, hypervolume, non_dominated_ranks
from orchestrator.search.searcher import ReplicateSearcher, make_study
from search_spaces.spec import load_spec


def test_dominance_and_ranks():
    assert dominates((0.8, 0.3), (0.7, 0.3)) and not dominates((0.8, 0.3), (0.8, 0.3))
    points = [(0.9, 0.1), (0.8, 0.3), (0.7, 0.2), (0.5, 0.5), (0.4, 0.4), (0.9, 0.05)]
    assert non_dominated_ranks(points) == [0, 0, 1, 0, 1, 1]


def removing_front_after_front(points):
    """The definition of the ranks, computed the slow way."""
    ranks, remaining, rank = [-1] * len(points), set(range(len(points))), 0
    while remaining:
        front = {i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining)}
        for i in front:
            ranks[i] = rank
        remaining, rank = remaining - front, rank + 1
    return ranks


@pytest.mark.parametrize("seed", range(20))
def test_the_sweep_ranks_as_the_definition_does_with_ties_and_repeats(seed):
    rng = random.Random(seed)
    # Values on a coarse grid, so that equal coordinates and repeated points are common.
    points = [(rng.randint(0, 8) / 8, rng.randint(0, 8) / 8) for _ in range(rng.randint(1, 60))]
    assert non_dominated_ranks(points) == removing_front_after_front(points)


def test_hypervolume_of_a_staircase():
    # Rectangles from (0, 0): 0.9*0.1 + 0.8*(0.3-0.1) + 0.5*(0.5-0.3) = 0.35
    assert hypervolume([(0.9, 0.1), (0.8, 0.3), (0.5, 0.5)]) == pytest.approx(0.35)
    assert hypervolume([(0.9, 0.1), (0.8, 0.3), (0.5, 0.5), (0.4, 0.2)]) == pytest.approx(0.35)
    assert hypervolume([]) == 0.0


def test_replicates_dense_first_then_optuna_told_the_means(tmp_path):
    spec = load_spec(
        QUICKSTART,
        ["configurations=3", "seeds=[0, 1]", "accuracy_floor=0.75", f"optuna_storage=sqlite:///{tmp_path}/o.db"],
    )
    searcher = ReplicateSearcher.for_spec(spec, make_study(spec, "unit"))
    configs = [searcher.suggest(f"t{i}") for i in range(6)]
    assert searcher.suggest("t6") == Searcher.FINISHED
    assert [(c["configuration"], c["seed"]) for c in configs] == [
        ("c000", 0),
        ("c000", 1),
        ("c001", 0),
        ("c001", 1),
        ("c002", 0),
        ("c002", 1),
    ]
    # Tune's config names the parameters; the worker makes the trial config from them and the seed.
    assert all(set(c) == {"configuration", "seed", "params"} for c in configs)
    assert spec.trial_config(configs[0]["params"], 0)["model"]["topk"] == {}
    assert configs[2]["params"] == configs[3]["params"] and spec.trial_config(configs[2]["params"], 0)["model"]["topk"]
    result = lambda acc, bias, epoch=3: {"accuracy": acc, "shape_bias": bias, "epoch": epoch}
    searcher.on_trial_complete("t0", result(0.7, 0.2))
    searcher.on_trial_complete("t1", result(0.7, 0.2))
    searcher.on_trial_complete("t2", result(0.8, 0.3))
    searcher.on_trial_complete("t3", result(0.6, 0.5))
    searcher.on_trial_complete("t4", result(0.8, 0.3, epoch=2))  # partial: fails its configuration
    searcher.on_trial_complete("t5", result(0.8, 0.3))
    study = optuna.load_study(study_name="unit", storage=f"sqlite:///{tmp_path}/o.db")
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert study.trials[0].values == [pytest.approx(0.7), pytest.approx(0.4)]
    assert study.trials[0].user_attrs["shape_bias_std"] == pytest.approx(0.1414, abs=1e-4)  # sample sd of 0.3, 0.5
    # Mean accuracy 0.7 under a 0.75 floor: infeasible (> 0) for the samplers.
    assert study.trials[0].constraints == {"accuracy_floor": pytest.approx(0.05)}


def test_hypervolume_is_logged_per_finished_configuration_above_the_dense_reference(tmp_path):
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from orchestrator.search.progress import HypervolumeLog

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("hv")).info.run_id
    log = HypervolumeLog(uri, parent, "dense", seeds=2, epochs=3)

    def finish(configuration, placement, seed, accuracy, shape_bias):
        trial = SimpleNamespace(
            trial_id=f"{configuration}-{seed}",
            status="TERMINATED",
            config={"configuration": configuration, "params": {"placement": placement, "fraction": 0.1}},
            last_result={"epoch": 3, "accuracy": accuracy, "shape_bias": shape_bias},
        )
        log.on_trial_complete(0, [], trial)

    finish("c001", "layer1", 0, 0.8, 0.4)
    finish("c001", "layer1", 1, 0.8, 0.4)  # complete, but the dense reference is not yet: nothing to measure from
    finish("c000", "dense", 0, 0.7, 0.3)
    finish("c000", "dense", 1, 0.7, 0.3)  # now 2 configurations: (0.8 - 0.7) x (0.4 - 0.3)
    finish("c002", "layer2", 0, 0.6, 0.9)  # one seed of two: not yet a configuration
    log.on_experiment_end([])  # the points are logged off Tune's event loop; the experiment's end waits for them
    history = client.get_metric_history(parent, "hypervolume")
    assert [(m.step, round(m.value, 6)) for m in history] == [(2, 0.01)]
    # A restored callback (Tune unpickles it on resume) recounts what ended before, logging nothing.
    import pickle

    restored = pickle.loads(pickle.dumps(log))
    ended = [
        SimpleNamespace(
            trial_id=f"{c}-{s}",
            status="TERMINATED",
            config={"configuration": c, "params": {"placement": p, "fraction": 0.1}},
            last_result={"epoch": 3, "accuracy": a, "shape_bias": b},
        )
        for c, p, a, b in (("c000", "dense", 0.7, 0.3), ("c001", "layer1", 0.8, 0.4))
        for s in (0, 1)
    ]
    restored.on_step_begin(0, ended)
    restored.on_trial_complete(
        0,
        [],
        SimpleNamespace(
            trial_id="c003-0",
            status="TERMINATED",
            config={"configuration": "c003", "params": {"placement": "layer2", "fraction": 0.2}},
            last_result={"epoch": 2, "accuracy": 0.9, "shape_bias": 0.9},
        ),
    )  # partial: not a result
    restored.on_experiment_end([])
    assert len(client.get_metric_history(parent, "hypervolume")) == 1
    for seed in (0, 1):  # after the resume the count goes on from the configurations that ended before it
        restored.on_trial_complete(
            0,
            [],
            SimpleNamespace(
                trial_id=f"c004-{seed}",
                status="TERMINATED",
                config={"configuration": "c004", "params": {"placement": "layer2", "fraction": 0.3}},
                last_result={"epoch": 3, "accuracy": 0.75, "shape_bias": 0.5},
            ),
        )
    restored.on_experiment_end([])
    history = client.get_metric_history(parent, "hypervolume")
    assert [(m.step, round(m.value, 6)) for m in history] == [(2, 0.01), (3, 0.015)]

    # A configuration stopped early, or failed, has finished too: the step moves on, the front does
    # not (so searches with and without early stopping share one x axis).
    def stopped(seed):
        return SimpleNamespace(
            trial_id=f"c005-{seed}",
            status="TERMINATED",
            config={"configuration": "c005", "params": {"placement": "layer1", "fraction": 0.4}},
            last_result={"epoch": 1, "accuracy": 0.99, "shape_bias": 0.99},
        )

    restored.on_trial_complete(0, [], stopped(0))
    restored.on_trial_complete(0, [], stopped(1))
    failed = SimpleNamespace(
        trial_id="c006-0",
        status="ERROR",
        config={"configuration": "c006", "params": {"placement": "layer1", "fraction": 0.5}},
        last_result={"epoch": 3, "accuracy": 0.99, "shape_bias": 0.99},
    )  # failed while closing its run
    restored.on_trial_error(0, [], failed)
    restored.on_trial_complete(
        0,
        [],
        SimpleNamespace(
            trial_id="c006-1",
            status="TERMINATED",
            config=failed.config,
            last_result={"epoch": 3, "accuracy": 0.99, "shape_bias": 0.99},
        ),
    )
    restored.on_experiment_end([])
    history = client.get_metric_history(parent, "hypervolume")
    assert [(m.step, round(m.value, 6)) for m in history] == [(2, 0.01), (3, 0.015), (4, 0.015), (5, 0.015)]


def test_a_whole_grid_is_asked_and_told_through_the_searcher(tmp_path):
    # GridSampler stops its study after the last point, which raises outside Study.optimize.
    spec = load_spec(
        QUICKSTART,
        [
            "sampler=grid",
            "search.fraction.grid=[0.1, 0.25, 0.5]",
            "search.placements=[[layer1], [layer2]]",
            "configurations=7",
            "seeds=[0]",
            f"optuna_storage=sqlite:///{tmp_path}/o.db",
        ],
    )
    searcher = ReplicateSearcher.for_spec(spec, make_study(spec, "grid"))
    for i in range(7):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"accuracy": 0.5, "shape_bias": 0.1 * i, "epoch": spec.training.epochs})
    assert searcher.suggest("t7") == Searcher.FINISHED
    study = optuna.load_study(study_name="grid", storage=f"sqlite:///{tmp_path}/o.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 6
    assert {(t.params["placement"], t.params["fraction"]) for t in study.trials} == {
        (p, f) for p in ("layer1", "layer2") for f in (0.1, 0.25, 0.5)
    }
    assert config["params"]["placement"] in ("layer1", "layer2")
