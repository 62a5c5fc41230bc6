"""The champion gate: a challenger takes the alias only if it is not worse than the version holding it.

Both models are scored by the same evaluation a trial uses (`trainables.evaluate`), on the same
held-out data, the challenger's: accuracy on its test images, shape bias and the cue-decision rate
on the report half of the cue-conflict stimuli (the half nothing was selected on; the whole set
when the data has no split). A margin is absolute: `shape_bias=-0.01` lets the challenger's
held-out shape bias be at most 0.01 below the champion's. The figures are measured, not read from
the tags, so a champion promoted from another search or on other data is compared fairly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from orchestrator.errors import SearchError
from trainables.config import TrialConfig
from trainables.metrics import ACCURACY, CUE_DECISION_RATE, HOLDOUT, SHAPE_BIAS

# The objectives a gate can hold, with the margin each has unless --gate sets it.
DEFAULT_MARGINS = {ACCURACY: -0.02, SHAPE_BIAS: -0.01}
GATEABLE = (ACCURACY, SHAPE_BIAS, CUE_DECISION_RATE)


def parse_margins(texts: list[str]) -> dict[str, float]:
    """['shape_bias=-0.01', ...] over the defaults -> {metric: margin}; SearchError naming a bad one."""
    margins = dict(DEFAULT_MARGINS)
    for text in texts:
        metric, sep, value = text.partition("=")
        try:
            if not sep or metric not in GATEABLE:
                raise ValueError
            margin = float(value)
            if not math.isfinite(margin):
                raise ValueError
        except ValueError:
            raise SearchError(
                f"bad --gate {text!r}: expected METRIC=MARGIN with METRIC one of {', '.join(GATEABLE)} and an "
                "absolute margin such as -0.01 (the challenger may be that much below the champion)"
            ) from None
        margins[metric] = margin
    return margins


@dataclass(frozen=True)
class Check:
    """One objective of the gate: both models' figures, and whether the challenger clears the margin."""

    metric: str  # the objective, as --gate names it
    measured: str  # the metric actually compared (the report half's, where there is one)
    champion: float
    challenger: float
    margin: float

    @property
    def change(self) -> float:
        """Challenger minus champion."""
        return self.challenger - self.champion

    @property
    def passed(self) -> bool:
        """Not worse than the champion beyond the margin (a NaN figure never passes)."""
        return self.change >= self.margin


@dataclass(frozen=True)
class GateResult:
    """The gate's evidence against one champion version."""

    champion_version: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        """Every objective within its margin."""
        return all(c.passed for c in self.checks)

    def table(self) -> str:
        """The evidence, one line per objective, for the terminal."""
        lines = [
            f"  gate against version {self.champion_version}, both scored now on the challenger's held-out data:",
            f"    {'':<26} {'champion':>9} {'challenger':>10} {'change':>8} {'margin':>7}",
        ]
        for c in self.checks:
            verdict = "ok" if c.passed else "WORSE"
            lines.append(
                f"    {c.measured:<26} {c.champion:>9.4f} {c.challenger:>10.4f} {c.change:>+8.4f} {c.margin:>+7.3f}  "
                f"{verdict}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """One line for tags and the audit trail: passed/failed with each change."""
        changes = ", ".join(f"{c.measured} {c.change:+.4f} (margin {c.margin:+g})" for c in self.checks)
        return f"{'passed' if self.passed else 'failed'} against version {self.champion_version}: {changes}"

    def refusal(self) -> str:
        """Why the challenger was refused, in one line."""
        worse = "; ".join(
            f"{c.measured} {c.challenger:.4f} vs {c.champion:.4f} ({c.change:+.4f}, margin {c.margin:+g})"
            for c in self.checks
            if not c.passed
        )
        return (
            f"gate: the challenger is worse than version {self.champion_version} beyond the margin on {worse}; "
            "nothing promoted (--gate METRIC=MARGIN loosens a margin, --force skips the gate)"
        )


def run_gate(
    champion: torch.nn.Module,
    champion_config: dict[str, Any],
    champion_version: str,
    challenger: torch.nn.Module,
    config: TrialConfig,
    margins: dict[str, float],
) -> GateResult:
    """Score champion and challenger on the challenger's held-out data and compare them."""
    from trainables.evaluate import evaluate, model_outputs

    if config.training.threads > 0:
        torch.set_num_threads(config.training.threads)  # the trial's own count: results depend on it
    data = config.data.build(config.training.batch_size, config.seed, augment=False)
    recorded = champion_config.get("provenance", {}).get("class_names")
    if recorded and list(recorded) != list(data.class_names):
        raise SearchError(
            f"gate: version {champion_version} was trained on other classes ({', '.join(recorded[:8])}) than the "
            f"challenger ({', '.join(list(data.class_names)[:8])}): they cannot be compared; --force skips the gate"
        )
    champion_head = champion_config.get("model", {}).get("head", config.model.head)
    scores = {
        "champion": evaluate(champion.eval(), data, model_outputs(champion_head, data)).metrics,
        "challenger": evaluate(challenger.eval(), data, model_outputs(config.model.head, data)).metrics,
    }
    suffix = HOLDOUT if data.holdout is not None else ""
    checks = []
    for metric, margin in margins.items():
        measured = metric if metric == ACCURACY else metric + suffix
        checks.append(Check(metric, measured, scores["champion"][measured], scores["challenger"][measured], margin))
    return GateResult(champion_version, tuple(checks))
