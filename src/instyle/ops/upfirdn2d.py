"""Upsample, FIR-filter, downsample (``upfirdn2d``) in plain PyTorch.

The reference implementation follows the definition used by StyleGAN2:

1. upsample by zero insertion (``up`` − 1 zeros after each sample, per axis),
2. pad (negative padding crops),
3. correlate with the *flipped* kernel (i.e. a true convolution with ``kernel``),
4. keep every ``down``-th sample.

Output size per axis: ``(in * up + pad0 + pad1 - k) // down + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from instyle.ops import _backend

__all__ = ["upfirdn2d", "upfirdn2d_reference", "UpFirDn2d", "make_kernel"]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(x) for x in v)
    if len(v) == 1:
        return v[0], v[0]
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return v  # type: ignore[return-value]


def _pad4(pad: int | Sequence[int]) -> tuple[int, int, int, int]:
    """Normalise ``pad`` to (x0, x1, y0, y1)."""
    if isinstance(pad, int):
        return pad, pad, pad, pad
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:  # (before, after) on both axes, as rosinality
        return pad[0], pad[1], pad[0], pad[1]
    if len(pad) == 4:
        return pad  # type: ignore[return-value]
    raise ValueError(f"pad must be an int, (p0, p1) or (x0, x1, y0, y1); got {pad!r}")


def make_kernel(k: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """A normalised 2-D FIR kernel from a 1-D (separable) or 2-D list.

    Returns ``[kh, kw]`` float32 summing to 1.
    """
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    if k.ndim != 2:
        raise ValueError(f"kernel must be 1-D or 2-D, got shape {tuple(k.shape)}")
    return k / k.sum()


def parse_upfirdn2d_args(
    x: torch.Tensor, kernel: torch.Tensor, up, down, pad
) -> tuple[int, int, int, int, int, int, int, int]:
    """Validate ``upfirdn2d`` arguments; return ``(up_x, up_y, down_x, down_y, px0, px1, py0, py1)``."""
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects x of shape [B, C, H, W], got {tuple(x.shape)}")
    if kernel.ndim != 2:
        raise ValueError(f"upfirdn2d expects a 2-D kernel, got shape {tuple(kernel.shape)}")
    up_x, up_y = _pair(up)
    down_x, down_y = _pair(down)
    px0, px1, py0, py1 = _pad4(pad)
    if min(up_x, up_y, down_x, down_y) < 1:
        raise ValueError(f"up and down must be >= 1, got up={up!r} down={down!r}")
    return up_x, up_y, down_x, down_y, px0, px1, py0, py1


def upfirdn2d_reference(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    pad: int | Sequence[int] = 0,
) -> torch.Tensor:
    """Plain reference ``upfirdn2d``.

    Args:
        x: ``[B, C, H, W]`` input.
        kernel: ``[kh, kw]`` FIR filter (used as a true convolution: it is flipped).
        up: integer upsampling factor, one value or ``(up_x, up_y)``.
        down: integer downsampling factor, one value or ``(down_x, down_y)``.
        pad: padding after upsampling: int, ``(p0, p1)`` for both axes or ``(x0, x1, y0, y1)``.

    Returns:
        ``[B, C, H', W']`` with ``H' = (H*up_y + y0 + y1 - kh) // down_y + 1`` (same for W).
    """
    up_x, up_y, down_x, down_y, px0, px1, py0, py1 = parse_upfirdn2d_args(x, kernel, up, down, pad)

    b, c, h, w = x.shape
    kh, kw = kernel.shape
    out = x.reshape(b * c, 1, h, 1, w, 1)
    # Zero insertion.
    out = F.pad(out, [0, up_x - 1, 0, 0, 0, up_y - 1])
    out = out.reshape(b * c, 1, h * up_y, w * up_x)
    # Positive padding first, negative padding (cropping) second.
    out = F.pad(out, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    out = out[
        :,
        :,
        max(-py0, 0) : out.shape[2] - max(-py1, 0),
        max(-px0, 0) : out.shape[3] - max(-px1, 0),
    ]
    weight = torch.flip(kernel, [0, 1]).to(dtype=out.dtype, device=out.device)
    out = F.conv2d(out, weight.view(1, 1, kh, kw))
    out = out[:, :, ::down_y, ::down_x]
    return out.reshape(b, c, out.shape[2], out.shape[3])


def upfirdn2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    pad: int | Sequence[int] = 0,
) -> torch.Tensor:
    """Upsample, FIR-filter and downsample ``x`` (see :func:`upfirdn2d_reference`).

    Dispatches to a faster implementation where one is registered and enabled
    (``INSTYLE_OPS``); the reference path is always available and is the default.
    """
    impl = _backend.fast_path("upfirdn2d")
    if impl is not None:
        return impl(x, kernel, up=up, down=down, pad=pad)
    return upfirdn2d_reference(x, kernel, up=up, down=down, pad=pad)


class UpFirDn2d(nn.Module):
    """Module form of :func:`upfirdn2d` with a fixed kernel buffer.

    Args:
        kernel: 1-D separable taps or a 2-D kernel; normalised to sum 1, then multiplied
            by ``gain``.
        up: upsampling factor.
        down: downsampling factor.
        pad: padding, as in :func:`upfirdn2d`.
        gain: multiplier applied to the normalised kernel (``up**2`` keeps the mean when
            upsampling by zero insertion).
    """

    def __init__(self, kernel, up: int = 1, down: int = 1, pad=0, gain: float = 1.0):
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * gain)
        self.up, self.down, self.pad = up, down, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.up, down=self.down, pad=self.pad)
