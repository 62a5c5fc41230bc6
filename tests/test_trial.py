"""One trial: exact resume, failure modes, the command line, and the real Ray Tune trainable."""

import pytest
import torch
import yaml

from conftest import ROOT, cli
from conftest import TINY_TRIAL as TINY
from trainables.config import TrialConfig
from trainables.metrics import HOLDOUT_METRICS
from trainables.train import METRICS, NonFiniteLossError, train_and_evaluate


class Stop(Exception):
    pass


def collect(into):
    return lambda metrics, state: into.append((dict(metrics), state))


def test_every_epoch_reports_all_metrics_and_the_last_is_the_result():
    reports = []
    result = train_and_evaluate(TrialConfig.model_validate(TINY), collect(reports))
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    assert all(set(m) == set(METRICS) | set(HOLDOUT_METRICS) for m, _ in reports[:-1])
    # The last epoch adds each shape category's own shape bias on the report set (the synthetic classes here).
    per_category = set(reports[-1][0]) - set(METRICS) - set(HOLDOUT_METRICS)
    assert per_category == {
        f"shape_bias_holdout.{c}" for c in ("circle", "square", "triangle", "star", "cross", "ring")
    }
    assert result == reports[-1][0]
    # The two sets are different images: the numbers differ, and each CSV re-scores to its own.
    files = reports[-1][1]["decision_files"]
    assert (
        set(files) == {"decisions.csv", "decisions_holdout.csv", "per_image.json"}
        and files["decisions.csv"] != files["decisions_holdout.csv"]
    )
    assert all("decision_files" not in state for _, state in reports[:-1])
    assert 0 <= result["accuracy"] <= 1 and result["images_per_s"] > 0
    assert set(reports[-1][1]) >= {"model", "optimizer", "scheduler", "epoch", "metrics", "rng", "tracking"}


def test_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path):
    config = TrialConfig.model_validate(TINY)
    full = []
    train_and_evaluate(config, collect(full))

    from trainables.checkpoint import load_checkpoint, save_checkpoint

    def stop_after_first(metrics, state):
        save_checkpoint(state, tmp_path)
        raise Stop

    with pytest.raises(Stop):
        train_and_evaluate(config, stop_after_first)
    resumed = []
    train_and_evaluate(config, collect(resumed), resume=load_checkpoint(tmp_path))
    assert [m["epoch"] for m, _ in resumed] == [2, 3]
    strip = lambda m: {k: v for k, v in m.items() if k != "images_per_s"}
    assert strip(resumed[-1][0]) == strip(full[-1][0])
    for key, value in full[-1][1]["model"].items():
        assert torch.equal(value, resumed[-1][1]["model"][key]), key


def test_a_checkpoint_alone_rebuilds_its_model_and_scores(tmp_path):
    from trainables.checkpoint import load_checkpoint, mapping_of, restore_model, save_checkpoint
    from trainables.evaluate import correct_per_image, evaluate_shape_bias

    config = TrialConfig.model_validate({**TINY, "training": {**TINY["training"], "epochs": 1}})
    reports = []
    train_and_evaluate(config, collect(reports))
    save_checkpoint(reports[-1][1], tmp_path)
    state = load_checkpoint(tmp_path)
    model, rebuilt = restore_model(state)
    assert rebuilt == config
    assert state["labels"]["class_names"] == ["circle", "square", "triangle", "star", "cross", "ring"]
    data = rebuilt.data.build(16, rebuilt.seed, augment=False)
    bias, _ = evaluate_shape_bias(model, data.stimuli, mapping_of(state["labels"]), data.image_size)
    assert bias.shape_bias == reports[-1][0]["shape_bias"]
    correct = correct_per_image(model, data.test_images, data.test_labels, data.image_size, "cpu")
    assert correct.float().mean().item() == reports[-1][0]["accuracy"]


def test_same_seed_same_result_other_seed_differs():
    config = TrialConfig.model_validate({**TINY, "training": {**TINY["training"], "epochs": 1}})
    a, b = [], []
    train_and_evaluate(config, collect(a))
    train_and_evaluate(config, collect(b))
    c = []
    train_and_evaluate(config.model_copy(update={"seed": 8}), collect(c))
    assert torch.equal(a[0][1]["model"]["fc.weight"], b[0][1]["model"]["fc.weight"])
    assert not torch.equal(a[0][1]["model"]["fc.weight"], c[0][1]["model"]["fc.weight"])


def test_nan_loss_ends_the_trial_naming_the_epoch():
    config = TrialConfig.model_validate({**TINY, "training": {**TINY["training"], "lr": 1e12}})
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1"):
        train_and_evaluate(config, lambda m, s: None)


@pytest.mark.parametrize("in_memory_limit", [100_000, 0], ids=["decoded-in-memory", "streaming-dataloader"])
def test_cifar10_folders_with_geirhos_stimuli(shared_data, in_memory_limit):
    config = TrialConfig.model_validate(
        {
            "data": {
                "kind": "folder",
                "train_dir": str(shared_data / "cifar10" / "train"),
                "test_dir": str(shared_data / "cifar10" / "test"),
                "stimuli_dir": str(shared_data / "cue-conflict"),
                "label_space": "cifar10",
                "image_size": 32,
                "max_per_class": 8,
                "in_memory_limit": in_memory_limit,
                "workers": 0,
            },
            "training": {"epochs": 1, "batch_size": 16, "threads": 1},
        }
    )
    from trainables.batches import InMemoryBatches, StreamingBatches

    data = config.data.build(16, seed=0, augment=True)
    assert isinstance(data.train, InMemoryBatches if in_memory_limit else StreamingBatches)
    images, labels = next(iter(data.train))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8 and labels.max() < 10
    reports = []
    train_and_evaluate(config, collect(reports), data=data)
    metrics = reports[-1][0]
    assert 0 <= metrics["accuracy"] <= 1
    # 7 of 16 categories are nameable: most conflict images are excluded, the rest scored.
    assert 0 <= metrics["shape_accuracy"] + metrics["texture_accuracy"] <= 1


