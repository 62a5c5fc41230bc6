"""Top-K activation sparsity (Li et al., NeurIPS 2023).

For an activation x of shape (N, C, H, W) and a fraction f, every (sample, channel) feature map
keeps its k = max(1, int(f * H * W)) largest-|x| spatial positions unchanged and zeroes the rest.
The backward pass is the same mask. f = 1.0 is the identity, in training and at inference.

The authors build a float mask with topk + scatter_ and multiply, so autograd keeps a float copy
of every sparsified activation. Here the forward and backward are one autograd.Function that keeps
only a bool mask (1 byte per element, a quarter of a float32 mask) and nothing else.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def check_fraction(fraction: float) -> float:
    """Return `fraction` as a float, or raise ValueError if it is outside (0, 1]."""
    # bool is an int subclass; True would silently mean "keep everything".
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ValueError(f"Top-K fraction must be a number in (0, 1], got {fraction!r}")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"Top-K fraction must be in (0, 1], got {fraction!r}")
    return float(fraction)


def kept_per_channel(fraction: float, height: int, width: int) -> int:
    """Number of spatial positions each channel keeps: max(1, int(fraction * H * W))."""
    return max(1, int(check_fraction(fraction) * height * width))


def topk_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of x's shape marking, per sample and channel, the k largest |x| over H*W."""
    # flatten(2) is a view for both contiguous and channels_last input (H and W stay adjacent),
    # and zeros_like keeps those strides, so the mask has x's memory format without a copy.
    scores = x.detach().abs().flatten(2)
    indices = scores.topk(k, dim=-1, sorted=False).indices
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, indices, True)
    return mask.view_as(x)


class _TopKFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, k: int) -> torch.Tensor:
        mask = topk_mask(x, k)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad_output * mask, None


def topk_sparsify(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the top `fraction` of each feature map's H*W activations by |x|, zero the rest."""
    if x.dim() != 4:
        raise ValueError(f"Top-K expects a 4-d (N, C, H, W) activation, got shape {tuple(x.shape)}")
    k = kept_per_channel(fraction, x.shape[2], x.shape[3])
    if k >= x.shape[2] * x.shape[3]:
        return x
    return _TopKFunction.apply(x, k)


class TopK(nn.Module):
    """Module form of `topk_sparsify`; holds no parameters, so it never changes a state_dict."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = check_fraction(fraction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return topk_sparsify(x, self.fraction)

    def extra_repr(self) -> str:
        return f"fraction={self.fraction}"
