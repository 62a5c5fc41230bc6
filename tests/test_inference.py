"""The paper's experiment: Top-K inserted at inference into a pretrained torchvision model.

Weights cannot be downloaded here, so a random AlexNet's state dict saved to a file stands in for
torchvision's; the images are real (the filled silhouettes as the labelled set, the cue-conflict
stimuli for shape bias)."""

import pytest
import torch
import torchvision
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, cli, spliced_by_hand
from trainables.config import TrialConfig
from trainables.cue_conflict import shape_bias_from_csv
from trainables.label_spaces import imagenet16_table
from trainables.models import expand_preset

TOPK = dict.fromkeys(expand_preset(["after_every_pool"], "alexnet"), 0.1)


@pytest.fixture
def alexnet_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "alexnet-random.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def trial_config(shared_data, weights, **model):
    return {
        "data": {
            "kind": "folder",
            "train_dir": str(shared_data / "filled-silhouettes"),
            "test_dir": str(shared_data / "filled-silhouettes"),
            "stimuli_dir": str(shared_data / "cue-conflict"),
            "label_space": "categories",
            "image_size": 96,
        },
        "model": {"arch": "alexnet", "weights": str(weights), "head": "imagenet1k", "topk": TOPK, **model},
        "training": {"epochs": 0, "batch_size": 16, "device": "cpu"},
    }


def test_the_trial_cli_evaluates_a_pretrained_file_as_the_definition_says(tmp_path, shared_data, alexnet_weights):
    config = trial_config(shared_data, alexnet_weights)
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(config))
    out = cli(
        "--config",
        str(tmp_path / "trial.yaml"),
        "--checkpoint-dir",
        str(tmp_path / "state"),
        cwd=ROOT,
        module="trainables.trial",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("evaluated as loaded"))
    reported = float(line.split("accuracy ")[1].split()[0])
    shape_bias = float(line.split("shape bias ")[1].split()[0])
    assert f"{shape_bias_from_csv(tmp_path / 'state' / 'decisions.csv').shape_bias:.3f}" == f"{shape_bias:.3f}"
    held_out = float(line.split("held-out shape bias ")[1].split()[0])
    assert f"{shape_bias_from_csv(tmp_path / 'state' / 'decisions_holdout.csv').shape_bias:.3f}" == f"{held_out:.3f}"

    # The same accuracy from the definition: the torchvision model with Top-K spliced in by hand;
    # per image, the category whose member ImageNet classes have the highest mean probability.
    data = TrialConfig.model_validate(config).data.build(16, 0, augment=False)
    model = spliced_by_hand("alexnet", torch.load(alexnet_weights, weights_only=True), TOPK)
    table = imagenet16_table()
    with torch.no_grad():
        x = torch.nn.functional.interpolate(data.test_images.float() / 255, size=96, mode="bilinear", antialias=True)
        x = torchvision.transforms.functional.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        probabilities = model(x).softmax(-1)
    scores = torch.stack([probabilities[:, v["imagenet_indices"]].mean(-1) for v in table.values()], -1)
    decided = [list(table)[i] for i in scores.argmax(-1).tolist()]
    truth = [data.class_names[label] for label in data.test_labels.tolist()]
    expected = sum(d == t for d, t in zip(decided, truth, strict=True)) / len(truth)
    assert abs(reported - expected) < 1e-3 + 1 / len(truth), (reported, expected)


@pytest.mark.parametrize(
    "model, training, message",
    [
        (
            {"head": "imagenet1k"},
            {"epochs": 2},
            "model.head: imagenet1k scores pretrained ImageNet weights and trains nothing",
        ),
        (
            {"weights": None, "head": "data"},
            {"epochs": 0},
            "training.epochs: 0 evaluates a model without training it: set model.weights",
        ),
        ({"weights": "/nowhere/alexnet.pth"}, {"epochs": 0}, "weights file not found: /nowhere/alexnet.pth"),
    ],
)
def test_inference_settings_that_cannot_work_are_refused(shared_data, alexnet_weights, model, training, message):
    config = trial_config(shared_data, alexnet_weights)
    config["model"].update(model)
    config["training"].update(training)
    with pytest.raises(ValueError, match=message):
        TrialConfig.model_validate(config)


