"""A confirmation round as MLflow holds it: which configurations, which fresh seeds, what it found.

A round (`orchestrator.search.confirm` trains it) is recorded on the search's parent run, tag
`confirmation`, before its first trial; its trials are child runs tagged `stage: confirm`. Here
they are read back and tested (`orchestrator.confirmation`) for the confirm command, the search's
own confirmation stage, and `promote`; nothing here needs Ray.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from mlflow.tracking import MlflowClient

from orchestrator import names
from orchestrator.confirmation import OBJECTIVES, Confirmed, confirm
from orchestrator.errors import SearchError
from orchestrator.intervals import Uncertainty
from orchestrator.pareto import ConfigurationResult, infeasible
from orchestrator.tracking import SearchRecord, child_runs, collect
from trainables.metrics import SHAPE_BIAS, SHAPE_BIAS_HOLDOUT
from trainables.tracking import log_metrics

DENSE = "c000"  # the searcher's id for the dense reference


@dataclass(frozen=True)
class Round:
    """One confirmation: which configurations, on which fresh seeds, under which Ray experiment name."""

    configurations: list[str]  # the dense reference not among them: it always runs
    seeds: list[int]
    name: str  # Ray Tune's experiment name, under the search's storage_path
    status: str = "RUNNING"  # FINISHED once its every trial ended

    def tag(self) -> str:
        return json.dumps(asdict(self))


def latest_round(search: SearchRecord) -> Round | None:
    """The search's latest confirmation round, if one was started."""
    text = search.run.data.tags.get(names.CONFIRMATION)
    if not text:
        return None
    try:
        return Round(**json.loads(text))
    except (ValueError, TypeError):  # edited by hand: anyone who can write tags can
        raise SearchError(
            f"search {search.search_id}'s {names.CONFIRMATION} tag is not a confirmation round: delete it to start anew"
        ) from None


def fresh_seeds(client: MlflowClient, search: SearchRecord, count: int) -> list[int]:
    """`count` seeds after every seed the search and its earlier confirmations used."""
    used = set(search.seeds) | {
        int(r.data.tags.get(names.SEED, 0)) for r in child_runs(client, search.experiment_id, search.run_id)
    }
    first = max(used, default=-1) + 1
    return list(range(first, first + count))


def choose(
    results: Sequence[ConfigurationResult], bounds: Mapping[str, Uncertainty], search: SearchRecord, top: int, by: str
) -> list[str]:
    """The `top` configurations to confirm: feasible ones by p_front, or by the highest seed mean of `by`."""
    excluded = infeasible(list(results), search.floors)
    candidates = [r for r in results if not r.dense and r.configuration not in excluded]
    if not candidates:
        raise SearchError(f"search {search.search_id} has no feasible configuration besides the dense one to confirm")
    bias = SHAPE_BIAS_HOLDOUT if all(r.has_holdout for r in candidates) else SHAPE_BIAS
    if by == names.P_FRONT:
        key = lambda r: (-bounds[r.configuration].p_front, -r.mean(bias), r.configuration)  # noqa: E731
    else:
        other = SHAPE_BIAS if by != SHAPE_BIAS else "accuracy"
        key = lambda r: (-r.mean(by), -r.mean(other), r.configuration)  # noqa: E731  (promote's rule and ties)
    return [r.configuration for r in sorted(candidates, key=key)[:top]]


def check_configurations(results: Sequence[ConfigurationResult], configurations: Sequence[str], search_id: str) -> None:
    """SearchError naming a configuration that cannot be confirmed, and the ones that can."""
    complete = {r.configuration for r in results}
    valid = ", ".join(sorted(complete - {DENSE})) or "none"
    if DENSE not in complete:
        raise SearchError(f"search {search_id} has no complete dense reference to confirm against")
    for configuration in configurations:
        if configuration == DENSE:
            raise SearchError(
                f"{DENSE} is the dense reference: every confirmation retrains it beside the others; valid: {valid}"
            )
        if configuration not in complete:
            raise SearchError(
                f"cannot confirm {configuration!r}: not a configuration of search {search_id} whose every seed "
                f"is complete; valid: {valid}"
            )


def start_round(client: MlflowClient, search: SearchRecord, configurations: list[str], seeds: int) -> Round:
    """A new round, recorded on the parent run before any trial, so that an interruption can resume it."""
    fresh = fresh_seeds(client, search, seeds)
    round_ = Round(configurations, fresh, f"{search.search_id}-confirm-seed{fresh[0]}")
    client.set_tag(search.run_id, names.CONFIRMATION, round_.tag())
    return round_


def round_results(client: MlflowClient, search: SearchRecord, round_: Round) -> list[ConfigurationResult]:
    """The round's configurations (and the dense reference) whose every fresh seed is complete."""
    return collect(client, search, len(round_.seeds), names.CONFIRM_STAGE, round_.seeds)


def findings(client: MlflowClient, search: SearchRecord, round_: Round) -> tuple[list[Confirmed], list[str]]:
    """The round's confirmed gains, and the configurations it could not test (a fresh seed did not finish)."""
    results = {r.configuration: r for r in round_results(client, search, round_)}
    dense = results.get(DENSE)
    if dense is None:
        return [], list(round_.configurations)
    done = [results[c] for c in round_.configurations if c in results]
    return confirm(done, dense), [c for c in round_.configurations if c not in results]


def report_round(client: MlflowClient, search: SearchRecord, round_: Round) -> list[Confirmed]:
    """Print a round's findings and log them to the parent run as `confirmed.<configuration>.*` metrics."""
    found, untested = findings(client, search, round_)
    seeds = ", ".join(map(str, round_.seeds))
    if found:
        held_out = "held-out stimuli" if found[0].held_out else "the search's stimuli (no report set)"
        print(
            f"\nconfirmation on fresh seeds {seeds} (never used by the search), scored on the {held_out}: "
            f"gain over dense re-trained on the same seeds; Welch's t-test over seeds, p Holm-adjusted for "
            f"{len(found)} configuration{'s' if len(found) > 1 else ''}, intervals 95% simultaneous"
        )
    for c in found:
        print(f"  {c.configuration}: {c.verdict()}")
    for configuration in untested:
        print(f"  {configuration}: not confirmed (a fresh seed of it or of the dense reference did not finish)")
    metrics: dict[str, float] = {}
    for c in found:
        prefix = f"{names.CONFIRMED_PREFIX}{c.configuration}."
        for objective in OBJECTIVES:
            g = c.gains[objective]
            values = {"gain": g.gain, "ci_low": g.low, "ci_high": g.high, "p_adjusted": g.p_adjusted}
            metrics |= {f"{prefix}{objective}_{k}": v for k, v in values.items()}
        metrics[f"{prefix}seeds"] = float(len(c.seeds))
    log_metrics(client, search.run_id, metrics)
    return found


def confirmation_of(client: MlflowClient, search: SearchRecord) -> tuple[Round, list[Confirmed]] | None:
    """The search's latest finished confirmation round and its findings (None if none finished)."""
    round_ = latest_round(search)
    if round_ is None or round_.status != "FINISHED":
        return None
    return round_, findings(client, search, round_)[0]
