"""Experiment files: the shipped ones validate; each bad one fails in one line, exit code 2, before Ray."""

import re
import subprocess
import sys

import pytest

import run_search
from conftest import QUICKSTART, ROOT
from search_spaces.spec import ConfigError, apply_override, load_spec


def test_quickstart_validates_and_builds_trials():
    spec = load_spec(QUICKSTART)
    assert spec.configurations * len(spec.seeds) >= 16
    trial = spec.trial_config({"placement": "layer1+layer2", "fraction": 0.1}, seed=1)
    assert trial["model"]["topk"] == {"layer1": 0.1, "layer2": 0.1} and trial["seed"] == 1
    assert spec.trial_config({"placement": "dense"}, seed=0)["model"]["topk"] == {}
    assert spec.resolved_tracking_uri().startswith("sqlite:////")


def test_cifar10_config_validates_against_the_shared_data(shared_data):
    spec = load_spec(
        ROOT / "search_spaces" / "cifar10.yaml",
        [
            f"data.train_dir={shared_data}/cifar10/train",
            f"data.test_dir={shared_data}/cifar10/test",
            f"data.stimuli_dir={shared_data}/cue-conflict",
        ],
    )
    assert spec.data.label_space == "cifar10"


def test_imagenet16_config_only_lacks_its_data():
    with pytest.raises(ConfigError, match=r"data.train_dir: directory not found"):
        load_spec(ROOT / "search_spaces" / "imagenet16.yaml")


def test_overrides_reach_nested_keys_and_parse_values():
    raw = {"search": {"fraction": {"low": 0.1}}}
    apply_override(raw, "search.fraction.high=0.3")
    apply_override(raw, "seeds=[0, 1, 2]")
    apply_override(raw, "training.lr=1e-2")
    assert raw == {"search": {"fraction": {"low": 0.1, "high": 0.3}}, "seeds": [0, 1, 2], "training": {"lr": 0.01}}


