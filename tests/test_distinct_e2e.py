"""Searches end to end (real Ray, Optuna, MLflow): each network trained once, and a broken model kept off the front."""

import csv

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import QUICKSTART, run_search, search_runs

pytestmark = pytest.mark.slow


def network_key(child):
    """What a child run trained: k at each placement it logged, and its training knobs."""
    params = child.data.params
    kept = tuple(sorted((k, v) for k, v in params.items() if k.startswith("k.")))
    return kept, params["lr"], params["weight_decay"], params["batch_size"]


def test_a_search_of_24_configurations_trains_24_distinct_networks(tmp_path):
    # The quickstart's space at one seed and one epoch, on fewer images (what is compared is the
    # network each configuration trains, not how well it learns).
    out = run_search(
        "search",
        "--config",
        str(QUICKSTART),
        "configurations=24",
        "seeds=[0]",
        "training.epochs=1",
        "data.train_size=160",
        "data.test_size=60",
        "data.conflicts_per_pair=2",
        "training.batch_size=16",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "note: in layer1+layer2+layer3, layer3's map is 2x2 at 32 px" in out.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, children = search_runs(client)
    assert len(children) == 24 and {c.info.status for c in children} == {"FINISHED"}
    keys = [network_key(c) for c in children]
    assert len(set(keys)) == 24, sorted(keys)
    for child in children:
        params, placement = child.data.params, child.data.params["placement"]
        for name in [] if placement == "dense" else placement.split("+"):
            positions = {"layer1": 64, "layer2": 16, "layer3": 4}[name]
            assert float(params[f"kept.{name}"]) == pytest.approx(int(params[f"k.{name}"]) / positions, rel=1e-5)
        assert {"cue_decision_rate", "cue_decision_rate_holdout"} <= set(child.data.metrics)
        assert (child.data.tags["network"] == "dense") == (placement == "dense")
    # Every proposal the sampler repeated was told the results of the configuration it repeats.
    search_id = parents[0].data.tags["search_id"]
    study = optuna.load_study(study_name=search_id, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    reused = [t for t in study.trials if "reused_configuration" in t.user_attrs]
    assert len(study.trials) == 23 + len(reused)
    by_configuration = {c.data.tags["configuration"]: c for c in children}
    for trial in reused:
        original = by_configuration[trial.user_attrs["reused_configuration"]]
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.values == [original.data.metrics["accuracy"], original.data.metrics["shape_bias"]]
    assert f"{len(reused)} of the sampler's {len(study.trials)} proposals repeated one of them" in out.stdout
    assert parents[0].data.metrics["reused_proposals"] == len(reused)


def test_a_configuration_that_stops_naming_either_cue_is_infeasible_and_off_the_front(tmp_path):
    # One position kept per channel after every stage: the network recognises less, and its shape
    # bias can still rise (it does here). Seed 0, 3 epochs on the CPU: the same numbers every run.
    out = run_search(
        "search",
        "--config",
        str(QUICKSTART),
        "sampler=grid",
        "search.fraction.grid=[0.02]",
        "search.placements=[[stem, layer1, layer2, layer3]]",
        "configurations=2",
        "seeds=[0]",
        "constraints={cue_decision_rate: dense-0.05}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, children = search_runs(client)
    rate = {c.data.tags["configuration"]: c.data.metrics["cue_decision_rate"] for c in children}
    assert rate["c001"] < rate["c000"] - 0.05, rate  # the constraint bites: the test can fail
    rows = {r["configuration"]: r for r in csv.DictReader(next(tmp_path.glob("pareto-*.csv")).open())}
    assert rows["c001"]["feasible"] == "False" and rows["c001"]["on_front"] == "False"
    assert rows["c001"]["infeasible_because"] == "cue_decision_rate >= dense-0.05"
    assert rows["c000"]["feasible"] == "True" and rows["c000"]["on_front"] == "True"
    assert "c001 is infeasible: cue_decision_rate" in out.stdout
    # Optuna was told: its constraint is positive (infeasible) by the amount the rate misses the floor.
    study = optuna.load_study(study_name=parents[0].data.tags["search_id"], storage=f"sqlite:///{tmp_path}/optuna.db")
    (trial,) = study.trials
    assert trial.constraints["cue_decision_rate_floor"] == pytest.approx(rate["c000"] - 0.05 - rate["c001"])
    assert parents[0].data.params["constraints"] == '{"cue_decision_rate": "dense-0.05"}'