@pytest.fixture(scope="module")
def paper_search(tmp_path_factory, shared_data):
    """A reduced paper search (per-layer K at inference on a random AlexNet saved to a file): its folder and output."""
    tmp_path = tmp_path_factory.mktemp("paper")
    torch.manual_seed(0)
    weights = tmp_path / "alexnet-random.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)
    out = cli(
        "search",
        "--config",
        str(ROOT / "search_spaces" / "paper_alexnet.yaml"),
        f"data.train_dir={shared_data}/filled-silhouettes",
        f"data.test_dir={shared_data}/filled-silhouettes",
        f"data.stimuli_dir={shared_data}/cue-conflict",
        "data.label_space=categories",
        # At 128 px AlexNet's last point (features.12) is 3x3: at 64 px it is 1x1, where Top-K does nothing.
        "data.image_size=128",
        f"model.weights={weights}",
        "sampler=random",
        "configurations=3",
        "concurrency=2",
        "resources={cpu: 1, gpu: 0}",
        "training.device=cpu",
        "search.fraction_per_placement=true",
        cwd=tmp_path,
        timeout=900,
        fresh=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp_path, out


@pytest.mark.slow
def test_a_reduced_paper_search_maps_per_layer_k_at_inference(paper_search):
    tmp_path, out = paper_search
    assert "configurations 3/3 done" in out.stdout, out.stdout[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("paper-alexnet").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "shape_bias")] == [0]
        assert child.data.params["epochs"] == "0"
        # The last epoch's decisions on each half, in model-vs-human format, give the logged shape bias exactly.
        for name, metric in (("decisions.csv", "shape_bias"), ("decisions_holdout.csv", "shape_bias_holdout")):
            csv_path = client.download_artifacts(child.info.run_id, name, str(tmp_path))
            assert shape_bias_from_csv(csv_path).shape_bias == child.data.metrics[metric]
        per_category = {k for k in child.data.metrics if k.startswith("shape_bias_holdout.")}
        assert per_category and per_category <= {f"shape_bias_holdout.{c}" for c in imagenet16_table()}, per_category
    sparse = [c for c in children if c.data.params["placement"] != "dense"]
    assert all(c.data.params["placement"] == "+".join(TOPK) for c in sparse), [
        c.data.params["placement"] for c in sparse
    ]
    for child in sparse:  # per-layer K: each of the five points got its own fraction, and used it
        fractions = {name: child.data.params[f"fraction.{name}"] for name in TOPK}
        assert fractions == {name: child.data.params[f"topk.{name}"] for name in TOPK}
        assert len(set(fractions.values())) == 5 and "fraction" not in child.data.params
    front = next(tmp_path.glob("pareto-paper-alexnet-*.csv")).read_text()
    assert "features.2=" in front and "; features.12=" in front, front


@pytest.mark.slow
def test_an_inference_only_imagenet_head_model_is_promoted_and_evaluated_as_its_trial_scored_it(paper_search):
    tmp_path, _ = paper_search
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def command(*args):
        return cli(*args, "--tracking-uri", tracking, cwd=tmp_path, timeout=600, fresh=True)

    out = command("promote", "--experiment", "paper-alexnet", "--configuration", "c001", "--yes")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "registered sparse-alexnet-paper-alexnet version 1" in out.stdout, out.stdout[-2000:]  # named after its arch
    out = command("evaluate", "--model", "models:/sparse-alexnet-paper-alexnet@production")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # The 1000-way head is scored through the 16-category decision, as the trial scored it.
    rows = {
        line.split()[0]: line.split() for line in out.stdout.splitlines() if line.startswith(("accuracy", "shape_bias"))
    }
    assert set(rows) == {"accuracy", "shape_bias", "shape_bias_holdout"}, out.stdout
    for row in rows.values():
        assert row[1] == row[2] and row[3] == "same", out.stdout
    client = MlflowClient(tracking)
    child = next(
        r
        for r in client.search_runs([client.get_experiment_by_name("paper-alexnet").experiment_id])
        if r.data.tags.get("configuration") == "c001"
    )
    assert float(rows["accuracy"][2]) == pytest.approx(child.data.metrics["accuracy"], abs=1e-4)


@pytest.mark.parametrize("arch", ["vgg16", "alexnet"])
def test_the_paper_configs_only_lack_their_data_and_weights(tmp_path, shared_data, arch):
    from search_spaces.spec import ConfigError, load_spec
    from trainables.models import PRESETS

    path = ROOT / "search_spaces" / f"paper_{arch}.yaml"
    with pytest.raises(ConfigError, match="directory not found"):
        load_spec(path)
    (tmp_path / "weights.pth").touch()
    spec = load_spec(
        path,
        [
            f"data.train_dir={shared_data}/cue-conflict",
            f"data.test_dir={shared_data}/cue-conflict",
            f"data.stimuli_dir={shared_data}/cue-conflict",
            f"model.weights={tmp_path / 'weights.pth'}",
        ],
    )
    assert spec.search.placements == [list(PRESETS["after_every_pool"][arch])]
    trial = spec.trial_config({"placement": "+".join(PRESETS["after_every_pool"][arch]), "fraction": 0.05}, seed=0)
    assert trial["model"]["topk"] == dict.fromkeys(PRESETS["after_every_pool"][arch], 0.05)
    assert (trial["model"]["arch"], trial["model"]["head"], trial["training"]["epochs"]) == (arch, "imagenet1k", 0)