BAD = [
    (["bogus=1"], "bogus: Extra inputs are not permitted"),
    (["search.fraction.high=1.5"], r"search.fraction.high: Input should be less than or equal to 1"),
    (["search.fraction.low=0"], r"search.fraction.low: Input should be greater than 0"),
    (["search.fraction.low=0.6"], r"low \(0.6\) must be below high \(0.5\)"),
    (
        ["search.placements=[[layer9]]"],
        r"search.placements: unknown Top-K placement 'layer9' for resnet18; "
        r".*nearest: layer4.*the main ones: stem, layer1.0",
    ),
    (["search.placements=[]"], r"search.placements: List should have at least 1 item"),
    (["search.placements=[[]]"], r"placement set 0 is empty"),
    (["search.placements=[[layer2], [layer2]]"], r"placement sets repeat"),
    (["search.placements=[[layer2, layer2.1]]"], r"same tensor"),
    (["configurations=many"], r"configurations: Input should be a valid integer.*'many'"),
    (["configurations=1"], r"configurations: Input should be greater than or equal to 2"),
    (["seeds=[]"], r"seeds: List should have at least 1 item"),
    (["seeds=[0, 0]"], r"seeds repeat"),
    (["sampler=cmaes"], r"sampler: Input should be 'tpe', 'nsga2', 'random', 'gp' or 'grid'.*'cmaes'"),
    (["objectives=[accuracy]"], r"objectives must be both of"),
    (["resources.gpu=-1"], r"resources.gpu: Input should be greater than or equal to 0"),
    (["training.lr=-0.1"], r"training.lr: Input should be greater than 0"),
    (["model.topk={layer2: 0.2}"], r"model.topk is set by the search"),
    (["model.stem=vit"], r"model.stem: Input should be 'imagenet' or 'cifar'"),
    (
        ["data.kind=folder", "data.train_dir=/nonexistent/train"],
        r"data.train_dir: directory not found: /nonexistent/train",
    ),
    (["data.kind=imagenet"], r"data: Input tag 'imagenet' found using 'kind' does not match"),
    (["accuracy_floor=2"], r"accuracy_floor: Input should be less than or equal to 1"),
    (["search.lr={low: 0, high: 0.1, log: true}"], r"a log range needs low > 0"),
    (["name=has space"], r"name: String should match pattern"),
    (["concurrency=0"], r"concurrency: Input should be greater than or equal to 1"),
    (["noequals"], r"override 'noequals' is not key=value"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[o[0] for o, _ in BAD])
def test_bad_config_is_one_clear_line(overrides, message, capsys):
    assert run_search.main(["search", "--config", str(QUICKSTART), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ")
    assert __import__("re").search(message, err), err


def test_missing_and_malformed_files(tmp_path, capsys):
    assert run_search.main(["search", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    assert run_search.main(["search", "--config", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_command_line_exit_code_and_no_ray_started(tmp_path):
    # A config error must be caught before Ray or MLflow are even imported.
    code = (
        "import sys, run_search; rc = run_search.main(sys.argv[1:]); "
        "assert 'ray' not in sys.modules and 'mlflow' not in sys.modules, 'imported too early'; sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "search", "--config", str(QUICKSTART), "search.fraction.high=1.5"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2, out.stderr
    assert "search.fraction.high" in out.stderr and not (tmp_path / "mlflow.db").exists()


COMMANDS = ("search", "resume", "pareto", "confirm", "promote", "evaluate")
# What --help must not wait for: each of these takes seconds to import.
HEAVY = ("torch", "torchvision", "ray", "mlflow", "optuna", "pydantic")
HELP = """
import sys
import run_search
try:
    run_search.main(sys.argv[1:])
except SystemExit as exit:
    print("exit", exit.code)
print("imported", sorted(m for m in {heavy} if m in sys.modules))
"""


def test_help_explains_every_command_without_importing_the_stack():
    top = subprocess.run(
        [sys.executable, "-c", HELP.format(heavy=HEAVY), "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert "exit 0" in top.stdout and "imported []" in top.stdout, top.stdout + top.stderr
    usage = top.stdout.split("positional arguments")[1]
    assert all(f"    {command} " in usage for command in COMMANDS), usage
    for command in COMMANDS:
        out = subprocess.run(
            [sys.executable, "-c", HELP.format(heavy=HEAVY), command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert "usage: run_search.py " + command in out.stdout, out.stdout + out.stderr
        assert "exit 0" in out.stdout and "imported []" in out.stdout, out.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["search.placements=[[layer1, layer1]]"], "names a placement twice"),
        (["search.placements=[[layer1, layer2], [layer2, layer1]]"], "placement sets repeat"),
    ],
)
def test_more_bad_configs(overrides, message, capsys):
    assert run_search.main(["search", "--config", str(QUICKSTART), *overrides]) == 2
    assert message in capsys.readouterr().err


def test_only_numeric_override_strings_become_numbers():
    assert load_spec(QUICKSTART, ["name=inf"]).name == "inf"
    assert load_spec(QUICKSTART, ["training.lr=1e-2"]).training.lr == 0.01


def test_relative_data_paths_become_absolute(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(shared_data.parent)
    spec = load_spec(
        ROOT / "search_spaces" / "cifar10.yaml",
        ["data.train_dir=data/cifar10/train", "data.test_dir=data/cifar10/test", "data.stimuli_dir=data/cue-conflict"],
    )
    assert spec.data.train_dir.is_absolute()
    assert spec.trial_config({"placement": "dense"}, 0)["data"]["train_dir"] == str(
        (shared_data / "cifar10" / "train").resolve()
    )


def test_per_layer_k_gives_each_placement_its_own_parameter_everywhere():
    import optuna

    from search_spaces.params import Params

    spec = load_spec(
        ROOT / "search_spaces" / "quickstart.yaml",
        ["search.fraction_per_placement=true", "search.placements=[[layer1, layer2]]"],
    )
    trial = optuna.create_study().ask()
    params = spec.search.suggest(trial)
    assert set(trial.params) == {"placement", "fraction.layer1", "fraction.layer2"}
    assert params == Params.from_dict(trial.params)
    topk = spec.trial_config(params, seed=0)["model"]["topk"]
    assert topk == {"layer1": trial.params["fraction.layer1"], "layer2": trial.params["fraction.layer2"]}
    assert Params.from_mlflow(params.to_mlflow()) == params  # a child run's params read back
    assert params.fraction_label(2) == f"layer1 {topk['layer1']:.2f}, layer2 {topk['layer2']:.2f}"


def test_a_per_placement_grid_crosses_each_placements_points_and_counts_distinct_networks():
    import optuna

    from orchestrator.search.searcher import make_sampler

    spec = load_spec(
        QUICKSTART,
        [
            "sampler=grid",
            "search.fraction_per_placement=true",
            "search.placements=[[layer1, layer2]]",
            "search.fraction.grid=[0.0625, 0.125, 0.5]",
            "search.lr={low: 0.01, high: 0.04, log: true, grid: 2}",
            "configurations=19",
        ],
    )
    grid = spec.search.grid_space()
    assert grid["fraction.layer1"] == grid["fraction.layer2"] == [0.0625, 0.125, 0.5]
    # layer1 (8x8) keeps 4, 8, 32 and layer2 (4x4) 1, 2, 8 positions: 9 layouts x 2 learning rates.
    assert spec.distinct_networks() == 18
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=make_sampler(spec))
    asked = [study.ask() for _ in range(18)]
    networks = {spec.network_of(spec.search.suggest(trial)) for trial in asked}
    assert len(networks) == 18


def test_a_grid_search_tries_each_point_once_and_refuses_what_it_cannot_cover():
    import optuna

    from orchestrator.search.searcher import make_sampler

    spec = load_spec(QUICKSTART, ["sampler=grid", "search.fraction.grid=3", "configurations=11"])
    assert spec.search.grid_space()["fraction"] == [0.02, 0.1, 0.5]  # log-spaced, ends exact
    # 12 points, but layer2 (4x4 at 32 px) keeps k = 1 at both 0.02 and 0.1: 11 distinct networks.
    assert spec.distinct_networks() == 11
    assert load_spec(QUICKSTART, ["search.fraction.grid=8"]).search.fraction.grid_values() == [
        0.02,
        0.03168,
        0.05017,
        0.07946,
        0.1258,
        0.1993,
        0.3157,
        0.5,
    ]
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=make_sampler(spec))
    asked = [study.ask() for _ in range(12)]  # all at once: as many running as the grid holds
    for trial in asked:
        spec.search.suggest(trial)
    assert len({(t.params["placement"], t.params["fraction"]) for t in asked}) == 12
    for overrides, message in [
        (["sampler=grid"], "sampler: grid needs grid points for search.fraction: add grid: <count>"),
        (
            ["sampler=grid", "search.fraction.grid=3", "configurations=13"],
            "configurations 13 exceeds the 11 distinct networks the grid's points hold",
        ),
        (["search.fraction.grid=[0.01, 0.1]"], "grid [0.01, 0.1] must list distinct values within [0.02, 0.5]"),
        (
            [
                "sampler=grid",
                "search.fraction.grid=3",
                "search.fraction_per_placement=true",
                "search.placements=[[layer1], [layer1, layer2]]",
            ],
            "sampler: grid searches per-placement fractions in one placement set, got 2",
        ),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_spec(QUICKSTART, overrides)
