"""The bootstrap over seeds and paired images: intervals, differences from dense, p_front."""

import numpy as np
import pytest

from orchestrator.intervals import bootstrap
from orchestrator.pareto import ConfigurationResult, Replicate
from search_spaces.constraints import parse_floor
from search_spaces.params import Params
from trainables.per_image import PerImage, decision_codes, decode, encode


def outcomes(rng, accuracy, bias, cue=0.9, tests=400, stimuli=300):
    """Random per-image outcomes near the given rates, as a trial would log them."""
    correct = rng.random(tests) < accuracy
    draws = rng.random(stimuli)
    shape, texture = draws < cue * bias, (draws >= cue * bias) & (draws < cue)
    codes = "".join("s" if s else "t" if t else "o" for s, t in zip(shape, texture, strict=True))
    return decode(encode(correct.tolist(), {"": codes}))


def replicate(run_id, seed, per_image: PerImage):
    stimuli = per_image.stimuli[""]
    cue = stimuli.shape + stimuli.texture
    return Replicate(
        run_id,
        seed,
        float(per_image.test_correct.mean()),
        float(stimuli.shape.sum() / cue.sum()),
        cue_decision_rate=float(cue.sum() / stimuli.scored.sum()),
    )


def configuration(name, placement, seeds):
    """(name, [(run id, PerImage) per seed]) as a result and its per-image map."""
    replicates = tuple(replicate(run_id, i, p) for i, (run_id, p) in enumerate(seeds))
    return ConfigurationResult(
        name, Params(placement, 1.0 if placement == "dense" else 0.1, 0.02, 5e-4, 32), replicates
    )


def test_codes_score_as_shape_bias_scores_them():
    codes = decision_codes(
        ["cat", "dog", "car", "cat"], ["cat", "cat", "cat", "dog"], ["dog", "dog", "dog", "dog"], ["cat", "dog"]
    )
    assert codes == "sto-"  # shape, texture, another category; the last is not a conflict
    decoded = decode(encode([True, False], {"": codes}))
    assert decoded.test_correct.tolist() == [1.0, 0.0] and decoded.stimuli[""].scored.tolist() == [1, 1, 1, 0]


def test_intervals_hold_the_mean_and_pairing_cancels_shared_images():
    rng = np.random.default_rng(1)
    dense_seeds = [(f"d{i}", outcomes(rng, 0.8, 0.3)) for i in range(3)]
    # The same network twice over, one seed each: on paired images their difference is exactly 0.
    same = dense_seeds[0][1]
    results = [
        configuration("c000", "dense", dense_seeds),
        configuration("c001", "layer1", [("a0", same)]),
        configuration("c002", "layer2", [("b0", same)]),
    ]
    per_image = {
        run_id: p
        for r, seeds in zip(results, [dense_seeds, [("a0", same)], [("b0", same)]], strict=True)
        for run_id, p in seeds
    }
    got = bootstrap(results, per_image, resamples=400)
    for r in results:
        low, high = got[r.configuration].interval("accuracy")
        assert low <= r.accuracy <= high and high - low > 0.01  # images vary even for one seed
        assert got[r.configuration].images_resampled
    # c001 and c002 hold identical outcomes: the resampled images are the same for both.
    assert got["c001"].intervals == got["c002"].intervals
    diff, low, high = got["c001"].vs_dense["shape_bias"]
    assert low <= diff <= high


def test_p_front_follows_dominance_and_floors():
    rng = np.random.default_rng(2)
    seeds = lambda name, acc, bias, cue=0.9: [(f"{name}{i}", outcomes(rng, acc, bias, cue)) for i in range(2)]
    dense, better, worse, near_chance = (
        seeds("d", 0.8, 0.3),
        seeds("b", 0.92, 0.5),
        seeds("w", 0.5, 0.1),
        seeds("n", 0.3, 0.9, 0.3),
    )
    results = [
        configuration("c000", "dense", dense),
        configuration("c001", "layer1", better),
        configuration("c002", "layer2", worse),
        configuration("c003", "layer1+layer2", near_chance),
    ]
    per_image = {run_id: p for s in (dense, better, worse, near_chance) for run_id, p in s}
    unconstrained = bootstrap(results, per_image, resamples=300)
    assert unconstrained["c001"].p_front == 1.0 and unconstrained["c002"].p_front == 0.0
    assert unconstrained["c000"].p_front == 0.0 and unconstrained["c003"].p_front == 1.0
    constrained = bootstrap(results, per_image, [parse_floor("cue_decision_rate=dense-0.3")], resamples=300)
    assert constrained["c003"].p_front == 0.0 and constrained["c001"].p_front == 1.0
    assert constrained["c001"].vs_dense["shape_bias"][1] > 0  # the whole interval above dense


def test_without_per_image_outcomes_only_seeds_vary():
    results = [
        ConfigurationResult(
            "c000", Params("dense", 1.0, 0.02, 5e-4, 32), (Replicate("r0", 0, 0.8, 0.3), Replicate("r1", 1, 0.7, 0.2))
        ),
    ]
    got = bootstrap(results, {}, resamples=500)["c000"]
    assert not got.images_resampled
    assert got.interval("accuracy") == pytest.approx((0.7, 0.8))  # two seeds: the bootstrap cannot go wider
