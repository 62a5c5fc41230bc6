"""Sparse ResNet-18: placements, stems, torchvision-compatible state_dict."""

import pytest
import torch
from torchvision.models import resnet18

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


@pytest.mark.parametrize("kwargs, message", [({"stem": "vit"}, "unknown stem 'vit'"), ({"num_classes": 1}, "num_classes"), ({"topk": {"layer2": 0}}, "0")])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


def test_trains_end_to_end_with_channels_last():
    model = build_model(num_classes=4, topk={"layer1": 0.1}).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert model.conv1.weight.grad is not None and torch.isfinite(model.conv1.weight.grad).all()
