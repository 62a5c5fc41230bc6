"""Command line: run, resume, or report a search over Top-K sparsity for shape bias; promote its model.

    python run_search.py search --config search_spaces/quickstart.yaml [key=value ...]
    python run_search.py resume --config search_spaces/quickstart.yaml [--search ID]
    python run_search.py pareto --experiment sparse-shape-search-quickstart
    python run_search.py confirm --experiment sparse-shape-search-quickstart --top 1 --seeds 3
    python run_search.py promote --experiment sparse-shape-search-quickstart --maximize shape_bias \\
        --floor accuracy=dense-0.05
    python run_search.py evaluate --model models:/sparse-resnet18-sparse-shape-search-quickstart@production
    python run_search.py history --model-name sparse-resnet18-sparse-shape-search-quickstart
    python run_search.py rollback --model-name sparse-resnet18-sparse-shape-search-quickstart --reason "..."

Config errors (found before Ray starts), and what the other commands cannot find or do, are
reported in one line with exit code 2. Each command imports torch, Ray and MLflow only when it runs,
so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from search_spaces.params import OBJECTIVES  # plain names: no torch, Ray or MLflow behind them

if TYPE_CHECKING:
    from search_spaces.spec import SearchSpec

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (see search_spaces/*.yaml)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override any field, dotted for nesting: configurations=4 search.fraction.high=0.3 seeds=[0,1,2]",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line: search, resume, pareto, confirm, promote, evaluate, history, rollback."""
    parser = argparse.ArgumentParser(
        prog="run_search.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{search,resume,pareto,confirm,promote,evaluate,history,rollback}"
    )
    search = commands.add_parser(
        "search",
        help="run a new search",
        description=(
            "Run a new search: Optuna proposes configurations (Top-K fraction, placement, training knobs), each runs "
            "under every seed as a Ray Tune trial, MLflow records a parent run with one child per trial, and the "
            "Pareto front is printed and written to pareto.csv / pareto.png."
        ),
    )
    _add_config_arguments(search)
    resume = commands.add_parser(
        "resume",
        help="continue an interrupted search (default: the newest resumable one of this config's name)",
        description="Continue an interrupted search (Tuner.restore): finished trials are not rerun, unfinished ones "
        "restart from their last checkpoint and reattach to their MLflow runs, and Optuna continues its stored "
        "study. The search keeps the settings it started with: the config file supplies only where things are "
        "(name, storage_path, tracking_uri, experiment, optuna_storage, address) and resources, and an override of "
        "any other setting that would change it is refused. Starts that failed before any trial ran have nothing "
        "to resume and are skipped.",
    )
    _add_config_arguments(resume)
    resume.add_argument(
        "--search", help="the search id to resume (printed when it started, and its MLflow parent run's name)"
    )
    front = commands.add_parser(
        "pareto",
        help="print and plot the Pareto front of a finished search",
        description="Read a search's child runs from MLflow, print the front, write pareto.csv and pareto.png; "
        "MLflow is only read unless --log.",
    )
    front.add_argument("--experiment", required=True, help="MLflow experiment name")
    front.add_argument("--search", help="search id (default: the newest search in the experiment)")
    front.add_argument("--tracking-uri", help=TRACKING_HELP)
    front.add_argument("--seeds", type=int, help="seeds per configuration (default: from the search's parent run)")
    front.add_argument(
        "--out", type=Path, default=Path.cwd(), help="directory for pareto.csv and pareto.png (default: .)"
    )
    front.add_argument(
        "--log",
        action="store_true",
        help="also record the front in MLflow again (files, table, metrics, pareto_front tags); default: read only",
    )

    confirm = commands.add_parser(
        "confirm",
        help="retrain chosen configurations and the dense reference on fresh seeds: is the gain real?",
        description="Train the chosen configurations of a finished search (by id, or the --top M by p_front) and "
        "its dense reference again on N seeds the search never used, as child runs of its parent run tagged "
        "stage: confirm (Optuna never sees them), and report each one's gain over dense on the held-out stimuli "
        "with an interval and a Holm-adjusted p-value (Welch's t-test over seeds). An interrupted confirmation "
        "resumes when the same command is run again.",
    )
    confirm.add_argument("--experiment", required=True, help="MLflow experiment name")
    confirm.add_argument("--search", help="search id (default: the newest finished search in the experiment)")
    which = confirm.add_mutually_exclusive_group(required=True)
    which.add_argument("--configuration", nargs="+", metavar="ID", help="configuration ids, e.g. c004 c007")
    which.add_argument("--top", type=_at_least(1), metavar="M", help="the M most likely on the front (see --by)")
    confirm.add_argument(
        "--by",
        choices=("p_front", "accuracy", "shape_bias"),
        default="p_front",
        help="with --top: rank feasible configurations by p_front (default) or by the seed mean of an objective",
    )
    confirm.add_argument(
        "--seeds", required=True, type=_at_least(2), metavar="N", help="fresh seeds per configuration (2 or more)"
    )
    confirm.add_argument("--address", help="a Ray cluster to run on (default: $RAY_ADDRESS, else Ray in-process)")
    confirm.add_argument("--tracking-uri", help=TRACKING_HELP)

    promote = commands.add_parser(
        "promote",
        help="register a chosen configuration's model and point an alias at it",
        description="Choose a configuration of a finished search (by id, or the highest seed mean of one objective "
        "above floors), gate it against the version the alias holds (both scored now on the challenger's held-out "
        "data), register its most representative seed's model in the MLflow Model Registry, record the move in "
        "the audit trail (`history`), and move the alias (default: production) to the new version.",
    )
    promote.add_argument("--experiment", required=True, help="MLflow experiment name")
    promote.add_argument("--search", help="search id (default: the newest finished search in the experiment)")
    pick = promote.add_mutually_exclusive_group(required=True)
    pick.add_argument("--configuration", help="a configuration id, e.g. c004")
    pick.add_argument("--maximize", choices=OBJECTIVES, help="the objective whose highest seed mean wins")
    promote.add_argument(
        "--floor",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="with --maximize: a seed-mean floor on accuracy, shape_bias or cue_decision_rate, absolute "
        "(accuracy=0.75) or relative to the dense reference (cue_decision_rate=dense-0.2); repeatable. The "
        "search's own constraints always apply",
    )
    promote.add_argument(
        "--confirmed",
        action="store_true",
        help="with --maximize: apply it and --floor to the figures of the search's latest confirmation on fresh "
        "seeds (`run_search.py confirm`), among the configurations it confirmed",
    )
    promote.add_argument("--model-name", help="registered model name (default: sparse-<model.arch>-<experiment>)")
    promote.add_argument("--alias", default="production", help="alias moved to the new version (default: production)")
    promote.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="METRIC=MARGIN",
        help="how far below the champion the challenger may be, absolute, on accuracy (test set), shape_bias or "
        "cue_decision_rate (report half of the stimuli); repeatable; default accuracy=-0.02 shape_bias=-0.01",
    )
    promote.add_argument(
        "--force", action="store_true", help="skip the gate (recorded in the version's tags and the audit trail)"
    )
    promote.add_argument("--reason", help="why, in words: recorded with the move in the audit trail")
    promote.add_argument("--yes", action="store_true", help="do not ask for confirmation (scripts)")
    promote.add_argument(
        "--dry-run",
        action="store_true",
        help="choose, rebuild the model, run the gate, stage production.yaml (as production.dry-run.yaml); write "
        "nothing to MLflow",
    )
    promote.add_argument("--tracking-uri", help=TRACKING_HELP)
    promote.add_argument("--out", type=Path, default=Path.cwd(), help="directory for production.yaml (default: .)")

    evaluate = commands.add_parser(
        "evaluate",
        help="recompute a registered model's accuracy and shape bias",
        description="Recompute accuracy and shape bias of a registered model and print them "
        "beside the values recorded when it was promoted.",
    )
    evaluate.add_argument("--model", required=True, help="models:/NAME@ALIAS or models:/NAME/VERSION")
    evaluate.add_argument("--stimuli", type=Path, help="cue-conflict folder (default: the one it was trained with)")
    evaluate.add_argument(
        "--data", type=Path, help="labelled test folder, one sub-folder per class (folder-trained models)"
    )
    evaluate.add_argument("--tracking-uri", help=TRACKING_HELP)

    history = commands.add_parser(
        "history",
        help="every recorded alias move of a registered model: who, when, from, to, why, gate",
        description="Print the audit trail of a registered model's aliases (runs of the MLflow experiment "
        "registry-audit), oldest first, and say where an alias was moved outside run_search.py.",
    )
    history.add_argument("--model-name", required=True, help="registered model name")
    history.add_argument("--alias", help="only this alias's moves (default: every alias)")
    history.add_argument("--tracking-uri", help=TRACKING_HELP)

    rollback = commands.add_parser(
        "rollback",
        help="point the alias back at the version it held before (or --to VERSION), recorded",
        description="Move the alias back to the version the audit trail says it held before the current one (or "
        "to --to VERSION), without a gate, and record the move. A second rollback undoes the first.",
    )
    rollback.add_argument("--model-name", required=True, help="registered model name")
    rollback.add_argument("--alias", default="production", help="the alias to move (default: production)")
    rollback.add_argument("--to", type=_at_least(1), metavar="VERSION", help="the version to point it at")
    rollback.add_argument("--reason", help="why, in words: recorded with the move")
    rollback.add_argument("--tracking-uri", help=TRACKING_HELP)
    return parser


