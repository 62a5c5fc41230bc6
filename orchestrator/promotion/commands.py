"""The registry commands of `run_search.py`: promote, evaluate, history, rollback.

Each takes the parsed arguments and returns an exit code; what it cannot find or do is a
`SearchError`, which `run_search.py` prints as one line with exit code 2. Like the rest of the
command line, each imports MLflow and torch only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from orchestrator.promotion.promote import Staged


def promote_command(args: argparse.Namespace) -> int:
    """`promote`: choose, show why, confirm, register, move the alias."""
    import time
    from dataclasses import replace

    from mlflow.tracking import MlflowClient

    from orchestrator import names
    from orchestrator.checks import existing_store
    from orchestrator.errors import SearchError
    from orchestrator.promotion import choice as choosing
    from orchestrator.promotion.gate import parse_margins
    from orchestrator.promotion.promote import dry_run, promote, stage
    from orchestrator.promotion.records import PRODUCTION_YAML
    from orchestrator.promotion.registry import check_registry_names, default_model_name
    from orchestrator.rounds import confirmation_of, round_results
    from orchestrator.tracking import child_runs, collect, find_search

    if args.floor and not args.maximize:
        raise SearchError("--floor applies to --maximize; with --configuration the choice is already made")
    if args.confirmed and not args.maximize:
        raise SearchError("--confirmed applies to --maximize: with --configuration the choice is already made")
    floors = [choosing.parse_floor(text) for text in args.floor]
    parse_margins(args.gate)  # a bad --gate is found before anything is read
    if args.model_name:
        check_registry_names(args.model_name, args.alias)  # before anything is read or written
    client = MlflowClient(existing_store(args.tracking_uri))
    search = find_search(client, args.experiment, search_id=args.search, status=None if args.search else "FINISHED")
    name = args.model_name or default_model_name(args.experiment, search.arch)
    if not args.model_name:
        check_registry_names(name, args.alias)  # the default follows the search's arch: known only now
    if search.status != "FINISHED":
        raise SearchError(
            f"search {search.search_id} is {search.status}, not FINISHED: wait for it to end, or finish it "
            "with `run_search.py resume`"
        )
    results = collect(client, search)
    if not results:
        raise SearchError(
            f"search {search.search_id} has an empty front: no configuration finished all its {len(search.seeds)} seeds"
        )
    confirmation = confirmation_of(client, search)
    ids = sorted(
        {r.data.tags.get(names.CONFIGURATION, "") for r in child_runs(client, search.experiment_id, search.run_id)}
    )
    if args.configuration:
        chosen = choosing.by_id(results, args.configuration, ids, search.floors)
    elif args.confirmed:
        if confirmation is None:
            raise SearchError(
                f"search {search.search_id} has no finished confirmation: run `run_search.py confirm --experiment "
                f"{args.experiment} --search {search.search_id} --top 1 --seeds 3` first, or drop --confirmed"
            )
        round_, _ = confirmation
        fresh = [
            r for r in round_results(client, search, round_) if r.dense or r.configuration in round_.configurations
        ]
        picked = choosing.by_rule(fresh, args.maximize, floors, search.floors)
        seeds = ", ".join(map(str, round_.seeds))
        chosen = replace(
            choosing.by_id(results, picked.result.configuration, ids, search.floors),
            reason=f"{picked.reason} (confirmed figures: fresh seeds {seeds})",
        )
    else:
        chosen = choosing.by_rule(results, args.maximize, floors, search.floors)
    if confirmation is not None:
        found = {c.configuration: c for c in confirmation[1]}
        chosen = replace(chosen, confirmed=found.get(chosen.result.configuration))
    print(choosing.describe(chosen, search.search_id))
    warning = choosing.unconfirmed_warning(chosen, args.experiment, search.search_id)
    if warning:
        print(warning, file=sys.stderr)
    print(f"  register as {name}, alias {args.alias!r}")
    staged = stage(client, search, chosen, name, args.alias, args.out)
    gate = gate_result(client, staged, parse_margins(args.gate), args.force)
    reason = chosen.reason + (f"; {args.reason}" if args.reason else "")
    if args.dry_run:
        kept = dry_run(staged)
        print(f"dry run: the model rebuilds from its checkpoint; nothing written to MLflow; staged {kept}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise SearchError("not a terminal, so promote cannot ask: add --yes to promote without confirmation")
        try:
            answer = input("promote? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("not promoted")
            return 1
    start = time.monotonic()
    promotion = promote(client, staged, reason, gate)
    version = promotion.version
    if promotion.already:
        where = (
            f"alias {args.alias!r} already on it"
            if promotion.moved_from is None
            else f"alias {args.alias!r} -> version {version.version} (from {promotion.moved_from or 'unset'})"
        )
        print(f"already version {version.version} of {name} (the same checkpoint): nothing registered; {where}")
    else:
        print(
            f"registered {name} version {version.version}; alias {args.alias!r} -> version {version.version} "
            f"({time.monotonic() - start:.1f} s)"
        )
    load = f"load it with mlflow.pyfunc.load_model({promotion.model_uri!r})"
    if promotion.local_error:  # the promotion is complete: the file is a copy of the registry's
        print(
            f"warning: {promotion.local_error}; the registry has it: {promotion.model_uri}/{PRODUCTION_YAML}",
            file=sys.stderr,
        )
        print(load)
    else:
        print(f"wrote {promotion.production_yaml}; {load}")
    return 0


def gate_result(client: MlflowClient, staged: Staged, margins: dict[str, float], force: bool) -> str:
    """Compare the challenger with the version the alias holds, print the evidence; SearchError if it is worse."""
    from orchestrator.errors import SearchError
    from orchestrator.promotion.evaluate import production_settings
    from orchestrator.promotion.gate import run_gate
    from orchestrator.promotion.registry import load_version_module

    name, alias, champion = staged.model_name, staged.alias, staged.previous
    if champion is None:
        return f"none: the first version alias {alias!r} of {name} points at"
    if staged.holding is not None and str(staged.holding.version) == champion:
        return f"none: alias {alias!r} already holds this checkpoint"
    if force:
        print(f"  gate skipped (--force): not compared with version {champion}, which alias {alias!r} holds")
        return f"forced: not compared with version {champion}"
    version = client.get_model_version(name, champion)
    settings = production_settings(client, version, f"models:/{name}@{alias}")
    module = load_version_module(version)
    result = run_gate(module, settings, champion, staged.model, staged.config, margins)
    print(result.table())
    if not result.passed:
        raise SearchError(result.refusal())
    return result.summary()


def evaluate_command(args: argparse.Namespace) -> int:
    """`evaluate`: a registered model's objectives now, beside those recorded at promotion."""
    from mlflow.tracking import MlflowClient

    from orchestrator.checks import existing_store
    from orchestrator.promotion.evaluate import evaluate, log_evaluation

    client = MlflowClient(existing_store(args.tracking_uri))
    result = evaluate(client, args.model, args.stimuli, args.data)
    from orchestrator import names

    source = result.provenance
    print(
        f"{args.model} = version {result.version.version}: configuration {source[names.CONFIGURATION]} "
        f"seed {source[names.SEED]} of search {source[names.SEARCH_ID]}"
    )
    print(f"{'':<25} {'at promotion':>12} {'now':>10}")
    recorded = result.recorded
    # The validity of each shape bias beside it; a model promoted before the rate was kept shows it now only.
    shown = [m for m in (*recorded, names.CUE_DECISION_RATE, names.CUE_DECISION_RATE_HOLDOUT) if m in result.now]
    for name in dict.fromkeys(shown):
        value = result.now[name]
        if name not in recorded:
            print(f"{name:<25} {'-':>12} {value:>10.4f}  (not recorded at promotion)")
            continue
        change = "same" if value == recorded[name] else f"{value - recorded[name]:+.4f}"
        print(f"{name:<25} {recorded[name]:>12.4f} {value:>10.4f}  {change}")
    run_id = log_evaluation(client, result, args.model, args.stimuli, args.data)
    print(f"logged as MLflow run {run_id} in experiment {result.version.name}-evaluations")
    return 0


