"""Top-K against a reference written from BRIEF section 2's definition."""

import pytest
import torch

from trainables.topk import TopK, kept_per_channel, topk_mask, topk_sparsify


def reference_topk(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per sample and channel: keep the k = max(1, int(f*H*W)) largest |x| over H*W, zero the rest."""
    n, c, h, w = x.shape
    k = max(1, int(fraction * h * w))
    out = torch.zeros_like(x)
    for i in range(n):
        for j in range(c):
            flat = x[i, j].reshape(-1)
            order = sorted(range(h * w), key=lambda p: -abs(flat[p].item()))
            keep = order[:k]
            out[i, j].view(-1)[keep] = flat[keep]
    return out


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 8, 8), (3, 2, 1, 9), (2, 1, 4, 4)])
@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5, 0.99])
def test_matches_reference_without_ties(shape, fraction):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(topk_sparsify(x, fraction), reference_topk(x, fraction))


def test_negative_values_rank_by_magnitude():
    x = torch.tensor([[[[-5.0, 1.0], [0.5, 3.0]]]])
    out = topk_sparsify(x, 0.5)
    assert torch.equal(out, torch.tensor([[[[-5.0, 0.0], [0.0, 3.0]]]]))


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5])
def test_ties_keep_exactly_k_and_never_drop_a_larger_value(fraction):
    # ReLU outputs are full of exact zeros and repeated values: the tie case matters in practice.
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, (4, 6, 6, 5), generator=g).float()
    out = topk_sparsify(x, fraction)
    mask = topk_mask(x, kept_per_channel(fraction, 6, 5))
    assert torch.equal(mask.flatten(2).sum(-1), torch.full((4, 6), kept_per_channel(fraction, 6, 5)))
    assert torch.equal(out, torch.where(mask, x, torch.zeros_like(x)))
    a = x.abs().flatten(2)
    m = mask.flatten(2)
    min_kept = torch.where(m, a, torch.inf).amin(-1)
    max_dropped = torch.where(~m, a, -torch.inf).amax(-1)
    assert bool((min_kept >= max_dropped).all())


@pytest.mark.parametrize("h,w,fraction,k", [(112, 112, 0.2, 2508), (7, 7, 0.01, 1), (8, 8, 0.2, 12), (3, 3, 0.5, 4)])
def test_kept_count_per_channel(h, w, fraction, k):
    x = torch.randn(2, 3, h, w)
    assert kept_per_channel(fraction, h, w) == k
    nonzero = (topk_sparsify(x, fraction) != 0).flatten(2).sum(-1)
    assert torch.equal(nonzero, torch.full((2, 3), k))


def test_gradient_is_the_mask():
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    upstream = torch.randn(2, 3, 6, 6)
    topk_sparsify(x, 0.25).backward(upstream)
    keep = reference_topk(x.detach(), 0.25) != 0
    assert torch.equal(x.grad, torch.where(keep, upstream, torch.zeros_like(upstream)))


def test_gradcheck_float64():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: topk_sparsify(t, 0.3), (x,))


def test_fraction_one_is_identity_in_train_and_eval():
    x = torch.randn(2, 3, 5, 5)
    layer = TopK(1.0)
    assert layer(x) is x
    assert layer.eval()(x) is x
    sparse = TopK(0.2)
    assert torch.equal(sparse.train()(x), sparse.eval()(x))


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), "0.2", True, None])
def test_bad_fraction_raises_naming_value(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(").replace(")", r"\)")):
        TopK(bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_and_channels_last(dtype):
    # Distinct magnitudes in every map, exact in each dtype: a tie in |x| (frequent in random bf16
    # values) would let either implementation keep either entry.
    generator = torch.Generator().manual_seed(0)
    magnitudes = torch.stack([torch.randperm(99, generator=generator) for _ in range(16)]).float() + 0.25
    signs = torch.randint(0, 2, (16, 99), generator=generator).float() * 2 - 1
    x = (magnitudes * signs).view(2, 8, 9, 11).to(dtype)
    expected = reference_topk(x.float(), 0.2).to(dtype)
    assert torch.equal(topk_sparsify(x, 0.2), expected)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = topk_sparsify(x_cl, 0.2)
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, expected)
    out.sum().backward()
    assert torch.equal(x_cl.grad, (expected != 0).to(dtype))


def test_backward_keeps_only_a_bool_mask():
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        topk_sparsify(x, 0.2)
    assert [t.dtype for t in saved] == [torch.bool]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = torch.randn(2, 8, 14, 14)
    assert torch.equal(topk_sparsify(x.cuda(), 0.2).cpu(), topk_sparsify(x, 0.2))
