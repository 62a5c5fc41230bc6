"""Command line: run, resume, or report a search over Top-K sparsity for shape bias.

    python run_search.py search --config search_spaces/quickstart.yaml [key=value ...]
    python run_search.py resume --config search_spaces/quickstart.yaml [key=value ...]
    python run_search.py pareto --experiment sparse-shape-search-quickstart

Config errors are reported in one line with exit code 2, before Ray starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from search_spaces.spec import ConfigError, SearchSpec, load_spec


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (see search_spaces/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override any field, dotted for nesting: configurations=4 search.fraction.high=0.3 seeds=[0,1,2]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_search.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="run a new search", description=(
        "Run a new search: Optuna proposes configurations (Top-K fraction, placement, training knobs), each runs "
        "under every seed as a Ray Tune trial, MLflow records a parent run with one child per trial, and the "
        "Pareto front is printed and written to pareto.csv / pareto.png."))
    _add_config_arguments(search)
    resume = commands.add_parser("resume", help="continue the newest unfinished search of this config's name",
                                 description="Continue an interrupted search (Tuner.restore): finished trials are not rerun, "
                                 "unfinished ones restart from their last checkpoint and reattach to their MLflow runs, "
                                 "and Optuna continues its stored study.")
    _add_config_arguments(resume)
    front = commands.add_parser("pareto", help="print and plot the Pareto front of a finished search",
                                description="Read a search's child runs from MLflow, print the front, write pareto.csv and pareto.png.")
    front.add_argument("--experiment", required=True, help="MLflow experiment name")
    front.add_argument("--search", help="search id (default: the newest search in the experiment)")
    front.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    front.add_argument("--out", type=Path, default=Path.cwd(), help="directory for pareto.csv and pareto.png (default: .)")
    return parser


def tracking_uri(given: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the spec's default (sqlite:///mlflow.db)."""
    from search_spaces.spec import DEFAULT_TRACKING_URI, absolute_sqlite

    return absolute_sqlite(given or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


def pareto_command(args: argparse.Namespace) -> int:
    """`pareto`: the front of a finished search, from MLflow alone."""
    from mlflow.tracking import MlflowClient

    from orchestrator.report import report_front
    from orchestrator.tracking import find_search

    client = MlflowClient(tracking_uri(args.tracking_uri))
    search = find_search(client, args.experiment, search_id=args.search)
    report_front(client, search, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "pareto":
        return _one_line_errors(pareto_command, args)
    try:
        spec = load_spec(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return _one_line_errors(lambda args: search_command(spec, resume=args.command == "resume"), args)


def search_command(spec: SearchSpec, resume: bool) -> int:
    """`search` / `resume`: run the search to its end."""
    # Imported after validation: a config error is reported before Ray or MLflow load.
    from orchestrator.driver import run_search

    run_search(spec, resume=resume)
    return 0


def _one_line_errors(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; a SearchError is one line on stderr and exit code 2."""
    from orchestrator.tracking import SearchError

    try:
        return command(args)
    except SearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
