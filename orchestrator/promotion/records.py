"""What a promoted model carries: its `production.yaml` (the trial config that retrains it, and
its provenance), the version's tags and its description. Plain data and text, nothing written.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

import yaml

from orchestrator import names
from orchestrator.pareto import ConfigurationResult
from orchestrator.promotion.choice import Choice
from orchestrator.provenance import git_commit, package_versions
from orchestrator.tracking import SearchRecord, kept_params
from search_spaces.params import OBJECTIVES
from trainables.config import TrialConfig

PRODUCTION_YAML = "production.yaml"
DRY_RUN_YAML = "production.dry-run.yaml"  # what `promote --dry-run` stages, never moved into place


def _summary(result: ConfigurationResult | None) -> dict[str, Any] | None:
    """A configuration's seed means and spreads, seeds and runs, as plain data."""
    if result is None:
        return None
    return {
        names.CONFIGURATION: result.configuration,
        # std: the sample standard deviation over seeds (NaN for one seed).
        **{m: {"mean": result.mean(m), "std": result.std(m)} for m in _measured(result)},
        "seeds": [r.seed for r in result.replicates],
        "run_ids": list(result.run_ids),
    }


def _measured(result: ConfigurationResult) -> list[str]:
    """The metrics every seed of `result` has: the objectives, and the report set's and cue rates where measured."""
    extra = (names.SHAPE_BIAS_HOLDOUT, names.CUE_DECISION_RATE, names.CUE_DECISION_RATE_HOLDOUT)
    return [*OBJECTIVES, *(m for m in extra if all(math.isfinite(getattr(r, m)) for r in result.replicates))]


def _confirmation(choice: Choice) -> dict[str, Any] | str:
    """The gains over dense on fresh seeds, as plain data; or why there are none."""
    c = choice.confirmed
    if c is None:
        return "never confirmed on fresh seeds"
    return {
        "seeds": list(c.seeds),
        "verdict": c.verdict(),
        "shape_bias_read_on": "report set" if c.held_out else "selection set",
        **{
            objective: {"gain": g.gain, "ci_low": g.low, "ci_high": g.high, "p_adjusted": g.p_adjusted}
            for objective, g in c.gains.items()
        },
    }


