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

from search_spaces.spec import ConfigError, load_spec


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
    front.add_argument("--seeds", type=int, help="seeds per configuration (default: from the search's parent run)")
    front.add_argument("--out", type=Path, default=Path.cwd(), help="directory for pareto.csv and pareto.png (default: .)")
    return parser


def pareto_command(args: argparse.Namespace) -> int:
    import json

    from mlflow.tracking import MlflowClient

    from orchestrator.search import SearchError, report_front
    from search_spaces.spec import absolute_sqlite

    uri = absolute_sqlite(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        names = [e.name for e in client.search_experiments()]
        print(f"error: no MLflow experiment {args.experiment!r} at {uri}; known: {', '.join(names) or 'none'}", file=sys.stderr)
        return 2
    filter_string = f"tags.search_id = '{args.search}'" if args.search else "tags.search_id != ''"
    parents = client.search_runs([experiment.experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        print(f"error: no search {args.search or ''} in experiment {args.experiment!r}".replace("  ", " "), file=sys.stderr)
        return 2
    parent = parents[0]
    seeds = args.seeds or len(json.loads(parent.data.params.get("seeds", "[0]").replace("'", '"')))
    try:
        report_front(client, experiment.experiment_id, parent.info.run_id, parent.data.tags["search_id"], seeds, args.out)
    except SearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "pareto":
        return pareto_command(args)
    try:
        spec = load_spec(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Imported after validation: a config error is reported before Ray or MLflow load.
    from orchestrator.search import SearchError, run_search

    try:
        run_search(spec, resume=args.command == "resume")
    except SearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
