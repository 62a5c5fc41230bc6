"""The confirmation test on fixed numbers: Welch's interval and p, Holm's adjustment, the verdict in words."""

import math

import pytest
from scipy import stats

from orchestrator.confirmation import confirm, holm, welch
from orchestrator.pareto import ConfigurationResult, Replicate
from search_spaces.params import Params


def test_welch_matches_scipy_and_says_nothing_without_spread():
    gain = welch([0.42, 0.47, 0.45], [0.30, 0.33, 0.31])
    test = stats.ttest_ind([0.42, 0.47, 0.45], [0.30, 0.33, 0.31], equal_var=False)
    assert gain.gain == pytest.approx(0.1333, abs=1e-4) and gain.p == pytest.approx(test.pvalue)
    assert gain.low < gain.gain < gain.high and gain.low > 0
    # A wider interval at a stricter level (Bonferroni for a family).
    assert welch([0.42, 0.47, 0.45], [0.30, 0.33, 0.31], level=0.99).low < gain.low
    # Identical seeds on both sides: scipy would say p = 0; there is nothing to test.
    flat = welch([0.5, 0.5], [0.4, 0.4])
    assert flat.gain == pytest.approx(0.1) and math.isnan(flat.p) and math.isnan(flat.low)
    assert math.isnan(welch([0.5], [0.4, 0.45]).p)


def test_holm_steps_down_and_skips_nan():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.02, math.nan, 0.5])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)


def result(name, accuracy, bias):
    """Fresh-seed replicates of a configuration: accuracy and held-out shape bias per seed."""
    replicates = tuple(
        Replicate(f"{name}{i}", 10 + i, a, b, shape_bias_holdout=b)
        for i, (a, b) in enumerate(zip(accuracy, bias, strict=True))
    )
    return ConfigurationResult(name, Params("dense" if name == "c000" else "layer1", 0.1, 0.02, 5e-4, 32), replicates)


def test_verdicts_say_what_the_fresh_seeds_show():
    dense = result("c000", [0.80, 0.82, 0.81, 0.79, 0.80], [0.20, 0.22, 0.21, 0.19, 0.20])
    raised = result("c001", [0.78, 0.79, 0.80, 0.77, 0.78], [0.30, 0.33, 0.31, 0.29, 0.32])
    same = result("c002", [0.81, 0.80, 0.79, 0.82, 0.80], [0.21, 0.19, 0.22, 0.20, 0.18])
    found = {c.configuration: c for c in confirm([raised, same], dense)}
    assert found["c001"].raises_shape_bias and not found["c002"].raises_shape_bias
    text = found["c001"].verdict()
    assert (
        text.startswith("raises held-out shape bias by +0.106 [+0.081, +0.131] at -0.020 [")
        and "adjusted, 5 fresh seeds)" in text
    )
    assert " accuracy (p = " in text
    assert found["c002"].verdict().startswith("no difference from dense shown: held-out shape bias -0.004 [")
    # Adjusted for the family of two: never below the raw p-value.
    assert found["c002"].gains["shape_bias"].p_adjusted >= found["c002"].gains["shape_bias"].p
