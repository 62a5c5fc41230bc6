"""Which configuration to promote: by id, or by rule (maximise one objective above floors).

A rule reads the seed means of configurations whose every seed is complete (`tracking.collect`),
so a configuration that failed one seed, or was stopped early, can never be chosen. Of the
chosen configuration, the seed replicate whose objectives lie closest to the configuration's
means is the model that represents it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.confirmation import Confirmed
from orchestrator.errors import SearchError
from orchestrator.pareto import ConfigurationResult, Replicate, front_of, infeasible, spread
from search_spaces import constraints
from search_spaces.constraints import CONSTRAINABLE, Floor
from search_spaces.params import OBJECTIVES
from trainables.messages import bounded


def parse_floor(text: str) -> Floor:
    """'accuracy=0.75', 'accuracy=dense-0.01' or 'cue_decision_rate=dense-0.2' -> Floor; SearchError if malformed."""
    try:
        return constraints.parse_floor(text)
    except ValueError as error:
        raise SearchError(str(error).replace("bad floor", "bad --floor", 1)) from None


def threshold(floor: Floor, dense: ConfigurationResult | None) -> float:
    """A floor's absolute bound, reading the dense reference's mean for a relative one."""
    bound = floor.threshold({m: dense.mean(m) for m in CONSTRAINABLE} if dense is not None else None)
    if bound is None:
        raise SearchError(
            f"floor '{floor}' is relative to the dense reference, but this search has no complete dense reference"
        )
    return bound


@dataclass(frozen=True)
class Choice:
    """The configuration chosen, the replicate that represents it, and why."""

    result: ConfigurationResult
    replicate: Replicate
    dense: ConfigurationResult | None
    on_front: bool
    reason: str
    # The search's own constraints this configuration misses (a choice by id may be infeasible).
    misses: tuple[str, ...] = ()
    # Its gain over dense on fresh seeds (`run_search.py confirm`), if a confirmation tested it.
    confirmed: Confirmed | None = None


def dense_reference(results: list[ConfigurationResult]) -> ConfigurationResult | None:
    """The search's dense reference, if its every seed is complete."""
    return next((r for r in results if r.dense), None)


def by_id(
    results: list[ConfigurationResult], configuration: str, all_ids: list[str], search_floors: Sequence[Floor] = ()
) -> Choice:
    """The configuration with this id; SearchError naming the valid ids if it is not complete."""
    for result in results:
        if result.configuration == configuration:
            return _choice(results, result, f"configuration {configuration} chosen by id", search_floors)
    if configuration in all_ids:
        raise SearchError(
            f"configuration {configuration} did not finish all its seeds; complete ones: "
            f"{', '.join(r.configuration for r in results) or 'none'}"
        )
    raise SearchError(
        f"no configuration {bounded(configuration)} in this search; "
        f"valid: {', '.join(r.configuration for r in results) or 'none'}"
    )


def by_rule(
    results: list[ConfigurationResult], maximize: str, floors: list[Floor], search_floors: Sequence[Floor] = ()
) -> Choice:
    """The highest seed mean of `maximize` among configurations meeting every floor, the search's constraints too."""
    if maximize not in OBJECTIVES:
        raise SearchError(f"cannot maximise {maximize!r}; valid objectives: {', '.join(OBJECTIVES)}")
    dense = dense_reference(results)
    # The search's constraints first: an infeasible configuration is never on its front, nor promoted by a rule.
    floors = [*(f for f in search_floors if f not in floors), *floors]
    bounds = [(floor, threshold(floor, dense)) for floor in floors]
    eligible = [r for r in results if all(r.mean(f.metric) >= bound for f, bound in bounds)]
    if not eligible:
        highest = {f.metric: max(r.mean(f.metric) for r in results) for f, _ in bounds}
        wanted = ", ".join(f"{f} (= {bound:.4f}; best seed mean {highest[f.metric]:.4f})" for f, bound in bounds)
        raise SearchError(f"no configuration of {len(results)} meets {wanted}; lower a floor")
    other = next(o for o in OBJECTIVES if o != maximize)
    # Ties go to the better other objective, then to the earlier configuration.
    best = min(eligible, key=lambda r: (-r.mean(maximize), -r.mean(other), r.configuration))
    rule = f"highest mean {maximize}" + (f" with {' and '.join(str(f) for f in floors)}" if floors else "")
    return _choice(
        results, best, f"{rule}: {len(eligible)} of {len(results)} complete configurations qualify", search_floors
    )


def closest_replicate(result: ConfigurationResult) -> Replicate:
    """The seed whose (accuracy, shape bias) lies nearest the configuration's means (ties: lowest seed)."""
    mean = (result.accuracy, result.shape_bias)
    # Two seeds always lie equally far from their mean: rounding keeps float noise from
    # deciding the tie, so the lowest seed wins it.
    return min(result.replicates, key=lambda r: (round(math.dist((r.accuracy, r.shape_bias), mean), 9), r.seed))


def _choice(
    results: list[ConfigurationResult], result: ConfigurationResult, reason: str, search_floors: Sequence[Floor]
) -> Choice:
    misses = infeasible(results, search_floors).get(result.configuration, {})
    return Choice(
        result,
        closest_replicate(result),
        dense_reference(results),
        result in front_of(results, search_floors),
        reason,
        tuple(str(f) for f in misses),
    )


def describe(choice: Choice, search_id: str) -> str:
    """What was chosen and why, as the promote command prints it (+- is the sample standard deviation over seeds)."""
    r, rep, dense = choice.result, choice.replicate, choice.dense

    def line(label: str, metric: str, what: str = "") -> str:
        text = f"  {label:<11} {spread(r, metric, 4)} over {r.seeds} seeds{what}"
        return text + (f"   dense reference {spread(dense, metric, 4)}" if dense else "")

    network = f"  network     {r.kept_label()} of each map kept per channel" if r.kept else None
    lines = [
        f"search {search_id}: {choice.reason}",
        f"  chosen      {r.configuration}  {r.params.describe()}  "
        f"(lr {r.params.lr:g}, weight decay {r.params.weight_decay:g}, batch {r.params.batch_size})",
        *([network] if network else []),
        line("accuracy", "accuracy"),
        line("shape bias", "shape_bias"),
        *([line("held out", "shape_bias_holdout", " (shape bias on the report set)")] if r.has_holdout else []),
        *(
            [line("cue rate", "cue_decision_rate", " (conflict images decided by shape or texture)")]
            if not math.isnan(r.mean("cue_decision_rate"))
            else []
        ),
        f"  on the Pareto front: {'yes' if choice.on_front else 'no'}"
        + (f" (infeasible: misses {', '.join(choice.misses)})" if choice.misses else ""),
        f"  promoted replicate: seed {rep.seed} (closest to the means: accuracy {rep.accuracy:.4f}, "
        f"shape bias {rep.shape_bias:.4f}), child run {rep.run_id}",
    ]
    if choice.confirmed is not None:
        seeds = ", ".join(map(str, choice.confirmed.seeds))
        lines.append(f"  confirmed   on fresh seeds {seeds}: {choice.confirmed.verdict()}")
    return "\n".join(lines)


def unconfirmed_warning(choice: Choice, experiment: str, search_id: str) -> str | None:
    """One line when a configuration is promoted whose gain over dense no confirmation tested."""
    if choice.confirmed is not None or choice.result.dense:
        return None
    return (
        f"warning: {choice.result.configuration}'s gain over dense was never confirmed on fresh seeds: "
        f"`run_search.py confirm --experiment {experiment} --search {search_id} "
        f"--configuration {choice.result.configuration} --seeds 3` tests it"
    )
