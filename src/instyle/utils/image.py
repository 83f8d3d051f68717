"""PIL image <-> tensor: the one implementation every layer uses.

Photos become ``[C, S, S]`` float32 in ``[-1, 1]`` exactly as the original's transforms
(``Resize((S, S))`` bilinear, ``ToTensor``, ``Normalize(0.5, 0.5)``); with ``unit=True`` the
values stay in ``[0, 1]`` (``ToTensor`` alone, as the original feeds sketches).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["pil_to_tensor", "tensor_to_pil"]


def pil_to_tensor(img: Image.Image, size: int | tuple[int, int] | None = 256, unit: bool = False) -> torch.Tensor:
    """PIL image (any mode numpy reads as ``[H, W]`` or ``[H, W, C]``) -> ``[C, size, size]``
    float32, in ``[-1, 1]`` or with ``unit`` in ``[0, 1]``; ``size=None`` keeps the size, and
    ``(height, width)`` gives a non-square input (the cars models' ``Resize((192, 256))``)."""
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    return t if unit else t.sub_(0.5).div_(0.5)


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` or ``[1, H, W]`` (or with a batch of one) in [-1, 1] (clamped) -> PIL RGB / L."""
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"expected an image tensor [3 or 1, H, W], got {tuple(t.shape)}")
    arr = ((t.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        return Image.fromarray(arr[:, :, 0], mode="L")
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
