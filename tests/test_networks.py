"""Distinct networks: fractions that keep the same k are one network, and a fraction that changes no k is refused."""

import re

import numpy as np
import optuna
import pytest
from ray.tune.search import Searcher

from conftest import QUICKSTART, ROOT
from orchestrator.search.searcher import ReplicateSearcher, make_study
from search_spaces.networks import network_of
from search_spaces.params import Params
from search_spaces.spec import ConfigError, load_spec


def test_fractions_that_keep_the_same_k_are_one_network():
    spec = load_spec(QUICKSTART, ["search.placements=[[layer1], [layer2], [layer1, layer4]]"])
    # layer2 is 4x4 at 32 px: every fraction below 1/8 keeps one position per channel.
    assert spec.network_of(Params("layer2", 0.078)) == spec.network_of(Params("layer2", 0.021))
    assert spec.network_of(Params("layer2", 0.078)) != spec.network_of(Params("layer2", 0.13))
    # layer4 is 1x1: Top-K keeps its one position, so layer1+layer4 is the layer1 network.
    assert spec.network_of(Params("layer1+layer4", 0.1)) == spec.network_of(Params("layer1", 0.1))
    assert spec.network_of(Params("layer1", 0.1)).describe() == "layer1 6/64"
    # The same k with other training knobs is another network.
    assert spec.network_of(Params("layer2", 0.05, lr=0.1)) != spec.network_of(Params("layer2", 0.05, lr=0.2))


def test_the_count_of_distinct_networks_matches_a_brute_force_sweep_of_the_fraction():
    spec = load_spec(QUICKSTART)
    maps = spec.feature_maps()
    fractions = np.linspace(spec.search.fraction.low, spec.search.fraction.high, 100_001)[:-1]
    seen = {network_of(Params("+".join(names), float(f)), maps) for names in spec.search.placements for f in fractions}
    seen.discard(spec.network_of(Params.dense_reference()))
    assert spec.distinct_networks() == len(seen) == 100


def test_a_per_placement_fraction_that_cannot_change_its_k_is_refused_naming_the_map():
    with pytest.raises(ConfigError) as refused:
        load_spec(QUICKSTART, ["search.fraction_per_placement=true"])
    message = str(refused.value)
    assert "\n" not in message
    assert "layer3's map is 2x2 at 32 px" in message and "keeps k = 1 of 4 positions" in message
    assert "fraction.layer3 searches nothing" in message
    # Where the range reaches k = 2, the same set is fine.
    load_spec(QUICKSTART, ["search.fraction_per_placement=true", "search.fraction.high=0.9"])


def test_a_set_whose_shared_fraction_changes_no_k_is_refused_and_a_fixed_placement_is_noted():
    with pytest.raises(ConfigError, match=re.escape("layer4's map is 1x1 at 32 px")):
        load_spec(QUICKSTART, ["search.placements=[[layer1], [layer4]]"])
    notes = load_spec(QUICKSTART).network_notes()
    assert len(notes) == 1 and "in layer1+layer2+layer3, layer3's map is 2x2" in notes[0]


def test_more_configurations_than_distinct_networks_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="configurations 102 exceeds the 100 distinct networks the space holds"):
        load_spec(QUICKSTART, ["configurations=102"])
    assert load_spec(QUICKSTART, ["configurations=101"]).configurations == 101
    # A searched learning rate makes every proposal another network: no limit.
    assert load_spec(QUICKSTART, ["search.lr={low: 0.01, high: 0.1}"]).distinct_networks() is None


