"""Fast paths of :func:`instyle.ops.modulated_conv2d` and :func:`instyle.ops.to_rgb`,
registered like the other ops and used when ``instyle.ops.get_backend()`` is not
``"reference"``. Plain functions of tensors with the reference functions' signatures and
autograd behaviour; results differ only by float rounding (tested to 1e-4 on whole
generators).

What changes against the grouped-convolution reference:

* The demodulation factor needs only ``[out, in]`` sums of the squared weights:
  ``d[b, o] = rsqrt(sum_i s[b, i]^2 * sum_kk (scale*W[o, i])^2 + eps)`` -- exact, and
  ``out * in * k * k`` work per call (nothing cached).
* Batch 1: one ordinary convolution with ``W * s * d`` (no grouped conv, no
  ``[B, out, in, k, k]`` temporary beyond the one weight).
* Batch > 1: modulation moves to the activations, ``conv(x * s, W) * d`` (StyleGAN2's
  ``fused_modconv=False``), so the whole batch shares one large convolution.
* Upsampling keeps the cheap stride-2 transposed conv; its FIR blur goes through the
  fast depthwise ``upfirdn2d``.
* ToRGB is a batched matrix product ``[B, 3, C] @ [B, C, H*W]`` with the upsampled skip
  added in place, instead of a grouped 1x1 convolution.
* Feature maps from 64x64 up are kept channels-last: the depthwise FIR filter and the
  3x3 convolutions gain, the stride-2 transposed convolution loses, and over the whole
  1024-px generator channels-last came out ~10% ahead (see docs/performance.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from instyle.ops._backend import register_fast_path
from instyle.ops.upfirdn2d import upfirdn2d
from instyle.utils.precision import float32_under_autocast

__all__ = ["CHANNELS_LAST_MIN_PIXELS", "modulated_conv2d_fast", "to_rgb_fast"]

#: Feature maps with at least this many pixels per channel are convolved channels-last
#: (0 turns it off).
CHANNELS_LAST_MIN_PIXELS = 64 * 64


def _memory_format(x: torch.Tensor) -> torch.Tensor:
    if CHANNELS_LAST_MIN_PIXELS and x.shape[-1] * x.shape[-2] >= CHANNELS_LAST_MIN_PIXELS:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _grad_needed(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _conv(x, weight, upsample, padding, blur_kernel, blur_pad) -> torch.Tensor:
    """One convolution with a shared ``[out, in, k, k]`` weight (blurred 2x up, or plain)."""
    if upsample:
        out = F.conv_transpose2d(x, weight.transpose(0, 1).contiguous(), stride=2)
        return upfirdn2d(out, blur_kernel, pad=blur_pad)
    return F.conv2d(x, weight, padding=padding)


def modulated_conv2d_fast(
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
    """Same contract as :func:`instyle.ops.modulated_conv2d_reference`."""
    batch = x.shape[0]
    # Styles and demodulation stay in the styles' dtype (float32 under a 16-bit autocast: each
    # factor scales a whole feature map); the 16-bit rounding falls on their products only.
    under_autocast = torch.is_autocast_enabled(x.device.type)
    s = styles if under_autocast else styles.to(x.dtype)
    d = None
    if demodulate:
        with float32_under_autocast(x.device.type):
            energy = weight.square().sum([2, 3]).to(styles.dtype)  # [out, in]
            d = torch.rsqrt(styles.square() @ energy.t() + eps)  # [B, out]
        d = d if under_autocast else d.to(x.dtype)
    x = _memory_format(x)
    if batch == 1:
        factor = s[0].view(1, -1) if d is None else d[0].view(-1, 1) * s[0].view(1, -1)
        return _conv(x, weight * factor[:, :, None, None], upsample, padding, blur_kernel, blur_pad)
    # Styles on the activations: one convolution for the whole batch.
    out = _conv(x * s.view(batch, -1, 1, 1), weight, upsample, padding, blur_kernel, blur_pad)
    if d is None:
        return out
    d = d.view(batch, -1, 1, 1)
    return out * d if _grad_needed(out) else out.mul_(d)


def _flat_channels(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, C, H*W]`` without a copy for NCHW and NHWC layouts."""
    b, c, h, w = x.shape
    if x.is_contiguous():
        return x.view(b, c, h * w)
    if x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(b, h * w, c).transpose(1, 2)
    return x.reshape(b, c, h * w)


def to_rgb_fast(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    bias: torch.Tensor,
    skip: torch.Tensor | None = None,
    conv_clamp: float | None = None,
) -> torch.Tensor:
    """Same contract as :func:`instyle.ops.to_rgb_reference`; the result is contiguous NCHW."""
    b, c, h, w = x.shape
    per_sample = (weight[None, :, :, 0, 0] * styles[:, None, :]).to(x.dtype)  # [B, 3, C], rounded once
    out = torch.bmm(per_sample, _flat_channels(x)).view(b, -1, h, w)
    inplace = not _grad_needed(out)
    bias = bias.to(out.dtype)
    out = out.add_(bias) if inplace else out + bias
    if conv_clamp is not None:
        out = out.clamp_(-conv_clamp, conv_clamp) if inplace else out.clamp(-conv_clamp, conv_clamp)
    if skip is not None:
        out = out.add_(skip) if inplace and not _grad_needed(skip) else out + skip
    return out


register_fast_path("modulated_conv2d", modulated_conv2d_fast)
register_fast_path("to_rgb", to_rgb_fast)
