"""Sparse ResNet-18: placements, stems, torchvision-compatible state_dict."""

import pytest
import torch
from torchvision.models import resnet18

from conftest import spliced_by_hand
from trainables.models import PLACEMENTS, build_model, describe_placements
from trainables.topk import TopK


def test_state_dict_keys_are_torchvision_and_load_strictly():
    reference = resnet18(weights=None)
    sparse = build_model(num_classes=1000, stem="imagenet", topk={"layer2": 0.2, "layer3.0": 0.1, "stem": 0.5})
    assert list(sparse.state_dict()) == list(reference.state_dict())
    sparse.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    # Same weights, Top-K changes the output: the hooks are live.
    assert not torch.allclose(sparse.eval()(x), reference.eval()(x))
    dense = build_model(num_classes=1000)
    dense.load_state_dict(reference.state_dict(), strict=True)
    assert torch.allclose(dense.eval()(x), reference(x))


def test_topk_sits_where_named():
    seen = {}
    model = build_model(num_classes=10, stem="cifar", topk={"layer2": 0.2, "layer1.0": 0.05})
    for name in ("layer2", "layer1.0", "layer3"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    model(torch.randn(2, 3, 32, 32))
    # Hooks registered later see the already-sparsified output.
    assert torch.equal((seen["layer2"] != 0).flatten(2).sum(-1), torch.full((2, 128), int(0.2 * 16 * 16)))
    assert torch.equal((seen["layer1.0"] != 0).flatten(2).sum(-1), torch.full((2, 64), int(0.05 * 32 * 32)))
    assert (seen["layer3"] != 0).float().mean() > 0.3
    assert sum(isinstance(m, TopK) for m in model.modules()) == 2


def test_cifar_stem_keeps_resolution():
    rows = {r.name: r for r in describe_placements(224, stem="cifar", topk={"layer2": 0.2})}
    assert (rows["layer2"].channels, rows["layer2"].height, rows["layer2"].width) == (128, 112, 112)
    assert rows["layer2"].kept == int(0.2 * 112 * 112)
    assert rows["layer3"].kept == 56 * 56
    imagenet = {r.name: r for r in describe_placements(224)}
    assert (imagenet["stem"].height, imagenet["layer4"].height) == (56, 7)
    assert [r.name for r in describe_placements(32)] == list(PLACEMENTS)


def test_unknown_placement_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown Top-K placement 'layer5'.*layer1\.0.*layer4"):
        build_model(topk={"layer5": 0.2})


def test_same_tensor_twice_is_rejected():
    with pytest.raises(ValueError, match="same tensor"):
        build_model(topk={"layer2": 0.2, "layer2.1": 0.3})


@pytest.mark.parametrize(
    "kwargs, message",
    [({"stem": "vit"}, "unknown stem 'vit'"), ({"num_classes": 1}, "num_classes"), ({"topk": {"layer2": 0}}, "0")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


def test_trains_end_to_end_with_channels_last():
    model = build_model(num_classes=4, topk={"layer1": 0.1}).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert model.conv1.weight.grad is not None and torch.isfinite(model.conv1.weight.grad).all()


# --- any torchvision architecture, against the authors' way: Top-K spliced into the Sequential ---


@pytest.mark.parametrize(
    "arch, size, fraction", [("resnet18", 64, 0.2), ("resnet50", 64, 0.1), ("vgg16", 96, 0.05), ("alexnet", 128, 0.3)]
)
def test_each_architecture_matches_topk_spliced_by_hand(tmp_path, arch, size, fraction):
    import torchvision

    from trainables.models import PRESETS, expand_preset

    torch.manual_seed(0)
    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    torch.save(state, tmp_path / "weights.pth")
    topk = dict.fromkeys(expand_preset(["after_every_pool"], arch), fraction)
    assert list(topk) == list(PRESETS["after_every_pool"][arch])
    ours = build_model(num_classes=1000, topk=topk, arch=arch, weights=tmp_path / "weights.pth").eval()
    reference = spliced_by_hand(arch, state, topk)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits, expected = ours(x), reference(x)
        dense = getattr(torchvision.models, arch)(weights=None)
        dense.load_state_dict(state)
        unsparse = dense.eval()(x)
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-5), (logits - expected).abs().max()
    assert not torch.allclose(logits, unsparse, atol=1e-3)  # Top-K changed what the network computes


def test_weights_are_a_local_file_that_must_fit():
    with pytest.raises(
        FileNotFoundError,
        match=r"weights file /nowhere/vgg16.pth not found: expected torchvision's vgg16 .*vgg16-397923af.pth",
    ):
        build_model(arch="vgg16", weights="/nowhere/vgg16.pth")


def test_weights_of_another_shape_are_one_clear_error(tmp_path):
    torch.save(build_model(num_classes=10).state_dict(), tmp_path / "ten.pth")
    with pytest.raises(ValueError, match="does not fit resnet18: .*fc.weight"):
        build_model(num_classes=1000, weights=tmp_path / "ten.pth")
    with pytest.raises(ValueError, match="does not fit alexnet: missing"):
        build_model(arch="alexnet", weights=tmp_path / "ten.pth")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "vgg19"}, "unknown architecture 'vgg19'; valid: resnet18, resnet50, vgg16, alexnet"),
        ({"arch": "vgg16", "stem": "cifar"}, "cifar stem is a ResNet stem"),
        (
            {"arch": "alexnet", "topk": {"features.13": 0.1}},
            r"unknown Top-K placement 'features.13' for alexnet; "
            r"valid: features, features.0, .*features.12, avgpool, classifier",
        ),
        ({"arch": "vgg16", "topk": {"feature.4": 0.1}}, r"nearest: features.4"),
        (
            {"arch": "vgg16", "topk": {"features": 0.1, "features.30": 0.2}},
            "'features' and 'features.30' are the same tensor",
        ),
    ],
)
def test_bad_architecture_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


def test_describe_placements_for_vgg16_at_224():
    rows = {r.name: r for r in describe_placements(224, topk={"features.4": 0.05}, arch="vgg16")}
    assert (rows["features.4"].channels, rows["features.4"].height, rows["features.4"].kept) == (
        64,
        112,
        int(0.05 * 112 * 112),
    )
    assert rows["features.30"].height == 7 and rows["features.30"].kept == 49
