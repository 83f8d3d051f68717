"""Fast forward passes for the StyleGAN2 layers, used when ``instyle.ops.get_backend()``
is not ``"reference"``. Same inputs, outputs and autograd behaviour as the reference
``forward`` methods in :mod:`instyle.models.stylegan2`; results differ only by float
rounding (tested to 1e-4 on whole generators).

What changes against the grouped-convolution reference:

* The demodulation factor needs only ``[out, in]`` sums of the squared weights:
  ``d[b, o] = rsqrt(sum_i s[b, i]^2 * sum_kk (scale*W[o, i])^2 + eps)`` -- exact, and the
  weight sums are cached between calls while no gradient is being recorded.
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

__all__ = ["modulated_conv2d", "to_rgb", "CHANNELS_LAST_MIN_PIXELS"]

#: Feature maps with at least this many pixels per channel are convolved channels-last
#: (0 turns it off).
CHANNELS_LAST_MIN_PIXELS = 64 * 64


def _memory_format(x: torch.Tensor) -> torch.Tensor:
    if CHANNELS_LAST_MIN_PIXELS and x.shape[-1] * x.shape[-2] >= CHANNELS_LAST_MIN_PIXELS:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _grad_needed(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling and is_compiling())


def _weight_energy(layer) -> torch.Tensor:
    """``[out, in]`` sums over the kernel window of ``(scale * W)^2``.

    Cached on the layer while no gradient is recorded, keyed by the weight's storage and
    version counter: in-place updates (optimizers, ``load_state_dict``) invalidate it;
    writes through ``weight.data`` bypass the version counter and are not seen.
    """
    weight = layer.weight
    if _grad_needed(weight) or _compiling():
        return (weight[0] * layer.scale).square().sum([2, 3])
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, layer.scale)
    cached = layer.__dict__.get("_fast_energy")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            energy = (weight[0] * layer.scale).square().sum([2, 3])
        layer.__dict__["_fast_energy"] = cached = (key, energy)
    return cached[1]


def _styles(layer, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Modulation ``s [B, in]`` and demodulation ``d [B, out]`` (None without demodulation)."""
    s = layer.modulation(style)
    if not layer.demodulate:
        return s, None
    energy = _weight_energy(layer).to(s.dtype)
    return s, torch.rsqrt(s.square() @ energy.t() + layer.eps)


def _folded_weight(layer, s: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor:
    """One sample's weight ``scale * W * s * d``: ``s [in]``, ``d [out]`` -> ``[out, in, k, k]``."""
    factor = layer.scale * s.view(1, -1)
    if d is not None:
        factor = factor * d.view(-1, 1)
    return layer.weight[0] * factor[:, :, None, None]


def _conv(layer, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's convolution with a shared ``[out, in, k, k]`` weight (blurred 2x up or plain)."""
    if layer.upsample:
        return layer.blur(F.conv_transpose2d(x, weight.transpose(0, 1).contiguous(), stride=2))
    return F.conv2d(x, weight, padding=layer.padding)


def modulated_conv2d(layer, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Fast ``ModulatedConv2d.forward``: ``x [B, in, H, W]``, ``style [B, style_dim]`` ->
    ``[B, out, H', W']`` (``H' = 2H`` when upsampling)."""
    batch = x.shape[0]
    s, d = _styles(layer, style)
    s = s.to(x.dtype)
    d = d.to(x.dtype) if d is not None else None
    x = _memory_format(x)
    if batch == 1:
        return _conv(layer, x, _folded_weight(layer, s[0], d[0] if d is not None else None))
    # Styles on the activations: one convolution for the whole batch.
    out = _conv(layer, x * s.view(batch, -1, 1, 1), layer.weight[0] * layer.scale)
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


def to_rgb(layer, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """Fast ``ToRGB.forward``: ``x [B, C, H, W]``, ``style [B, style_dim]``, ``skip``
    ``[B, 3, H/2, W/2]`` or None -> ``[B, 3, H, W]`` (contiguous NCHW)."""
    conv = layer.conv
    b, c, h, w = x.shape
    s = conv.modulation(style).to(x.dtype)
    weight = (conv.weight[0, :, :, 0, 0] * conv.scale)[None] * s[:, None, :]  # [B, out, C]
    out = torch.bmm(weight, _flat_channels(x)).view(b, -1, h, w)
    inplace = not _grad_needed(out)
    bias = layer.bias.to(out.dtype)
    out = out.add_(bias) if inplace else out + bias
    if layer.conv_clamp is not None:
        out = out.clamp_(-layer.conv_clamp, layer.conv_clamp) if inplace else out.clamp(-layer.conv_clamp, layer.conv_clamp)
    if skip is not None:
        up = layer.upsample(skip.contiguous())
        out = out.add_(up) if inplace and not _grad_needed(up) else out + up
    return out
