"""StyleGAN3's filtered leaky ReLU in plain PyTorch.

``filtered_lrelu`` is the alias-free nonlinearity of StyleGAN3 (Karras et al. 2021):

1. add ``bias`` along dim 1,
2. upsample by ``up`` (zero insertion) and filter with ``fu``, padding by ``padding``
   (negative pads crop) -- ``upfirdn2d`` with gain ``up**2``,
3. ``leaky_relu(., slope) * gain``, then clamp to ``[-clamp, clamp]``,
4. filter with ``fd`` and keep every ``down``-th sample.

Filters follow NVIDIA's conventions: ``None`` is the identity, a 1-D ``[k]`` filter is
separable (applied along x, then y; the gain is split over the two axes), a 2-D
``[kh, kw]`` filter (StyleGAN3-R's radial down-filters) is applied as it is. Filters are
true convolutions (flipped), as in :func:`instyle.ops.upfirdn2d`.

Output size per axis: ``(in * up + p0 + p1 - (fu - 1) - (fd - 1) + (down - 1)) // down``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from instyle.ops import _backend
from instyle.ops.upfirdn2d import upfirdn2d_reference

__all__ = ["filtered_lrelu", "filtered_lrelu_reference", "filter_size", "parse_filtered_lrelu_args"]


def filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """``(width, height)`` of a filter: 1 for None, ``k`` on both axes for a separable ``[k]``."""
    if f is None:
        return 1, 1
    if f.ndim == 1:
        return int(f.shape[0]), int(f.shape[0])
    if f.ndim == 2:
        return int(f.shape[1]), int(f.shape[0])
    raise ValueError(f"a filter must be None, 1-D [k] or 2-D [kh, kw]; got shape {tuple(f.shape)}")


def _pad4(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    p = tuple(int(v) for v in padding)
    if len(p) == 2:  # (x, y) as NVIDIA
        return p[0], p[0], p[1], p[1]
    if len(p) == 4:
        return p  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, (px, py) or (x0, x1, y0, y1); got {padding!r}")


def parse_filtered_lrelu_args(x, fu, fd, b, up, down, padding, gain, slope, clamp):
    """Validate the arguments; return ``(px0, px1, py0, py1, out_h, out_w)``."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"filtered_lrelu expects x of shape [B, C, H, W], got {getattr(x, 'shape', x)!r}")
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[1]):
        raise ValueError(f"bias of shape {tuple(b.shape)} does not match the {x.shape[1]} channels of x")
    for name, v in (("up", up), ("down", down)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be an integer >= 1")
    if not (gain > 0 and slope >= 0 and (clamp is None or clamp >= 0)):
        raise ValueError(f"need gain > 0, slope >= 0, clamp None or >= 0; got gain={gain}, slope={slope}, clamp={clamp}")
    fu_w, fu_h = filter_size(fu)
    fd_w, fd_h = filter_size(fd)
    px0, px1, py0, py1 = _pad4(padding)
    b_, _, h, w = x.shape
    out_w = (w * up + px0 + px1 - (fu_w - 1) - (fd_w - 1) + (down - 1)) // down
    out_h = (h * up + py0 + py1 - (fu_h - 1) - (fd_h - 1) + (down - 1)) // down
    if out_w < 1 or out_h < 1:
        raise ValueError(f"filtered_lrelu of a {h}x{w} input with padding {padding!r} leaves no output")
    return px0, px1, py0, py1, out_h, out_w


def _resample_reference(x: torch.Tensor, f: torch.Tensor | None, up: int, down: int, pad, gain: float) -> torch.Tensor:
    """NVIDIA-convention ``upfirdn2d`` (None / separable / 2-D filter, gain ``gain`` in 2-D)."""
    x0, x1, y0, y1 = pad
    if f is None:
        f = torch.ones(1, 1)
    f = f.to(device=x.device, dtype=x.dtype)
    if f.ndim == 2:
        return upfirdn2d_reference(x, f * gain, up=up, down=down, pad=(x0, x1, y0, y1))
    g = f * math.sqrt(gain)
    x = upfirdn2d_reference(x, g[None, :], up=(up, 1), down=(down, 1), pad=(x0, x1, 0, 0))
    return upfirdn2d_reference(x, g[:, None], up=(1, up), down=(1, down), pad=(0, 0, y0, y1))


def filtered_lrelu_reference(
    x: torch.Tensor,
    fu: torch.Tensor | None = None,
    fd: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    gain: float = math.sqrt(2.0),
    slope: float = 0.2,
    clamp: float | None = None,
) -> torch.Tensor:
    """Reference filtered leaky ReLU (see the module docstring).

    Args:
        x: ``[B, C, H, W]``.
        fu, fd: up / down filters: None, ``[k]`` (separable) or ``[kh, kw]``.
        b: ``[C]`` bias or None.
        up, down: integer factors.
        padding: ``int``, ``(px, py)`` or ``(x0, x1, y0, y1)`` after upsampling.
        gain, slope, clamp: activation gain, negative slope, output clamp (None: none).

    Returns:
        ``[B, C, out_h, out_w]`` in ``x``'s dtype.
    """
    px0, px1, py0, py1, out_h, out_w = parse_filtered_lrelu_args(x, fu, fd, b, up, down, padding, gain, slope, clamp)
    if b is not None:
        x = x + b.to(x.dtype).view(1, -1, 1, 1)
    x = _resample_reference(x, fu, up, 1, (px0, px1, py0, py1), float(up * up))
    x = F.leaky_relu(x, slope) * gain if slope != 1 else x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    x = _resample_reference(x, fd, 1, down, (0, 0, 0, 0), 1.0)
    assert x.shape[2:] == (out_h, out_w), (tuple(x.shape), out_h, out_w)
    return x


def filtered_lrelu(
    x: torch.Tensor,
    fu: torch.Tensor | None = None,
    fd: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    gain: float = math.sqrt(2.0),
    slope: float = 0.2,
    clamp: float | None = None,
) -> torch.Tensor:
    """Filtered leaky ReLU (see :func:`filtered_lrelu_reference`); a registered fast path is
    used when the ops backend allows it."""
    impl = _backend.fast_path("filtered_lrelu")
    if impl is not None:
        return impl(x, fu, fd, b, up, down, padding, gain, slope, clamp)
    return filtered_lrelu_reference(x, fu, fd, b, up, down, padding, gain, slope, clamp)