def history_command(args: argparse.Namespace) -> int:
    """`history`: every recorded move of a registered model's aliases, oldest first."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from orchestrator.checks import existing_store
    from orchestrator.errors import SearchError
    from orchestrator.promotion.audit import format_history, history

    client = MlflowClient(existing_store(args.tracking_uri))
    moves = history(client, args.model_name, args.alias)
    try:
        aliases = dict(client.get_registered_model(args.model_name).aliases)
    except MlflowException:
        if not moves:
            raise SearchError(f"no registered model {args.model_name!r} and no recorded moves of it") from None
        aliases = {}  # the model was deleted: its trail stays
    if args.alias is not None:
        aliases = {a: v for a, v in aliases.items() if a == args.alias}
    if not moves:
        print(f"no recorded moves of {args.model_name}" + (f" alias {args.alias!r}" if args.alias else ""))
    else:
        print(format_history(moves, {a: str(v) for a, v in aliases.items()}))
    return 0


def rollback_command(args: argparse.Namespace) -> int:
    """`rollback`: point the alias back at the version before the current one (or --to VERSION), recorded."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from orchestrator.checks import existing_store
    from orchestrator.errors import SearchError
    from orchestrator.promotion.audit import ROLLBACK, delete_record, history, record_move, rollback_target
    from orchestrator.promotion.registry import alias_version, check_registry_names

    name, alias = args.model_name, args.alias
    check_registry_names(name, alias)
    client = MlflowClient(existing_store(args.tracking_uri))
    current = alias_version(client, name, alias)
    target = (
        str(args.to) if args.to is not None else rollback_target(history(client, name, alias), current, name, alias)
    )
    try:
        client.get_model_version(name, target)
    except MlflowException:
        try:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        except MlflowException:
            versions = []
        raise SearchError(
            f"no version {target} of {name}; its versions: {', '.join(map(str, versions)) or 'none'}"
        ) from None
    if target == current:
        print(f"alias {alias!r} of {name} is already on version {target}: nothing to do")
        return 0
    reason = f"rollback from version {current or 'unset'}" + (f"; {args.reason}" if args.reason else "")
    record = record_move(client, name, alias, ROLLBACK, current, target, reason, gate="not applied (rollback)")
    try:
        client.set_registered_model_alias(name, alias, target)
    except BaseException:
        delete_record(client, record)
        raise
    print(f"rolled back: alias {alias!r} of {name} -> version {target} (from {current or 'unset'})")
    print("a server started from the alias keeps the model it loaded: restart it to serve this version")
    return 0