def test_unknown_class_names_fail_before_training(shared_data, tmp_path):
    config = TrialConfig.model_validate(
        {
            "data": {
                "kind": "folder",
                "train_dir": str(shared_data / "cifar10" / "train"),
                "test_dir": str(shared_data / "cifar10" / "test"),
                "stimuli_dir": str(shared_data / "cue-conflict"),
                "label_space": "categories",
            },
        }
    )
    with pytest.raises(ValueError, match=r"automobile.*not cue-conflict categories"):
        train_and_evaluate(config, lambda m, s: None)


def test_missing_data_path_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "nowhere")):
        TrialConfig.model_validate(
            {
                "data": {
                    "kind": "folder",
                    "train_dir": str(tmp_path / "nowhere"),
                    "test_dir": str(tmp_path),
                    "stimuli_dir": str(tmp_path),
                }
            }
        )


def test_command_line_trains_resumes_and_rejects_bad_config(tmp_path):
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump({**TINY, "training": {**TINY["training"], "epochs": 2}}))
    # The first run in a real process (its exit code); the others in this one, which is quicker.
    run = lambda *args, fresh=False: cli(*args, cwd=ROOT, module="trainables.trial", timeout=300, fresh=fresh)
    out = run("--config", str(config), "--checkpoint-dir", str(tmp_path / "ckpt"), fresh=True)
    assert out.returncode == 0, out.stderr
    assert "epoch   2" in out.stdout and (tmp_path / "ckpt" / "state.pt").is_file()
    again = run("--config", str(config), "--checkpoint-dir", str(tmp_path / "ckpt"))
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout and "epoch   1" not in again.stdout
    assert "already trained" in again.stdout

    config.write_text(yaml.safe_dump({**TINY, "model": {"topk": {"layer2": 1.5}}}))
    bad = run("--config", str(config))
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "model.topk.layer2" in bad.stderr and "1.5" in bad.stderr


def test_undecodable_training_image_is_named_before_training(shared_data, tmp_path):
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i, source in enumerate(sorted((shared_data / "cifar10" / split / name).iterdir())[:4]):
                (folder / f"{i}.jpg").write_bytes(source.read_bytes())
    (tmp_path / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    config = TrialConfig.model_validate(
        {
            "data": {
                "kind": "folder",
                "train_dir": str(tmp_path / "train"),
                "test_dir": str(tmp_path / "test"),
                "stimuli_dir": str(shared_data / "cue-conflict"),
                "label_space": "categories",
            },
            "training": {"epochs": 1, "batch_size": 4, "threads": 1},
        }
    )
    reports = []
    with pytest.raises(ValueError, match=r"cannot decode image .*broken\.jpg"):
        train_and_evaluate(config, collect(reports))
    assert reports == []


def test_imagenet_folders_are_reduced_to_the_16_categories(shared_data, tmp_path):

    # WordNet-id folders: two of the 16 categories (airplane, one bear class) and one other class.
    folders = {"n02690373": "airplane", "n02132136": "cat", "n01440764": "dog"}
    for split in ("train", "test"):
        for wnid, source in folders.items():
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for i, image in enumerate(sorted((shared_data / "cifar10" / split / source).iterdir())[:3]):
                (folder / f"{i}.JPEG").write_bytes(image.read_bytes())
    config = TrialConfig.model_validate(
        {
            "data": {
                "kind": "folder",
                "train_dir": str(tmp_path / "train"),
                "test_dir": str(tmp_path / "test"),
                "stimuli_dir": str(shared_data / "cue-conflict"),
                "label_space": "imagenet16",
            }
        }
    )
    data = config.data.build(batch_size=2, seed=0, augment=False)
    from trainables.label_spaces import CATEGORIES

    assert data.class_names == CATEGORIES and len(data.mapping.categories) == 16
    # n01440764 (tench) is not one of the 16 categories: left out.
    assert data.train_size == 6
    assert sorted(set(data.test_labels.tolist())) == [CATEGORIES.index("airplane"), CATEGORIES.index("bear")]


def test_the_data_fingerprint_follows_symlinked_class_folders(shared_data, tmp_path):
    """Class folders that are links are read by training, so a change under them changes the fingerprint."""
    import shutil

    train = tmp_path / "train"
    train.mkdir()
    elsewhere = tmp_path / "elsewhere"
    for name in ("cat", "dog"):
        shutil.copytree(shared_data / "cifar10" / "train" / name, elsewhere / name)
        (train / name).symlink_to(elsewhere / name, target_is_directory=True)
    (elsewhere / "cat" / "loop").symlink_to(train, target_is_directory=True)  # a link up the tree ends the walk
    config = TrialConfig.model_validate(
        {
            "data": {
                "kind": "folder",
                "train_dir": str(train),
                "test_dir": str(shared_data / "cifar10" / "test"),
                "stimuli_dir": str(shared_data / "cue-conflict"),
                "label_space": "cifar10",
            },
        }
    )
    before = config.data.fingerprint()["train"]
    assert config.data.fingerprint()["train"] == before  # stable
    next(iter(sorted((elsewhere / "dog").iterdir()))).unlink()
    assert config.data.fingerprint()["train"] != before
