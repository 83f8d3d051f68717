"""StyleGAN3's modulated convolution as a function of tensors.

Differs from StyleGAN2's (:mod:`instyle.ops.modulated_conv`) as NVIDIA's StyleGAN3 code does:
with demodulation, the weight is first normalised per output channel and the styles by
their RMS over the whole ``[B, I]`` tensor (both cancel in the demodulation up to its
1e-8); ``input_gain`` (``magnitude_ema ** -0.5``) scales the weights *after* demodulation.

The reference runs one grouped convolution over the batch; the fast path computes a 1x1
kernel (StyleGAN3-R) as one batched matrix product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from instyle.ops import _backend

__all__ = ["modulated_conv2d_sg3", "modulated_conv2d_sg3_reference", "modulated_weights_sg3"]


def modulated_weights_sg3(w: torch.Tensor, s: torch.Tensor, demodulate: bool = True,
                          input_gain: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weights ``[B, O, I, k, k]`` from ``w [O, I, k, k]`` and styles ``s [B, I]``."""
    if w.ndim != 4 or s.ndim != 2 or s.shape[1] != w.shape[1]:
        raise ValueError(f"weight [O, I, k, k] and styles [B, I] do not fit: {tuple(w.shape)} vs {tuple(s.shape)}")
    batch, in_channels = s.shape
    if demodulate:
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()
    w = w.unsqueeze(0) * s.unsqueeze(1).unsqueeze(3).unsqueeze(4)
    if demodulate:
        d = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        w = w * d.unsqueeze(2).unsqueeze(3).unsqueeze(4)
    if input_gain is not None:
        gain = input_gain.expand(batch, in_channels)
        w = w * gain.unsqueeze(1).unsqueeze(3).unsqueeze(4)
    return w


def modulated_conv2d_sg3_reference(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, padding: int = 0,
                                   demodulate: bool = True, input_gain: torch.Tensor | None = None) -> torch.Tensor:
    """``x [B, I, H, W]`` -> ``[B, O, H + 2p - k + 1, ...]`` with per-sample modulated weights."""
    if x.ndim != 4 or x.shape[0] != s.shape[0] or x.shape[1] != w.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} does not fit weight {tuple(w.shape)} and styles {tuple(s.shape)}")
    batch, in_channels, kh, kw = x.shape[0], w.shape[1], w.shape[2], w.shape[3]
    wm = modulated_weights_sg3(w, s, demodulate, input_gain)
    y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), wm.reshape(-1, in_channels, kh, kw).to(x.dtype),
                 padding=padding, groups=batch)
    return y.reshape(batch, -1, *y.shape[2:])


def modulated_conv2d_sg3(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, padding: int = 0,
                         demodulate: bool = True, input_gain: torch.Tensor | None = None) -> torch.Tensor:
    """StyleGAN3 modulated convolution (see :func:`modulated_conv2d_sg3_reference`)."""
    impl = _backend.fast_path("modulated_conv2d_sg3")
    if impl is not None:
        return impl(x, w, s, padding, demodulate, input_gain)
    return modulated_conv2d_sg3_reference(x, w, s, padding, demodulate, input_gain)


def _fast(x, w, s, padding=0, demodulate=True, input_gain=None):
    if w.shape[2:] != (1, 1) or padding != 0:
        return modulated_conv2d_sg3_reference(x, w, s, padding, demodulate, input_gain)
    if x.ndim != 4 or x.shape[0] != s.shape[0] or x.shape[1] != w.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} does not fit weight {tuple(w.shape)} and styles {tuple(s.shape)}")
    b, _, h, wd = x.shape
    wm = modulated_weights_sg3(w, s, demodulate, input_gain)[:, :, :, 0, 0].to(x.dtype)  # [B, O, I]
    return torch.bmm(wm, x.reshape(b, x.shape[1], h * wd)).reshape(b, -1, h, wd)


_backend.register_fast_path("modulated_conv2d_sg3", _fast)
