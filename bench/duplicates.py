"""How many configurations of a search train a network already trained: before and after distinct networks.

    .venv/bin/python bench/duplicates.py [--configurations 24] [--searches 20] [key=value ...]

For each sampler seed, the quickstart's space (or the overrides'): *before* is how many of the
first `configurations - 1` proposals repeat a network an earlier one gives (the same k at every
placement, the same knobs), which a search that trained every proposal trained twice; *after* is
how many the real `ReplicateSearcher` trains twice (fed made-up results, no training), and how
many proposals it was told about instead. Sampling is cheap, so many searches are counted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import optuna
from ray.tune.search import Searcher

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator import names  # noqa: E402
from orchestrator.search.searcher import ReplicateSearcher, make_study  # noqa: E402
from search_spaces.params import Params  # noqa: E402
from search_spaces.spec import SearchSpec, load_spec  # noqa: E402

QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"


def before(spec: SearchSpec) -> int:
    """Repeats among the first configurations - 1 proposals of the spec's sampler, each trained."""
    study = make_study(spec, "before", storage=optuna.storages.InMemoryStorage())
    seen = set()
    repeats = 0
    for _ in range(spec.configurations - 1):
        trial = study.ask()
        network = spec.network_of(spec.search.suggest(trial))
        repeats += network in seen
        seen.add(network)
        study.tell(trial, [0.5, 0.3])
    return repeats


def after(spec: SearchSpec) -> tuple[int, int]:
    """(networks trained twice, proposals told instead of trained) by the real searcher."""
    study = make_study(spec, "after", storage=optuna.storages.InMemoryStorage())
    searcher = ReplicateSearcher.for_spec(spec, study)
    trained = []
    for i in range(spec.configurations * len(spec.seeds) + 1):
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED or not isinstance(config, dict):
            break
        trained.append(spec.network_of(Params.from_dict(config[names.PARAMS])))
        result = {"accuracy": 0.5, "shape_bias": 0.3, "cue_decision_rate": 0.8, "epoch": spec.training.epochs}
        searcher.on_trial_complete(f"t{i}", result)
    told = sum(names.REUSED_CONFIGURATION in t.user_attrs for t in study.get_trials(deepcopy=False))
    return len(trained) - len(set(trained)), told


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configurations", type=int, default=24)
    parser.add_argument("--searches", type=int, default=20, help="sampler seeds 0 .. N-1")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the quickstart YAML")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    for seed in range(args.searches):
        spec = load_spec(
            QUICKSTART, [f"configurations={args.configurations}", "seeds=[0]", f"sampler_seed={seed}", *args.overrides]
        )
        rows.append((before(spec), *after(spec)))
    print(f"{args.searches} searches of {args.configurations} configurations, sampler {spec.sampler}")
    print("sampler_seed  before (trained twice)  after (trained twice)  proposals told, not trained")
    for seed, (b, a, told) in enumerate(rows):
        print(f"{seed:>12}  {b:>22}  {a:>21}  {told:>27}")
    duplicates = [b for b, _, _ in rows]
    print(
        f"before: {statistics.fmean(duplicates):.1f} of {args.configurations - 1} proposed configurations per search "
        f"trained a network again (median {statistics.median(duplicates):g}, range {min(duplicates)}-{max(duplicates)})"
    )
    print(f"after: {max(a for _, a, _ in rows)} trained twice in any search")
    print(f"duplicates_before_per_search: {statistics.fmean(duplicates):.2f}")
    print(f"duplicates_after_per_search: {statistics.fmean(a for _, a, _ in rows):.2f}")


if __name__ == "__main__":
    main()