def pareto_command(args: argparse.Namespace) -> int:
    """`pareto`: the front of a finished search, from MLflow alone."""
    from mlflow.tracking import MlflowClient

    from orchestrator.checks import existing_store, writable_dir
    from orchestrator.report import report_front
    from orchestrator.tracking import find_search

    writable_dir(args.out, "--out")
    client = MlflowClient(existing_store(args.tracking_uri))
    search = find_search(client, args.experiment, search_id=args.search)
    report_front(client, search, args.out, args.seeds, log=args.log)
    return 0


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `low`, else a one-line error naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value

    return parse


def confirm_command(args: argparse.Namespace) -> int:
    """`confirm`: the chosen configurations and the dense reference on fresh seeds, and the verdict."""
    import ray
    from mlflow.tracking import MlflowClient
    from pydantic import ValidationError

    from orchestrator.checks import existing_store
    from orchestrator.errors import SearchError, SearchInterrupted
    from orchestrator.intervals import bootstrap
    from orchestrator.rounds import check_configurations
    from orchestrator.search.confirm import confirmation_stage
    from orchestrator.search.ray_session import quiet, sigterm_as_ctrl_c, start_ray
    from orchestrator.tracking import collect, find_search, per_image_outcomes
    from search_spaces.spec import SearchSpec
    from trainables.messages import describe

    client = MlflowClient(existing_store(args.tracking_uri))
    search = find_search(client, args.experiment, search_id=args.search, status=None if args.search else "FINISHED")
    if search.status != "FINISHED":
        raise SearchError(
            f"search {search.search_id} is {search.status}, not FINISHED: finish it with `run_search.py resume` first"
        )
    try:
        spec = SearchSpec.model_validate(search.saved_spec(client) | {"address": args.address})
    except ValidationError as error:
        raise SearchError(
            f"the saved settings of search {search.search_id} no longer validate: {describe(error)}"
        ) from None
    results = collect(client, search)
    check_configurations(results, args.configuration or (), search.search_id)  # before Ray starts
    bounds = bootstrap(results, per_image_outcomes(client, results), search.floors) if args.top else {}
    quiet()
    start_ray(spec, client.tracking_uri)
    sigterm_as_ctrl_c()
    try:
        confirmation_stage(
            spec,
            client,
            search,
            results,
            bounds,
            args.seeds,
            args.top or 1,
            args.by,
            args.configuration or (),
            data_digests=search.data_digests,
        )
    except (SearchInterrupted, KeyboardInterrupt):
        print(
            "confirmation interrupted; its finished trials are kept: run the same command again to resume it",
            file=sys.stderr,
        )
        return 130
    finally:
        ray.shutdown()
    return 0


