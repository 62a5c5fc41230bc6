"""Which configuration to promote: by id, or by rule (maximise one objective above floors).

A rule reads the seed means of configurations whose every seed is complete (`tracking.collect`),
so a configuration that failed one seed, or was stopped early, can never be chosen. Of the
chosen configuration, the seed replicate whose objectives lie closest to the configuration's
means is the model that represents it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from orchestrator.errors import SearchError
from orchestrator.pareto import ConfigurationResult, Replicate, front_of
from search_spaces.params import OBJECTIVES
from trainables.messages import bounded

_FLOOR = re.compile(r"^(?P<objective>[a-z_]+)=(?:(?P<dense>dense)(?P<offset>[-+]\d*\.?\d+)?|(?P<value>\d*\.?\d+))$")


@dataclass(frozen=True)
class Floor:
    """objective >= value, or objective >= the dense reference's mean + offset."""

    objective: str
    value: float
    relative: bool = False

    def __str__(self) -> str:
        if not self.relative:
            return f"{self.objective} >= {self.value:g}"
        return f"{self.objective} >= dense{self.value:+g}"

    def threshold(self, dense: ConfigurationResult | None) -> float:
        """The absolute bound, reading the dense reference's mean for a relative floor."""
        if not self.relative:
            return self.value
        if dense is None:
            raise SearchError(
                f"floor '{self}' is relative to the dense reference, but this search has no complete dense reference"
            )
        return dense.mean(self.objective) + self.value


def parse_floor(text: str) -> Floor:
    """'accuracy=0.75', 'accuracy=dense-0.01' or 'shape_bias=dense+0.05' -> Floor."""
    match = _FLOOR.match(text.replace(" ", ""))
    if match is None or match["objective"] not in OBJECTIVES:
        raise SearchError(
            f"bad --floor {text!r}: expected OBJECTIVE=VALUE or OBJECTIVE=dense-OFFSET, with OBJECTIVE one of "
            f"{', '.join(OBJECTIVES)} (e.g. accuracy=0.75, accuracy=dense-0.01)"
        )
    if match["dense"]:
        return Floor(match["objective"], float(match["offset"] or 0.0), relative=True)
    return Floor(match["objective"], float(match["value"]))


@dataclass(frozen=True)
class Choice:
    """The configuration chosen, the replicate that represents it, and why."""

    result: ConfigurationResult
    replicate: Replicate
    dense: ConfigurationResult | None
    on_front: bool
    reason: str


def dense_reference(results: list[ConfigurationResult]) -> ConfigurationResult | None:
    """The search's dense reference, if its every seed is complete."""
    return next((r for r in results if r.dense), None)


def by_id(results: list[ConfigurationResult], configuration: str, all_ids: list[str]) -> Choice:
    """The configuration with this id; SearchError naming the valid ids if it is not complete."""
    for result in results:
        if result.configuration == configuration:
            return _choice(results, result, f"configuration {configuration} chosen by id")
    if configuration in all_ids:
        raise SearchError(
            f"configuration {configuration} did not finish all its seeds; complete ones: "
            f"{', '.join(r.configuration for r in results) or 'none'}"
        )
    raise SearchError(
        f"no configuration {bounded(configuration)} in this search; "
        f"valid: {', '.join(r.configuration for r in results) or 'none'}"
    )


def by_rule(results: list[ConfigurationResult], maximize: str, floors: list[Floor]) -> Choice:
    """The highest seed mean of `maximize` among configurations meeting every floor."""
    if maximize not in OBJECTIVES:
        raise SearchError(f"cannot maximise {maximize!r}; valid objectives: {', '.join(OBJECTIVES)}")
    dense = dense_reference(results)
    bounds = [(floor, floor.threshold(dense)) for floor in floors]
    eligible = [r for r in results if all(r.mean(f.objective) >= bound for f, bound in bounds)]
    if not eligible:
        highest = {f.objective: max(r.mean(f.objective) for r in results) for f, _ in bounds}
        wanted = ", ".join(f"{f} (= {bound:.4f}; best seed mean {highest[f.objective]:.4f})" for f, bound in bounds)
        raise SearchError(f"no configuration of {len(results)} meets {wanted}; lower a floor")
    other = next(o for o in OBJECTIVES if o != maximize)
    # Ties go to the better other objective, then to the earlier configuration.
    best = min(eligible, key=lambda r: (-r.mean(maximize), -r.mean(other), r.configuration))
    rule = f"highest mean {maximize}" + (f" with {' and '.join(str(f) for f in floors)}" if floors else "")
    return _choice(results, best, f"{rule}: {len(eligible)} of {len(results)} complete configurations qualify")


def closest_replicate(result: ConfigurationResult) -> Replicate:
    """The seed whose (accuracy, shape bias) lies nearest the configuration's means (ties: lowest seed)."""
    mean = (result.accuracy, result.shape_bias)
    # Two seeds always lie equally far from their mean: rounding keeps float noise from
    # deciding the tie, so the lowest seed wins it.
    return min(result.replicates, key=lambda r: (round(math.dist((r.accuracy, r.shape_bias), mean), 9), r.seed))


def _choice(results: list[ConfigurationResult], result: ConfigurationResult, reason: str) -> Choice:
    return Choice(result, closest_replicate(result), dense_reference(results), result in front_of(results), reason)


def describe(choice: Choice, search_id: str) -> str:
    """What was chosen and why, as the promote command prints it."""
    r, rep, dense = choice.result, choice.replicate, choice.dense
    lines = [
        f"search {search_id}: {choice.reason}",
        f"  chosen      {r.configuration}  {r.params.describe()}  "
        f"(lr {r.params.lr:g}, weight decay {r.params.weight_decay:g}, batch {r.params.batch_size})",
        f"  accuracy    {r.accuracy:.4f} +- {r.accuracy_std:.4f} over {r.seeds} seeds"
        + (f"   dense reference {dense.accuracy:.4f} +- {dense.accuracy_std:.4f}" if dense else ""),
        f"  shape bias  {r.shape_bias:.4f} +- {r.shape_bias_std:.4f} over {r.seeds} seeds"
        + (f"   dense reference {dense.shape_bias:.4f} +- {dense.shape_bias_std:.4f}" if dense else ""),
        *(
            [
                f"  held out    {r.shape_bias_holdout:.4f} +- {r.shape_bias_holdout_std:.4f} "
                "shape bias on the report set"
                + (
                    f"   dense reference {dense.shape_bias_holdout:.4f} +- {dense.shape_bias_holdout_std:.4f}"
                    if dense
                    else ""
                )
            ]
            if r.has_holdout
            else []
        ),
        f"  on the Pareto front: {'yes' if choice.on_front else 'no'}",
        f"  promoted replicate: seed {rep.seed} (closest to the means: accuracy {rep.accuracy:.4f}, "
        f"shape bias {rep.shape_bias:.4f}), child run {rep.run_id}",
    ]
    return "\n".join(lines)
