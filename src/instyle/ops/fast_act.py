"""Fast bias + leaky ReLU + gain: two passes over memory instead of three.

``leaky_relu(x + b) * g == leaky_relu(g*x + g*b)`` for a gain ``g > 0`` (the activation
is positively homogeneous), so one fused ``add`` with ``alpha=g`` writes the scaled
pre-activation and an in-place leaky ReLU finishes it. Registered as the
``fused_leaky_relu`` fast path; differs from the reference only by float rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from instyle.ops._backend import register_fast_path
from instyle.ops.fused_act import fused_leaky_relu_reference

__all__ = ["fused_leaky_relu_fast"]


def fused_leaky_relu_fast(
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    negative_slope: float = 0.2,
    scale: float = math.sqrt(2.0),
) -> torch.Tensor:
    """Same contract as :func:`instyle.ops.fused_leaky_relu_reference` (``x: [B, C, ...]``)."""
    if scale <= 0 or negative_slope < 0:
        return fused_leaky_relu_reference(x, bias, negative_slope, scale)
    if bias is None:
        out = x * scale
    else:
        if x.ndim < 2 or bias.ndim != 1 or bias.shape[0] != x.shape[1]:
            raise ValueError(f"bias of shape {tuple(bias.shape)} does not match dim 1 of x {tuple(x.shape)}")
        # x comes second so the result keeps x's memory format (e.g. channels-last).
        b = bias.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2))) * scale
        out = torch.add(b, x, alpha=scale)
    return F.leaky_relu_(out, negative_slope)


register_fast_path("fused_leaky_relu", fused_leaky_relu_fast)