@pytest.mark.parametrize("preset", ["paper_vgg16.yaml", "paper_alexnet.yaml"])
def test_the_paper_presets_run_the_authors_grid_of_six_fractions(preset, tmp_path, shared_data):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")  # validation only checks that the file is there
    folders = [f"data.{d}_dir={shared_data}/filled-silhouettes" for d in ("train", "test")]
    spec = load_spec(
        ROOT / "search_spaces" / preset,
        [f"model.weights={weights}", f"data.stimuli_dir={shared_data}/cue-conflict", *folders],
    )
    assert spec.sampler == "grid" and spec.search.grid_space()["fraction"] == [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert spec.configurations == 7 and spec.distinct_networks() == 6


def three_network_spec(tmp_path, *overrides):
    # layer2 (4x4) over [0.02, 0.2]: k = 1 below 0.125, 2 below 0.1875, 3 above: three networks.
    return load_spec(
        QUICKSTART,
        [
            "search.placements=[[layer2]]",
            "search.fraction.high=0.2",
            "seeds=[0]",
            f"optuna_storage=sqlite:///{tmp_path}/o.db",
            *overrides,
        ],
    )


def result(accuracy, shape_bias, epochs=3, cue=0.8):
    return {"accuracy": accuracy, "shape_bias": shape_bias, "cue_decision_rate": cue, "epoch": epochs}


def test_a_repeated_network_is_not_trained_again_but_optuna_is_told_its_results(tmp_path):
    spec = three_network_spec(tmp_path, "configurations=4")
    searcher = ReplicateSearcher.for_spec(spec, make_study(spec, "distinct"))
    configs = []
    while (config := searcher.suggest(f"t{len(configs)}")) != Searcher.FINISHED:
        configs.append(config)
        searcher.on_trial_complete(f"t{len(configs) - 1}", result(0.5 + 0.1 * len(configs), 0.2))
    trained = [spec.network_of(Params.from_dict(c["params"])) for c in configs]
    assert len(configs) == 4 and len(set(trained)) == 4  # the dense reference and all three Top-K networks
    study = optuna.load_study(study_name="distinct", storage=f"sqlite:///{tmp_path}/o.db")
    reused = [t for t in study.trials if "reused_configuration" in t.user_attrs]
    assert reused, "random search over three networks proposes one twice (fixed sampler seed)"
    by_id = {c["configuration"]: c for c in configs}
    for trial in reused:
        original = by_id[trial.user_attrs["reused_configuration"]]
        assert spec.network_of(Params.from_dict(trial.params)) == spec.network_of(Params.from_dict(original["params"]))
        told = next(t for t in study.trials if t.params == original["params"])
        assert trial.state == optuna.trial.TrialState.COMPLETE and trial.values == told.values


def test_a_sampler_that_proposes_only_repeats_ends_the_search_and_says_why(tmp_path, capsys):
    spec = three_network_spec(tmp_path, "configurations=4")
    study = make_study(spec, "exhausted")
    # Built without the spec's limit: five configurations asked of a space with four networks.
    searcher = ReplicateSearcher(
        study=study,
        space=spec.search,
        seeds=[0],
        configurations=5,
        epochs=3,
        network_of=spec.network_of,
        max_repeats=30,
    )
    answers = [searcher.suggest(f"t{i}") for i in range(5)]
    assert answers[-1] == Searcher.FINISHED and all(isinstance(a, dict) for a in answers[:4])
    assert "proposed 30 networks in a row" in study.user_attrs["ended_early"]
    assert "note: the sampler proposed 30 networks in a row" in capsys.readouterr().out


def test_a_floor_relative_to_dense_is_told_once_the_dense_reference_ends(tmp_path):
    spec = three_network_spec(tmp_path, "configurations=3", "constraints={cue_decision_rate: dense-0.1}")
    searcher = ReplicateSearcher.for_spec(spec, make_study(spec, "relative"))
    dense, first = searcher.suggest("dense"), searcher.suggest("first")
    assert dense["configuration"] == "c000" and first["configuration"] == "c001"
    searcher.on_trial_complete("first", result(0.7, 0.3, cue=0.5))
    study = optuna.load_study(study_name="relative", storage=f"sqlite:///{tmp_path}/o.db")
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING  # waits for the dense reference's rate
    searcher.on_trial_complete("dense", result(0.7, 0.2, cue=0.9))
    trial = optuna.load_study(study_name="relative", storage=f"sqlite:///{tmp_path}/o.db").trials[0]
    # Floor 0.9 - 0.1 = 0.8 against a rate of 0.5: infeasible (> 0) for the samplers.
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.constraints == {"cue_decision_rate_floor": pytest.approx(0.3)}
    assert trial.user_attrs["cue_decision_rate_mean"] == pytest.approx(0.5)


def test_placement_sets_may_name_one_stage_and_its_last_block_apart():
    # layer2 and layer2.1 are the same tensor: refused within a set, fine in different sets.
    spec = load_spec(QUICKSTART, ["search.placements=[[layer2], [layer2.1], [layer2.0]]"])
    assert {name: (m.height, m.width) for name, m in spec.feature_maps().items()} == {
        "layer2": (4, 4),
        "layer2.1": (4, 4),
        "layer2.0": (4, 4),
    }
    with pytest.raises(ConfigError, match="same tensor"):
        load_spec(QUICKSTART, ["search.placements=[[layer2, layer2.1]]"])
