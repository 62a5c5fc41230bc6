"""Choosing the configuration to promote: by id, by rule with absolute and relative floors, closest seed."""

import pytest

from orchestrator.errors import SearchError
from orchestrator.pareto import ConfigurationResult, Replicate
from orchestrator.promotion.choice import by_id, by_rule, closest_replicate, parse_floor, threshold
from search_spaces.params import Params


def configuration(name, placement, points):
    replicates = tuple(Replicate(f"{name}-run{seed}", seed, acc, bias) for seed, (acc, bias) in enumerate(points))
    params = Params(placement, 1.0 if placement == "dense" else 0.1, 0.02, 5e-4, 32)
    return ConfigurationResult(name, params, replicates)


RESULTS = [
    configuration("c000", "dense", [(0.80, 0.30), (0.78, 0.28)]),  # means 0.79, 0.29
    configuration("c001", "layer2", [(0.76, 0.40), (0.74, 0.36)]),  # 0.75, 0.38
    configuration("c002", "layer1+layer2", [(0.60, 0.50), (0.62, 0.52)]),  # 0.61, 0.51
    configuration("c003", "layer1", [(0.78, 0.33), (0.80, 0.33)]),  # 0.79, 0.33
]


def test_floors_absolute_and_relative_to_the_dense_reference():
    assert threshold(parse_floor("accuracy=0.75"), None) == 0.75
    relative = parse_floor("accuracy=dense-0.05")
    assert relative.relative and threshold(relative, RESULTS[0]) == pytest.approx(0.74)
    assert threshold(parse_floor("shape_bias=dense+0.02"), RESULTS[0]) == pytest.approx(0.31)
    for bad in ("accuracy>0.7", "loss=0.1", "accuracy=dense*2", "accuracy=", "cue_decision_rate=1.5"):
        with pytest.raises(SearchError, match="METRIC=VALUE|excludes all"):
            parse_floor(bad)
    with pytest.raises(SearchError, match="no complete dense reference"):
        threshold(relative, None)


def test_rule_maximises_one_objective_among_configurations_meeting_every_floor():
    assert by_rule(RESULTS, "shape_bias", []).result.configuration == "c002"
    assert by_rule(RESULTS, "shape_bias", [parse_floor("accuracy=dense-0.05")]).result.configuration == "c001"
    assert by_rule(RESULTS, "shape_bias", [parse_floor("accuracy=0.78")]).result.configuration == "c003"
    # Equal accuracy means (0.79): the better shape bias wins the tie.
    assert by_rule(RESULTS, "accuracy", []).result.configuration == "c003"
    choice = by_rule(RESULTS, "shape_bias", [parse_floor("accuracy=dense-0.05")])
    assert choice.dense.configuration == "c000" and choice.on_front
    assert "3 of 4 complete configurations qualify" in choice.reason  # c000, c001, c003 reach 0.74


def test_rule_that_nothing_meets_names_the_best_available():
    with pytest.raises(SearchError, match=r"no configuration of 4 meets accuracy >= 0.9 .*best seed mean 0.7900"):
        by_rule(RESULTS, "shape_bias", [parse_floor("accuracy=0.9")])
    with pytest.raises(SearchError, match="valid objectives: accuracy, shape_bias"):
        by_rule(RESULTS, "loss", [])


def test_by_id_and_unknown_or_incomplete_ids():
    assert by_id(RESULTS, "c001", ["c000", "c001", "c002", "c003"]).result.configuration == "c001"
    with pytest.raises(SearchError, match=r"no configuration 'c042' in this search; valid: c000, c001, c002, c003"):
        by_id(RESULTS, "c042", ["c000", "c001", "c002", "c003"])
    with pytest.raises(SearchError, match="c004 did not finish all its seeds"):
        by_id(RESULTS, "c004", ["c000", "c001", "c002", "c003", "c004"])


def test_closest_seed_is_the_replicate_nearest_the_means():
    three = configuration("c005", "layer2", [(0.70, 0.40), (0.75, 0.35), (0.90, 0.30)])  # means 0.7833, 0.35
    assert closest_replicate(three).seed == 1
    tied = configuration("c006", "layer2", [(0.75, 0.5), (0.5, 0.25)])  # exactly equidistant: lowest seed
    assert closest_replicate(tied).seed == 0
    # Two seeds are always equidistant from their mean, whatever float rounding says.
    two = configuration("c007", "layer2", [(0.7466666666666667, 0.3468), (0.8, 0.3144)])
    assert closest_replicate(two).seed == 0


def test_the_report_shows_held_out_shape_bias_and_plots_categories_against_dense(tmp_path):
    import csv

    from orchestrator.front_views import format_table, plot_categories, write_csv

    def held_out(result, holdouts, categories):
        replicates = tuple(
            Replicate(r.run_id, r.seed, r.accuracy, r.shape_bias, h, tuple(categories.items()))
            for r, h in zip(result.replicates, holdouts, strict=True)
        )
        return ConfigurationResult(result.configuration, result.params, replicates)

    results = [
        held_out(RESULTS[0], [0.25, 0.27], {"cat": 0.2, "dog": 0.3}),
        held_out(RESULTS[2], [0.41, 0.45], {"cat": 0.6, "dog": 0.4}),
    ]
    table = format_table(results)
    assert (
        "held-out bias" in table.splitlines()[0] and "0.430 [0.410, 0.450]" in table and "0.260 [0.250, 0.270]" in table
    )
    write_csv(results, tmp_path / "front.csv")
    rows = list(csv.DictReader((tmp_path / "front.csv").open()))
    assert [round(float(r["shape_bias_holdout_mean"]), 3) for r in rows] == [0.26, 0.43]
    assert (
        plot_categories(results, tmp_path / "categories.png", "t") and (tmp_path / "categories.png").stat().st_size > 0
    )
    # Without a report set (data.split: none) the column says so, and nothing per category means no plot.
    assert "  -  " in format_table(RESULTS) and not plot_categories(RESULTS, tmp_path / "none.png", "t")
