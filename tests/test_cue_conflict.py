"""Shape bias: the reference decisions, the stimuli loader, label mappings, CSV round trip."""

import csv
import json
import math
import shutil

import pytest
import torch

from trainables.cue_conflict import (
    load_stimuli,
    read_decisions_csv,
    score_decisions,
    shape_bias_from_csv,
    write_decisions_csv,
)
from trainables.evaluate import evaluate_shape_bias
from trainables.label_spaces import (
    CATEGORIES,
    LabelMapping,
    cifar10_mapping,
    imagenet_mapping,
    mapping_from_names,
    native_mapping,
)


@pytest.mark.parametrize("name", ["resnet50.csv", "vgg16.csv", "human-subject-01.csv"])
def test_reference_decisions_give_expected_shape_bias(shared_data, name):
    expected = json.loads((shared_data / "reference-decisions" / "expected.json").read_text())[name]
    result = shape_bias_from_csv(shared_data / "reference-decisions" / name)
    assert round(result.shape_bias, 4) == expected["shape_bias"]
    assert result.shape_decisions == expected["shape_decisions"]
    assert result.texture_decisions == expected["texture_decisions"]
    assert result.scored == 1200 and result.excluded == 0


# The cue-decision rate of the published decisions: (shape + texture decisions) / the 1,200 conflicts.
@pytest.mark.parametrize(
    ("name", "rate"), [("vgg16.csv", 0.76), ("resnet50.csv", 0.6117), ("human-subject-01.csv", 0.7183)]
)
def test_reference_decisions_give_their_cue_decision_rate(shared_data, name, rate):
    expected = json.loads((shared_data / "reference-decisions" / "expected.json").read_text())[name]
    result = shape_bias_from_csv(shared_data / "reference-decisions" / name)
    assert result.cue_decision_rate == (expected["shape_decisions"] + expected["texture_decisions"]) / 1200
    assert round(result.cue_decision_rate, 4) == rate
    assert math.isclose(result.cue_decision_rate, result.shape_accuracy + result.texture_accuracy)


def test_a_near_chance_model_scores_high_shape_bias_and_a_low_cue_decision_rate():
    # Decisions that name the shape on 1 of 10 conflicts, the texture on none: shape bias 1.0, rate 0.1.
    shapes, textures = ["cat"] * 10, ["dog"] * 10
    result = score_decisions(["cat"] + ["car"] * 9, shapes, textures, nameable={"cat", "dog", "car"})
    assert result.shape_bias == 1.0 and math.isclose(result.cue_decision_rate, 0.1)


def test_score_counts_and_exclusions():
    decisions = ["cat", "dog", "car", "cat", "bear", "cat"]
    shapes = ["cat", "cat", "cat", "cat", "bear", "dog"]
    textures = ["dog", "dog", "dog", "cat", "cat", "bear"]
    result = score_decisions(decisions, shapes, textures, nameable={"cat", "dog", "car"})
    # index 3 is not a conflict; 4 and 5 involve bear, which the model cannot name.
    assert (result.shape_decisions, result.texture_decisions, result.other_decisions) == (1, 1, 1)
    assert result.excluded == 2
    assert result.shape_bias == 0.5
    assert math.isclose(result.shape_accuracy, 1 / 3) and math.isclose(result.texture_accuracy, 1 / 3)


def test_imagenet_mapping_uses_mean_of_member_probabilities():
    mapping = imagenet_mapping()
    assert sum(len(m) for m in mapping.members) == 207 and mapping.categories == CATEGORIES
    logits = torch.full((1, 1000), -10.0)
    bird = mapping.members[CATEGORIES.index("bird")]
    # One bird class very likely, but the mean over 49 bird classes loses to the single airplane class.
    logits[0, bird[0]] = 5.0
    logits[0, 404] = 4.0
    assert mapping.decide(logits) == ["airplane"]


def test_cifar_mapping_names_seven_categories():
    mapping = cifar10_mapping()
    assert set(mapping.categories) == {"airplane", "car", "bird", "cat", "dog", "boat", "truck"}
    logits = torch.zeros(1, 10)
    logits[0, 8] = 3.0  # ship
    assert mapping.decide(logits) == ["boat"]


def test_custom_and_native_mappings():
    mapping = mapping_from_names(["tabby", "siamese", "beagle"], {"cat": ["tabby", "siamese"], "dog": ["beagle"]})
    assert mapping.members == ((0, 1), (2,))
    assert native_mapping(CATEGORIES).decide(torch.eye(16)[[3]]) == ["bird"]
    with pytest.raises(ValueError, match="unknown classes"):
        mapping_from_names(["a"], {"cat": ["tabby"]})
    with pytest.raises(ValueError, match="outside"):
        LabelMapping(("cat",), ((5,),), 3)


def test_stimuli_load_once_and_in_layout(shared_data):
    stimuli = load_stimuli(shared_data / "cue-conflict")
    assert stimuli.images.shape == (1280, 3, 224, 224) and stimuli.images.dtype == torch.uint8
    assert sum(s != t for s, t in zip(stimuli.shapes, stimuli.textures, strict=True)) == 1200
    assert load_stimuli(str(shared_data / "cue-conflict")) is stimuli


def test_model_evaluation_and_csv_round_trip(shared_data, tmp_path):
    stimuli = load_stimuli(shared_data / "cue-conflict")
    torch.manual_seed(0)
    # A tiny 16-way model on 32 px: enough to exercise resize, normalise and decide.
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 16))
    result, decisions = evaluate_shape_bias(model, stimuli, native_mapping(CATEGORIES), image_size=32)
    assert len(decisions) == 1280 and set(decisions) <= set(CATEGORIES)
    assert result.scored == 1200
    path = tmp_path / "decisions.csv"
    write_decisions_csv(path, stimuli, decisions, subject="tiny")
    assert read_decisions_csv(path)[0] == decisions
    assert shape_bias_from_csv(path) == result


