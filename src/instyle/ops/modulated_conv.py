"""StyleGAN2's modulated convolution and ToRGB as plain functions of tensors (like NVIDIA's
``modulated_conv2d``): the reference formulation (grouped convolution, rosinality's order
of operations) and a dispatcher that takes the registered fast path when the backend
allows it (see :mod:`instyle.ops._backend` and :mod:`instyle.ops.fast_modconv`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from instyle.ops import _backend
from instyle.ops.upfirdn2d import upfirdn2d

__all__ = ["modulated_conv2d", "modulated_conv2d_reference", "to_rgb", "to_rgb_reference"]


def modulated_conv2d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    upsample: bool = False,
    padding: int = 0,
    blur_kernel: torch.Tensor | None = None,
    blur_pad: tuple[int, int] = (0, 0),
    eps: float = 1e-8,
) -> torch.Tensor:
    """Modulated (and optionally demodulated) convolution, one weight per sample.

    Args:
        x: ``[B, in, H, W]``.
        weight: ``[out, in, k, k]`` with the equalised-learning-rate scale applied.
        styles: ``[B, in]`` modulation (the style after the layer's affine map).
        demodulate: normalise each output filter to unit norm per sample.
        upsample: 2x by a stride-2 transposed convolution, then the FIR ``blur_kernel``
            (2-D, already multiplied by 4) with ``blur_pad``.
        padding: zero padding of the plain convolution.

    Returns:
        ``[B, out, H', W']`` (``H' = 2H`` when upsampling).
    """
    batch, in_channel, height, width = x.shape
    out_channel, _, k, _ = weight.shape
    w = weight[None] * styles.view(batch, 1, in_channel, 1, 1)
    if demodulate:
        w = w * torch.rsqrt(w.pow(2).sum([2, 3, 4]) + eps).view(batch, out_channel, 1, 1, 1)
    x = x.reshape(1, batch * in_channel, height, width)
    if upsample:
        w = w.transpose(1, 2).reshape(batch * in_channel, out_channel, k, k)
        out = F.conv_transpose2d(x, w, padding=0, stride=2, groups=batch)
        out = out.view(batch, out_channel, out.shape[-2], out.shape[-1])
        return upfirdn2d(out, blur_kernel, pad=blur_pad)
    out = F.conv2d(x, w.reshape(batch * out_channel, in_channel, k, k), padding=padding, groups=batch)
    return out.view(batch, out_channel, out.shape[-2], out.shape[-1])


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, **options) -> torch.Tensor:
    """:func:`modulated_conv2d_reference`, or its registered fast path."""
    impl = _backend.fast_path("modulated_conv2d") or modulated_conv2d_reference
    return impl(x, weight, styles, **options)


def to_rgb_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    bias: torch.Tensor,
    skip: torch.Tensor | None = None,
    conv_clamp: float | None = None,
) -> torch.Tensor:
    """StyleGAN2's ToRGB: modulated 1x1 convolution without demodulation, plus bias, clamped
    to ``[-conv_clamp, conv_clamp]`` when given, plus the (already upsampled) ``skip``.

    Args:
        x: ``[B, C, H, W]``; weight: ``[3, C, 1, 1]`` (scaled); styles: ``[B, C]``;
        bias: ``[1, 3, 1, 1]``; skip: ``[B, 3, H, W]`` or None.
    """
    out = modulated_conv2d_reference(x, weight, styles, demodulate=False) + bias
    if conv_clamp is not None:
        out = out.clamp(-conv_clamp, conv_clamp)
    if skip is not None:
        out = out + skip
    return out


def to_rgb(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    bias: torch.Tensor,
    skip: torch.Tensor | None = None,
    conv_clamp: float | None = None,
) -> torch.Tensor:
    """:func:`to_rgb_reference`, or its registered fast path."""
    impl = _backend.fast_path("to_rgb") or to_rgb_reference
    return impl(x, weight, styles, bias, skip, conv_clamp)