def _registry_command(name: str) -> Callable[[argparse.Namespace], int]:
    """A command of `orchestrator.promotion.commands`, imported when it runs (`--help` stays instant)."""

    def run(args: argparse.Namespace) -> int:
        from orchestrator.promotion import commands

        return int(getattr(commands, f"{name}_command")(args))

    return run


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "pareto": pareto_command,
    "confirm": confirm_command,
    **{name: _registry_command(name) for name in ("promote", "evaluate", "history", "rollback")},
}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; its exit code."""
    args = build_parser().parse_args(argv)
    if args.command in COMMANDS:
        from orchestrator.console import LIBRARY_LOGGERS, WITH_RAY, bound_http_retries, quiet_libraries
        from orchestrator.errors import sigterm_as_keyboard_interrupt

        bound_http_retries()  # a search rides out an outage instead: its workers hold their metrics
        log = quiet_libraries(args.command, WITH_RAY if args.command == "confirm" else LIBRARY_LOGGERS)
        sigterm_as_keyboard_interrupt()  # a registry command stopped by `kill` undoes what it wrote, as on Ctrl+C
        return _one_line_errors(COMMANDS[args.command], args, log)
    from search_spaces.spec import ConfigError, load_spec

    try:
        spec = load_spec(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from orchestrator.console import WITH_RAY, quiet_libraries

    return _one_line_errors(lambda args: search_command(spec, args), args, quiet_libraries(args.command, WITH_RAY))


def search_command(spec: SearchSpec, args: argparse.Namespace) -> int:
    """`search` / `resume`: run the search to its end."""
    # Imported after validation: a config error is reported before Ray or MLflow load.
    from orchestrator.errors import SearchInterrupted
    from orchestrator.search.driver import run_search

    resume = args.command == "resume"
    try:
        run_search(spec, resume=resume, search_id=getattr(args, "search", None), overrides=args.overrides)
    except SearchInterrupted as stopped:
        # The search keeps its own settings when resumed: the config file and where things are suffice.
        again = shlex.join(
            [
                "run_search.py",
                "resume",
                "--config",
                args.config,
                *_location_overrides(args.overrides),
                "--search",
                stopped.search_id,
            ]
        )
        print(f"{stopped}; its finished trials are kept. Continue it with:\n  {again}", file=sys.stderr)
        return 130  # the shell's code for a run stopped by Ctrl+C
    return 0


def _location_overrides(overrides: list[str]) -> list[str]:
    """The overrides a resume still needs: those that say where things are (and what a trial asks)."""
    from search_spaces.spec import may_change_on_resume

    return [o for o in overrides if may_change_on_resume(o)]


def _one_line_errors(
    command: Callable[[argparse.Namespace], int], args: argparse.Namespace, log: Path | None = None
) -> int:
    """Run a command; what it cannot find or do is one line on stderr and exit code 2 (130 if interrupted)."""
    from orchestrator.console import library_log_note, server_failure
    from orchestrator.errors import CommandInterrupted, SearchError, own_error
    from trainables.messages import one_line

    try:
        return command(args)
    except CommandInterrupted as error:
        print(f"interrupted: {one_line(error)[:2000]}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except Exception as raised:
        failure = own_error(raised)  # a search callback's, which Tune re-raised as its traceback
        if isinstance(failure, SearchError):
            print(f"error: {one_line(failure)[:2000]}{library_log_note(log)}", file=sys.stderr)
            return 2
        from mlflow.exceptions import MlflowException
        from optuna.exceptions import OptunaError
        from sqlalchemy.exc import SQLAlchemyError

        from search_spaces.locations import resolve_tracking_uri

        if not isinstance(failure, (MlflowException, OptunaError, SQLAlchemyError, OSError, ValueError)):
            raise  # a bug: its traceback is what a report needs
        # A store that refuses a query, a file that cannot be read, data that does not fit.
        line = server_failure(failure, resolve_tracking_uri(getattr(args, "tracking_uri", None)))
        line = line or f"{type(failure).__name__}: {one_line(failure)[:500]}"
        print(f"error: {line}{library_log_note(log)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
