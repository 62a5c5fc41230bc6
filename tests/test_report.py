"""The front's table, CSV and choice under constraints: an infeasible configuration is shown, never on the front."""

import csv

import pytest

from orchestrator.errors import SearchError
from orchestrator.front_views import format_table, write_csv
from orchestrator.pareto import ConfigurationResult, Replicate, front_of, infeasible
from orchestrator.promotion.choice import by_id, by_rule, describe
from search_spaces.constraints import floors_of, parse_floor
from search_spaces.params import Params


def configuration(name, placement, fraction, points, kept=()):
    """Two seeds of (accuracy, shape bias, cue-decision rate)."""
    replicates = tuple(
        Replicate(f"{name}-run{seed}", seed, acc, bias, cue_decision_rate=cue)
        for seed, (acc, bias, cue) in enumerate(points)
    )
    return ConfigurationResult(name, Params(placement, fraction, 0.02, 5e-4, 32), replicates, kept)


RESULTS = [
    configuration("c000", "dense", 1.0, [(0.80, 0.30, 0.90), (0.78, 0.28, 0.88)]),
    configuration("c001", "layer2", 0.078, [(0.76, 0.40, 0.85), (0.74, 0.36, 0.83)], (("layer2", 1, 16),)),
    # The highest shape bias, from a model that names a cue on a third of the conflicts: near chance.
    configuration(
        "c002", "layer1+layer2", 0.02, [(0.40, 0.55, 0.34), (0.42, 0.51, 0.30)], (("layer1", 1, 64), ("layer2", 1, 16))
    ),
]
FLOORS = floors_of({"cue_decision_rate": "dense-0.3"})


def test_a_configuration_below_a_constraint_is_infeasible_and_never_on_the_front():
    assert [r.configuration for r in front_of(RESULTS)] == ["c000", "c001", "c002"]
    assert [r.configuration for r in front_of(RESULTS, FLOORS)] == ["c000", "c001"]
    assert set(infeasible(RESULTS, FLOORS)) == {"c002"}
    assert infeasible(RESULTS, FLOORS)["c002"][FLOORS[0]] == pytest.approx(0.89 - 0.3)
    # An absolute floor the dense model misses too: then it is off the front as well.
    assert [r.configuration for r in front_of(RESULTS, [parse_floor("accuracy=0.795")])] == []


def test_the_table_shows_kept_shares_cue_rates_and_marks_the_infeasible(tmp_path):
    table = format_table(RESULTS, FLOORS)
    rows = {line.split()[0]: line for line in table.splitlines()[2:] if line[:1] == "c" and ":" not in line}
    assert "infeasible" in rows["c002"] and "1.6%+6.2%" in rows["c002"] and "0.320" in rows["c002"]
    assert " yes " in rows["c001"] and "6.2%" in rows["c001"] and "0.078" in rows["c001"]
    assert "c002 is infeasible: cue_decision_rate 0.320 < 0.590 (cue_decision_rate >= dense-0.3)" in table
    assert (
        "95% bootstrap interval of the seed mean over its 2 seeds" in table and "c001 - dense: accuracy -0.040" in table
    )
    write_csv(RESULTS, tmp_path / "front.csv", FLOORS)
    written = {r["configuration"]: r for r in csv.DictReader((tmp_path / "front.csv").open())}
    assert written["c002"]["feasible"] == "False" and written["c002"]["on_front"] == "False"
    assert written["c002"]["k"] == "layer1=1/64; layer2=1/16" and written["c001"]["kept"] == "layer2=0.0625"
    assert float(written["c002"]["cue_decision_rate_mean"]) == pytest.approx(0.32)


def test_promotion_by_rule_skips_the_infeasible_and_by_id_says_it_is():
    assert by_rule(RESULTS, "shape_bias", []).result.configuration == "c002"
    assert by_rule(RESULTS, "shape_bias", [], FLOORS).result.configuration == "c001"
    assert by_rule(RESULTS, "shape_bias", [parse_floor("cue_decision_rate=0.5")]).result.configuration == "c001"
    with pytest.raises(SearchError, match="no configuration of 3 meets cue_decision_rate >= 0.95"):
        by_rule(RESULTS, "shape_bias", [parse_floor("cue_decision_rate=0.95")])
    chosen = by_id(RESULTS, "c002", ["c000", "c001", "c002"], FLOORS)
    assert chosen.misses and not chosen.on_front
    text = describe(chosen, "s")
    assert "infeasible: misses cue_decision_rate >= dense-0.3" in text and "cue rate    0.3200 +- 0.0283" in text


def test_a_plot_of_many_configurations_labels_only_the_front_and_the_dense_reference(tmp_path, monkeypatch):
    import random

    import orchestrator.front_views as views

    rng = random.Random(0)
    many = [RESULTS[0]] + [
        configuration(f"c{i:03d}", "layer1", 0.1, [(rng.random(), rng.random(), 0.9)] * 2) for i in range(1, 41)
    ]
    labelled: list[list[str]] = []
    place = views.place_labels
    monkeypatch.setattr(
        views,
        "place_labels",
        lambda axis, points, texts, **kw: labelled.append(list(texts)) or place(axis, points, texts, **kw),
    )
    views.plot(many, tmp_path / "many.png", "many")
    expected = {views._label(r) for r in front_of(many)} | {"dense"}
    assert set(labelled[0]) == expected and len(labelled[0]) < len(many)
    views.plot(RESULTS, tmp_path / "few.png", "few")  # a few: every point labelled
    assert len(labelled[1]) == len(RESULTS)