def production_config(
    config: TrialConfig, state: dict[str, Any], search: SearchRecord, choice: Choice, checkpoint_uri: str
) -> dict[str, Any]:
    """The trial config that retrains the promoted model exactly, with its provenance."""
    replicate = choice.replicate
    # The thread count the trial really used: results depend on it, and 0 means "Ray's allocation".
    training = config.training.model_copy(update={"threads": int(state.get("threads", config.training.threads))})
    # The digests the search took when it started: the data as it was trained on, not as it is now.
    data_fingerprint = search.data_digests or "not recorded (a search from before data digests were kept)"
    provenance = {
        names.SEARCH_ID: search.search_id,
        "experiment": search.experiment_name,
        "parent_run_id": search.run_id,
        names.CONFIGURATION: choice.result.configuration,
        names.SEED: replicate.seed,
        "class_names": list(state["labels"]["class_names"]),
        "source_run_id": replicate.run_id,
        names.CHECKPOINT_URI: checkpoint_uri,
        "chosen_by": choice.reason,
        "on_front": choice.on_front,
        "metrics": {
            **(_summary(choice.result) or {}),
            "replicate": {m: getattr(replicate, m) for m in _measured(choice.result)},
        },
        names.DENSE_REFERENCE: _summary(choice.dense),
        "confirmation": _confirmation(choice),
        names.DATA_FINGERPRINT: data_fingerprint,
        "versions": package_versions(),
        names.GIT_COMMIT: git_commit(),
        "promoted_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    trial = config.model_copy(update={"training": training, "provenance": provenance})
    return trial.model_dump(mode="json")


def version_tags(search: SearchRecord, choice: Choice) -> dict[str, str]:
    """Tags of a promoted version: where it came from and how it scored, with spread."""
    r, dense = choice.result, choice.dense
    tags = {
        names.SEARCH_ID: search.search_id,
        names.CONFIGURATION: r.configuration,
        names.SEED: str(choice.replicate.seed),
        "source_run_id": choice.replicate.run_id,
        "placement": r.params.placement,
        "fraction": r.params.fraction_label(6) if r.params.fractions else str(r.params.fraction),
        "on_front": "yes" if choice.on_front else "no",
        names.GIT_COMMIT: git_commit(),
    }
    tags |= kept_params(r.kept)  # the network: k of the map's positions kept at each placement
    if choice.misses:
        tags["infeasible"] = "; ".join(choice.misses)
    if choice.confirmed is None:
        tags["confirmed"] = "no"
    else:  # the gains over dense on fresh seeds: the figures that say whether the gain is real
        tags["confirmed"] = "yes"
        tags["confirmed_seeds"] = ",".join(map(str, choice.confirmed.seeds))
        tags["confirmed_verdict"] = choice.confirmed.verdict()
        for objective, g in choice.confirmed.gains.items():
            values = {"gain": g.gain, "ci_low": g.low, "ci_high": g.high, "p_adjusted": g.p_adjusted}
            tags |= {f"confirmed_{objective}_{k}": f"{v:.4f}" for k, v in values.items()}
    # The held-out shape bias (the number to quote) and the cue-decision rates, where measured.
    for m in _measured(r):
        tags[f"{m}_mean"], tags[f"{m}_std"] = f"{r.mean(m):.4f}", f"{r.std(m):.4f}"
        tags[f"{m}_replicate"] = f"{getattr(choice.replicate, m):.4f}"
        if dense is not None and m in _measured(dense):
            tags[f"dense_{m}_mean"], tags[f"dense_{m}_std"] = f"{dense.mean(m):.4f}", f"{dense.std(m):.4f}"
    return tags


def version_description(search: SearchRecord, choice: Choice) -> str:
    """The version's description, one paragraph: what the network is, where it came from, how it scored."""
    r, dense = choice.result, choice.dense
    text = (
        f"{search.arch}, {r.params.describe()}: configuration {r.configuration} of search {search.search_id}, "
        f"seed {choice.replicate.seed} (child run {choice.replicate.run_id}). Accuracy {r.accuracy:.4f} +- "
        f"{r.accuracy_std:.4f}, shape bias {r.shape_bias:.4f} +- {r.shape_bias_std:.4f} (mean +- sample standard "
        f"deviation over {r.seeds} seeds)"
    )
    if r.has_holdout:
        text += f", held out {r.shape_bias_holdout:.4f} +- {r.shape_bias_holdout_std:.4f}"
    if dense is not None:
        text += f"; the dense reference {dense.accuracy:.4f} and {dense.shape_bias:.4f}"
    text += f". {'On' if choice.on_front else 'Not on'} the Pareto front. {_chosen(choice.reason)}."
    if r.dense:
        return text  # the reference itself: no gain over dense to confirm
    if choice.confirmed is None:
        return text + " Its gain over dense was never confirmed on fresh seeds."
    seeds = ", ".join(map(str, choice.confirmed.seeds))
    return text + f" Confirmed on fresh seeds {seeds}: {choice.confirmed.verdict()}."


def _chosen(reason: str) -> str:
    """'Chosen by id' or 'Chosen as the highest mean ...' from a choice's reason."""
    if reason.endswith("chosen by id"):
        return "Chosen by id"
    return f"Chosen as the {reason}"


def registered_model_tags(search: SearchRecord) -> dict[str, str]:
    """Tags of the registered model itself: what it models, and the search its latest version came from."""
    return {
        "experiment": search.experiment_name,
        "arch": search.arch,
        "objectives": ",".join(OBJECTIVES),
        "latest_search": search.search_id,
    }


def dump_yaml(config: dict[str, Any]) -> str:
    """`production.yaml`'s text: the config with a header saying what it is."""
    header = (
        "# A promoted model's trial config: `python -m trainables.trial --config production.yaml` retrains it.\n"
        "# `provenance` records where it came from; training ignores it.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)
