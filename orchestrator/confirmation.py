"""Is a configuration's gain over dense real? The test the confirmation stage runs on fresh seeds.

The chosen configurations and the dense reference are trained again on seeds the search never
used and scored on the held-out stimuli; nothing was selected on those trainings. Per objective,
each configuration's gain is its fresh-seed mean minus the dense reference's. The test is Welch's
unequal-variance t-test over seeds (the training seed is the unit that was replicated; the stimuli
are the same for all, so the claim is about this stimulus set). Its p-values are adjusted for the
M configurations confirmed with Holm's step-down correction, per objective, and its intervals are
simultaneous at 95% (Bonferroni: each at 1 - 0.05 / M). A configuration "raises" shape bias only
when its adjusted p-value is below 0.05. The false-positive rate of this test, dense against dense,
is measured in docs/confirmation.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.pareto import ConfigurationResult
from trainables.metrics import ACCURACY, SHAPE_BIAS, SHAPE_BIAS_HOLDOUT

ALPHA = 0.05
OBJECTIVES = (ACCURACY, SHAPE_BIAS)  # as the metric names call them; shape bias is read held out


@dataclass(frozen=True)
class Gain:
    """One objective's fresh-seed gain over dense: the difference of means, its interval, its p-values."""

    gain: float
    low: float
    high: float
    p: float
    p_adjusted: float = math.nan

    def shown(self, digits: int = 3) -> str:
        """'+0.050 [+0.010, +0.090]' (the gain alone where nothing could be tested)."""
        if math.isnan(self.low):
            return f"{self.gain:+.{digits}f}"
        return f"{self.gain:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


@dataclass(frozen=True)
class Confirmed:
    """One configuration's confirmation: its gains over dense on fresh seeds, per objective."""

    configuration: str
    seeds: tuple[int, ...]
    gains: dict[str, Gain]  # by objective (ACCURACY, SHAPE_BIAS)
    held_out: bool  # shape bias read on the report set (data.split: half)

    @property
    def raises_shape_bias(self) -> bool:
        gain = self.gains[SHAPE_BIAS]
        return gain.p_adjusted < ALPHA and gain.gain > 0

    def verdict(self) -> str:
        """The finding in words, as strong as its evidence."""
        bias, accuracy = self.gains[SHAPE_BIAS], self.gains[ACCURACY]
        what = "held-out shape bias" if self.held_out else "shape bias (on the stimuli the search selected on)"
        seeds = f"{len(self.seeds)} fresh seeds"
        if math.isfinite(bias.p_adjusted) and bias.p_adjusted < ALPHA:
            verb = "raises" if bias.gain > 0 else "lowers"
            return (
                f"{verb} {what} by {bias.shown()} at {accuracy.shown()} accuracy "
                f"(p = {bias.p_adjusted:.2g} adjusted, {seeds})"
            )
        p = "no spread to test" if math.isnan(bias.p_adjusted) else f"p = {bias.p_adjusted:.2g} adjusted"
        return f"no difference from dense shown: {what} {bias.shown()} ({p}), accuracy {accuracy.shown()} ({seeds})"


def welch(values: Sequence[float], reference: Sequence[float], level: float = 1 - ALPHA) -> Gain:
    """Welch's t-test of mean(values) - mean(reference): the difference, its `level` interval, two-sided p."""
    import warnings

    from scipy import stats

    diff = math.fsum(values) / len(values) - math.fsum(reference) / len(reference)
    # One value a side, or no spread in either (accuracy moves in steps of 1 / test images): a t-test
    # would read identical seeds as certainty (t = inf, p = 0); there is nothing to test.
    if len(values) < 2 or len(reference) < 2 or (len(set(values)) == 1 and len(set(reference)) == 1):
        return Gain(diff, math.nan, math.nan, math.nan)
    with warnings.catch_warnings():  # nearly equal values: scipy warns, and the interval says it anyway
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_ind(values, reference, equal_var=False)
    if not math.isfinite(test.pvalue):
        return Gain(diff, math.nan, math.nan, math.nan)
    interval = test.confidence_interval(confidence_level=level)
    return Gain(diff, float(interval.low), float(interval.high), float(test.pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for their family (NaN stays NaN, and does not count)."""
    finite = sorted((p, i) for i, p in enumerate(p_values) if math.isfinite(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted


def confirm(confirmed: Sequence[ConfigurationResult], dense: ConfigurationResult) -> list[Confirmed]:
    """Each confirmed configuration's gains over `dense`, all measured on the same fresh seeds' runs."""
    held_out = dense.has_holdout and all(r.has_holdout for r in confirmed)
    metric = {ACCURACY: ACCURACY, SHAPE_BIAS: SHAPE_BIAS_HOLDOUT if held_out else SHAPE_BIAS}
    family = max(1, len(confirmed))
    raw = {
        objective: [
            welch(
                [getattr(rep, metric[objective]) for rep in r.replicates],
                [getattr(rep, metric[objective]) for rep in dense.replicates],
                level=1 - ALPHA / family,
            )
            for r in confirmed
        ]
        for objective in OBJECTIVES
    }
    adjusted = {objective: holm([g.p for g in gains]) for objective, gains in raw.items()}
    return [
        Confirmed(
            r.configuration,
            tuple(rep.seed for rep in r.replicates),
            {
                objective: Gain(g.gain, g.low, g.high, g.p, adjusted[objective][i])
                for objective, gains in raw.items()
                for g in [gains[i]]
            },
            held_out,
        )
        for i, r in enumerate(confirmed)
    ]
