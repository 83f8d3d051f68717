"""Fast ``upfirdn2d``: one depthwise (transposed) convolution instead of zero insertion,
padding and a single-channel convolution over ``B*C`` images.

* ``up == 1``: padding + depthwise ``conv2d`` with the flipped kernel, ``stride=down``
  (keeping every ``down``-th sample of the full result is exactly a strided conv).
* ``up > 1``: depthwise ``conv_transpose2d`` with the unflipped kernel and ``stride=up``
  is the true convolution of the zero-inserted signal; the reference's pads only choose
  which window of that result is kept, which ``padding``/``output_padding`` (or a
  final pad/crop) reproduce.

Same signature and result as :func:`instyle.ops.upfirdn2d_reference`; registered as the
``upfirdn2d`` fast path. Works with any memory format (channels-last input gives a
channels-last output, which is where the depthwise kernels are fastest on CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from instyle.ops._backend import register_fast_path
from instyle.ops.upfirdn2d import parse_upfirdn2d_args

__all__ = ["upfirdn2d_fast"]


def _depthwise(kernel: torch.Tensor, channels: int, like: torch.Tensor, flip: bool) -> torch.Tensor:
    """``[kh, kw]`` -> ``[channels, 1, kh, kw]`` weight on ``like``'s device and dtype."""
    k = kernel.to(device=like.device, dtype=like.dtype)
    if flip:
        k = torch.flip(k, [0, 1])
    return k.view(1, 1, *k.shape).expand(channels, 1, *k.shape).contiguous()


def _transposed_window(n: int, up: int, k: int, p0: int, p1: int) -> tuple[int, int, int, int]:
    """``(padding, output_padding, front, back)`` for one axis: ``conv_transpose`` with the
    first two, then cropping ``front``/``back`` samples (negative: zero padding), yields the
    reference's window.

    The full transposed result ``y`` has length ``L = (n-1)*up + k``; the reference keeps
    ``y[j + k-1-p0]`` for ``0 <= j < n*up + p0 + p1 - k + 1`` (zero outside ``y``).
    """
    want = n * up + p0 + p1 - k + 1
    full = (n - 1) * up + k
    start = k - 1 - p0
    end_crop = full - start - want
    padding, output_padding = max(0, min(start, end_crop)), 0
    if 0 <= end_crop < start < end_crop + up:
        padding, output_padding = start, start - end_crop
    got = full - 2 * padding + output_padding
    front = start - padding
    return padding, output_padding, front, got - front - want


def upfirdn2d_fast(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    pad: int | Sequence[int] = 0,
) -> torch.Tensor:
    """Upsample, FIR-filter and downsample ``x [B, C, H, W]`` (see ``upfirdn2d_reference``)."""
    up_x, up_y, down_x, down_y, px0, px1, py0, py1 = parse_upfirdn2d_args(x, kernel, up, down, pad)
    channels = x.shape[1]
    kh, kw = kernel.shape

    if up_x == 1 and up_y == 1:
        if px0 == px1 >= 0 and py0 == py1 >= 0:
            padding = (py0, px0)
        else:
            x = F.pad(x, [px0, px1, py0, py1])
            padding = (0, 0)
        weight = _depthwise(kernel, channels, x, flip=True)
        return F.conv2d(x, weight, stride=(down_y, down_x), padding=padding, groups=channels)

    wy = _transposed_window(x.shape[2], up_y, kh, py0, py1)
    wx = _transposed_window(x.shape[3], up_x, kw, px0, px1)
    weight = _depthwise(kernel, channels, x, flip=False)
    out = F.conv_transpose2d(
        x, weight, stride=(up_y, up_x), padding=(wy[0], wx[0]), output_padding=(wy[1], wx[1]), groups=channels
    )
    if any(wy[2:]) or any(wx[2:]):
        out = F.pad(out, [-wx[2], -wx[3], -wy[2], -wy[3]])
    if down_x > 1 or down_y > 1:
        out = out[:, :, ::down_y, ::down_x]
    return out


register_fast_path("upfirdn2d", upfirdn2d_fast)
