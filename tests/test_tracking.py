"""Reading a search back from a real MLflow store (SQLite): the one lookup, and the one completeness rule."""

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from orchestrator.errors import SearchError
from orchestrator.tracking import collect, find_search


def make_search(client, experiment, search_id, children, status="FINISHED"):
    parent = client.create_run(experiment, tags={"search_id": search_id, "search_name": "s", "search_path": "/x"})
    client.log_param(parent.info.run_id, "seeds", "[0, 1]")
    for configuration, seed, metrics, run_status in children:
        run = client.create_run(
            experiment,
            tags={MLFLOW_PARENT_RUN_ID: parent.info.run_id, "configuration": configuration, "seed": str(seed)},
        )
        for key, value in {
            "placement": "layer2",
            "fraction": "0.1",
            "lr": "0.02",
            "weight_decay": "0.0005",
            "batch_size": "32",
            "epochs": "3",
        }.items():
            client.log_param(run.info.run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value, step=int(metrics.get("epoch", 3)))
        client.set_terminated(run.info.run_id, status=run_status)
    client.set_terminated(parent.info.run_id, status=status)
    return parent


def test_only_configurations_whose_every_seed_completed_count(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    experiment = client.create_experiment("e")
    make_search(
        client,
        experiment,
        "s-1",
        [
            ("c000", 0, {"accuracy": 0.8, "shape_bias": 0.3, "epoch": 3}, "FINISHED"),
            ("c000", 1, {"accuracy": 0.7, "shape_bias": 0.4, "epoch": 3}, "FINISHED"),
            ("c001", 0, {"accuracy": 0.8, "shape_bias": 0.3, "epoch": 3}, "FINISHED"),
            ("c001", 1, {"accuracy": 0.8, "shape_bias": 0.3, "epoch": 2}, "FINISHED"),  # partial: not a result
            ("c002", 0, {"accuracy": 0.8, "shape_bias": 0.3, "epoch": 3}, "FINISHED"),
            ("c002", 1, {"accuracy": 0.8, "shape_bias": 0.3, "epoch": 3}, "FAILED"),
            # Runs from before the `epoch` metric was logged: FINISHED meant every epoch.
            ("c003", 0, {"accuracy": 0.6, "shape_bias": 0.5}, "FINISHED"),
            ("c003", 1, {"accuracy": 0.6, "shape_bias": 0.5}, "FINISHED"),
        ],
    )
    results = collect(client, find_search(client, "e", search_id="s-1"))
    assert [r.configuration for r in results] == ["c000", "c003"]
    assert results[0].accuracy == pytest.approx(0.75) and results[0].params.fraction == 0.1


def test_find_search_by_id_newest_and_status(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    experiment = client.create_experiment("e")
    make_search(client, experiment, "s-1", [])
    make_search(client, experiment, "s-2", [], status="KILLED")
    assert find_search(client, "e").search_id == "s-2"
    assert find_search(client, "e", status="FINISHED").search_id == "s-1"
    with pytest.raises(
        SearchError, match=r"no search 's-9' in MLflow experiment 'e'; searches there: s-2 \(KILLED\), s-1 \(FINISHED\)"
    ):
        find_search(client, "e", search_id="s-9")
    with pytest.raises(SearchError, match="no MLflow experiment 'nope'.*known: Default, e"):
        find_search(client, "nope")
