"""Fast ``filtered_lrelu``: the same four steps as the reference, with each resampling
done by depthwise (transposed) convolutions that compute only the samples that are kept.

* upsampling: a transposed convolution with ``stride=up`` is the convolution of the
  zero-inserted signal (no zeros are materialised); separable filters run as two 1-D
  passes (``2k`` instead of ``k**2`` taps per sample);
* downsampling: a strided convolution evaluates the filter only at the kept samples
  (the reference filters the whole upsampled image, then drops ``1 - 1/down**2`` of it).

Same signature and result (to float rounding) as
:func:`instyle.ops.filtered_lrelu.filtered_lrelu_reference`; registered as the
``filtered_lrelu`` fast path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from instyle.ops._backend import register_fast_path
from instyle.ops.fast_upfirdn2d import upfirdn2d_fast
from instyle.ops.filtered_lrelu import parse_filtered_lrelu_args

__all__ = ["filtered_lrelu_fast"]

SQRT2 = math.sqrt(2.0)


def _resample(x: torch.Tensor, f: torch.Tensor | None, up: int, down: int, pad, gain: float) -> torch.Tensor:
    x0, x1, y0, y1 = pad
    if f is None:
        if up == 1 and down == 1:
            x = F.pad(x, [x0, x1, y0, y1]) if any(pad) else x
            return x * gain if gain != 1 else x
        f = torch.ones(1, 1)
    f = f.to(device=x.device, dtype=x.dtype)
    if f.ndim == 2:
        return upfirdn2d_fast(x, f * gain, up=up, down=down, pad=(x0, x1, y0, y1))
    g = f * math.sqrt(gain)
    x = upfirdn2d_fast(x, g[None, :], up=(up, 1), down=(down, 1), pad=(x0, x1, 0, 0))
    return upfirdn2d_fast(x, g[:, None], up=(1, up), down=(1, down), pad=(0, 0, y0, y1))


def filtered_lrelu_fast(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=SQRT2, slope=0.2, clamp=None):
    """Filtered leaky ReLU of ``x [B, C, H, W]`` (see ``filtered_lrelu_reference``)."""
    px0, px1, py0, py1, out_h, out_w = parse_filtered_lrelu_args(x, fu, fd, b, up, down, padding, gain, slope, clamp)
    given = x
    if b is not None:
        x = x + b.to(x.dtype).view(1, -1, 1, 1)
    # lrelu(g * v) == g * lrelu(v) for g > 0: the gain rides on the (linear) upsampling filter,
    # saving a pass over the largest tensor; without autograd the activation runs in place.
    x = _resample(x, fu, up, 1, (px0, px1, py0, py1), float(up * up) * gain)
    inplace = x is not given and not (torch.is_grad_enabled() and x.requires_grad)
    if slope != 1:
        x = F.leaky_relu_(x, slope) if inplace else F.leaky_relu(x, slope)
    if clamp is not None:
        x = x.clamp_(-clamp, clamp) if inplace else x.clamp(-clamp, clamp)
    return _resample(x, fd, 1, down, (0, 0, 0, 0), 1.0)

register_fast_path("filtered_lrelu", filtered_lrelu_fast)
