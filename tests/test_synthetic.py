"""The embedded benchmark: deterministic, balanced, conflicts that really conflict, same scorer."""

import pytest
import torch

from trainables.cue_conflict import score_decisions
from trainables.evaluate import evaluate_shape_bias
from trainables.label_spaces import native_mapping
from trainables.synthetic import SHAPES, make_benchmark


def small(**kwargs):
    return make_benchmark(**{"train_size": 60, "test_size": 30, "conflicts_per_pair": 2, **kwargs})


def test_same_seed_same_tensors_other_seed_differs():
    a, b, c = small(seed=3), small(seed=3), small(seed=4)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.conflict.images, b.conflict.images)
    assert not torch.equal(a.train_images, c.train_images)


def test_splits_shapes_and_balance():
    bench = small(num_classes=4, image_size=40)
    assert bench.train_images.shape == (60, 3, 40, 40) and bench.train_images.dtype == torch.uint8
    assert bench.class_names == SHAPES[:4]
    assert torch.bincount(bench.train_labels).tolist() == [15, 15, 15, 15]
    # Every ordered pair (i, j), i != j, appears conflicts_per_pair times; none agree.
    assert len(bench.conflict) == 4 * 3 * 2
    assert all(s != t for s, t in zip(bench.conflict.shapes, bench.conflict.textures, strict=True))
    assert not torch.equal(bench.train_images[:30], bench.test_images)


def test_colour_is_not_a_class_cue():
    bench = make_benchmark(train_size=1200, test_size=600, conflicts_per_pair=1)
    # A nearest-centroid classifier on each image's mean colour stays near chance (1/6).
    train_colour = bench.train_images.float().mean((2, 3))
    centroids = torch.stack([train_colour[bench.train_labels == k].mean(0) for k in range(6)])
    predicted = torch.cdist(bench.test_images.float().mean((2, 3)), centroids).argmin(1)
    assert (predicted == bench.test_labels).float().mean() < 0.3


def test_scored_by_the_shared_shape_bias_code():
    bench = small()
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 6))
    result, decisions = evaluate_shape_bias(model, bench.conflict, native_mapping(bench.class_names), 32)
    assert result == score_decisions(decisions, bench.conflict.shapes, bench.conflict.textures, bench.class_names)
    assert result.scored == len(bench.conflict) and result.excluded == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 1}, {"num_classes": 9}, {"image_size": 8}, {"texture_strength": 1.5}, {"shape_contrast": -0.1}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        small(**kwargs)
