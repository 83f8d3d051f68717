"""Fused bias + leaky ReLU (StyleGAN2's ``fused_leaky_relu``) in plain PyTorch.

``out = leaky_relu(x + bias, negative_slope) * scale`` with the bias broadcast
along dimension 1 (channels). Defaults: slope 0.2, scale √2 (keeps the signal's
second moment for unit-variance inputs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from instyle.ops import _backend

__all__ = ["fused_leaky_relu", "fused_leaky_relu_reference", "FusedLeakyReLU"]


def fused_leaky_relu_reference(
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    negative_slope: float = 0.2,
    scale: float = math.sqrt(2.0),
) -> torch.Tensor:
    """Reference implementation.

    Args:
        x: ``[B, C, ...]`` input (at least 2-D).
        bias: ``[C]`` bias added along dim 1, or None.
        negative_slope: slope for negative inputs.
        scale: gain applied after the activation.

    Returns:
        Tensor of ``x``'s shape and dtype.
    """
    if bias is not None:
        if x.ndim < 2 or bias.ndim != 1 or bias.shape[0] != x.shape[1]:
            raise ValueError(
                f"bias of shape {tuple(bias.shape)} does not match dim 1 of x {tuple(x.shape)}"
            )
        x = x + bias.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * scale


def fused_leaky_relu(
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    negative_slope: float = 0.2,
    scale: float = math.sqrt(2.0),
) -> torch.Tensor:
    """Bias + leaky ReLU + gain (see :func:`fused_leaky_relu_reference`)."""
    impl = _backend.fast_path("fused_leaky_relu")
    if impl is not None:
        return impl(x, bias, negative_slope, scale)
    return fused_leaky_relu_reference(x, bias, negative_slope, scale)


class FusedLeakyReLU(nn.Module):
    """Module form with a learnable bias (parameter name ``bias`` as rosinality).

    Args:
        channels: number of channels (length of the bias).
        negative_slope: slope for negative inputs.
        scale: gain after the activation.
    """

    def __init__(self, channels: int, negative_slope: float = 0.2, scale: float = math.sqrt(2.0)):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)