def test_missing_empty_and_wrong_layout_name_the_path(tmp_path, shared_data):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_stimuli(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=str(empty)):
        load_stimuli(empty)
    wrong = tmp_path / "wrong" / "cat"
    wrong.mkdir(parents=True)
    shutil.copy(shared_data / "cue-conflict" / "dog" / "dog1-bear1.png", wrong / "dog1-bear1.png")
    with pytest.raises(ValueError, match="dog1-bear1.png"):
        load_stimuli(wrong.parent)


def test_unreadable_image_names_the_file(tmp_path):
    folder = tmp_path / "broken" / "cat"
    folder.mkdir(parents=True)
    (folder / "cat1-dog1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cat1-dog1.png"):
        load_stimuli(folder.parent)


def test_per_category_shape_bias_adds_up_to_the_whole(shared_data):
    from trainables.cue_conflict import read_decisions_csv, score_decisions, shape_bias_per_category
    from trainables.label_spaces import CATEGORIES

    decisions, shapes, textures = read_decisions_csv(shared_data / "reference-decisions" / "vgg16.csv")
    per_category = shape_bias_per_category(decisions, shapes, textures, CATEGORIES)
    assert set(per_category) <= set(CATEGORIES) and len(per_category) >= 12
    # Recounted by hand for one category: shape decisions over shape-or-texture decisions.
    cat = [(d, t) for d, s, t in zip(decisions, shapes, textures, strict=True) if s == "cat" and s != t]
    shape_hits, texture_hits = sum(d == "cat" for d, _ in cat), sum(d == t for d, t in cat)
    assert per_category["cat"] == pytest.approx(shape_hits / (shape_hits + texture_hits))
    # Weighted by each category's cue decisions, the categories give back the overall figure.
    counts = {
        c: score_decisions(
            *zip(*[(d, s, t) for d, s, t in zip(decisions, shapes, textures, strict=True) if s == c], strict=True),
            CATEGORIES,
        )
        for c in per_category
    }
    hits = sum(r.shape_decisions for r in counts.values())
    cues = sum(r.shape_decisions + r.texture_decisions for r in counts.values())
    assert hits / cues == pytest.approx(score_decisions(decisions, shapes, textures, CATEGORIES).shape_bias)


def test_the_stimuli_split_is_stratified_disjoint_and_the_same_every_time(shared_data):
    from collections import Counter

    from trainables.cue_conflict import load_stimuli, split_stimuli

    stimuli = load_stimuli(shared_data / "cue-conflict")
    selection, report = split_stimuli(stimuli)
    assert len(selection) + len(report) == len(stimuli) == 1280
    assert not set(selection.names) & set(report.names)
    groups = [Counter(zip(half.shapes, half.textures, strict=True)) for half in (selection, report)]
    # Every (shape, texture) group of 5 gives 2 or 3 images to each half, so both halves hold every
    # group and the halves differ by at most one image per group.
    assert set(groups[0]) == set(groups[1]) == set(zip(stimuli.shapes, stimuli.textures, strict=True))
    assert all(abs(groups[0][key] - groups[1][key]) <= 1 for key in groups[0])
    assert abs(len(selection) - len(report)) <= 1
    again = split_stimuli(stimuli)
    assert again[0].names == selection.names and torch.equal(again[1].images, report.images)
    index = stimuli.names.index(report.names[0])
    assert torch.equal(report.images[0], stimuli.images[index])


def test_the_synthetic_report_set_is_the_same_design_on_other_images():
    from trainables.synthetic import make_benchmark

    bench = make_benchmark(num_classes=3, train_size=30, test_size=12, conflicts_per_pair=4, report_set=True)
    assert bench.holdout.names == bench.conflict.names and bench.holdout.shapes == bench.conflict.shapes
    assert not any(torch.equal(a, b) for a, b in zip(bench.holdout.images, bench.conflict.images, strict=True))
    plain = make_benchmark(num_classes=3, train_size=30, test_size=12, conflicts_per_pair=4)
    # Asking for the report set changes nothing a search without one would see.
    assert plain.holdout is None and torch.equal(plain.conflict.images, bench.conflict.images)


def test_two_halves_of_the_stimuli_disagree_on_one_model_as_the_readme_says(shared_data):
    """The README's yardstick: the published VGG-16 / ResNet-50 decisions scored on either half."""
    from trainables.cue_conflict import load_stimuli, split_stimuli

    halves = split_stimuli(load_stimuli(shared_data / "cue-conflict"))
    for name, expected in (("vgg16.csv", (0.103, 0.082)), ("resnet50.csv", (0.250, 0.192))):
        decisions, shapes, textures = read_decisions_csv(shared_data / "reference-decisions" / name)
        with (shared_data / "reference-decisions" / name).open() as handle:
            row_of = {row["imagename"].rsplit("_", 1)[-1]: i for i, row in enumerate(csv.DictReader(handle))}
        for half, value in zip(halves, expected, strict=True):
            rows = [row_of[n] for n in half.names]
            result = score_decisions(
                [decisions[i] for i in rows], [shapes[i] for i in rows], [textures[i] for i in rows], CATEGORIES
            )
            assert f"{result.shape_bias:.3f}" == f"{value:.3f}", name
