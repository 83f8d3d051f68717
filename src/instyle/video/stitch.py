"""STIT's stitching tuning: make an edited crop meet the unedited frame around the face.

An edit changes the face, and also the crop's surroundings a little, so pasting the whole
edited crop back leaves a visible seam. Per frame, a copy of the generator is tuned for a
few steps so that its rendering of the edited code

* matches the **source crop** in a *border band* around the face (the face mask dilated,
  minus the face; plus the crop's outer rim where the mask reaches it), and
* stays close to the **edited crop** inside the face (weight ``content_weight``),

stopping early once the border loss falls below ``border_threshold``; the result is pasted
through the dilated face mask, eroded and blurred (feathered). STIT takes the face mask
from a face-parsing network; here it comes from the face's 68 landmarks (their convex hull,
extended up over the forehead), so no extra weights are needed.

Settings follow STIT's script: 100 steps, lr 3e-4, content weight 0.01, outer dilation 50 px
of a 1024 crop (scaled to the crop size), L2 loss averaged over the mask's pixels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

from instyle.errors import InputError
from instyle.inference.refine import _render, _tunable

__all__ = ["StitchConfig", "face_mask", "paste_mask", "render_code", "stitch_frame", "stitch_masks"]


@dataclass(frozen=True)
class StitchConfig:
    """Settings of :func:`stitch_frame` (STIT's defaults).

    Attributes:
        steps: Adam steps per frame at most.
        lr: learning rate (STIT: 3e-4).
        content_weight: weight of the face-inside term (STIT: 0.01).
        outer_dilation: border band width, fraction of the crop side (STIT: 50 px of 1024).
        border_threshold: stop once the border loss is below this (STIT: 0, never).
    """

    steps: int = 100
    lr: float = 3e-4
    content_weight: float = 0.01
    outer_dilation: float = 50 / 1024
    border_threshold: float = 0.0

    def __post_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or not 1 <= self.steps <= 10_000:
            raise InputError(f"stitch steps={self.steps!r} must be an integer in [1, 10000]")
        if not self.lr > 0 or not self.content_weight >= 0 or not self.border_threshold >= 0:
            raise InputError(f"stitch lr={self.lr!r}, content_weight={self.content_weight!r}, "
                             f"border_threshold={self.border_threshold!r}: lr must be > 0, the others >= 0")
        if not 0 < self.outer_dilation <= 0.25:
            raise InputError(f"stitch outer_dilation={self.outer_dilation!r} must be in (0, 0.25] of the crop side")


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (monotone chain) of ``[N, 2]`` points, counter-clockwise."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))

    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and (out[-1][0] - out[-2][0]) * (p[1] - out[-2][1]) - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0]) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(reversed(pts))
    return np.array(lower[:-1] + upper[:-1])


def face_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """``[size, size]`` float32 {0, 1}: the hull of the 68 landmarks (crop coordinates) and a
    forehead estimate (the brows moved up by a third of the chin-to-brow distance)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    brows = lm[17:27]
    forehead = brows + (brows.mean(0) - lm[8]) * 0.35
    hull = _hull(np.concatenate([lm, forehead]))
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in hull], fill=255)
    return (np.asarray(img) > 127).astype(np.float32)


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return mask if r <= 0 else F.max_pool2d(mask, 2 * r + 1, stride=1, padding=r)


def stitch_masks(mask: np.ndarray, config: StitchConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(content, border, full)`` masks ``[1, 1, S, S]`` from a face mask ``[S, S]`` (STIT's
    ``create_masks`` with no inner dilation): ``full`` is the face dilated by the border width,
    ``border`` the band ``full - face`` plus the face's part of the crop's outer rim, ``content``
    the face minus the border."""
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    size = m.shape[-1]
    r = max(1, round(config.outer_dilation * size))
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    rim = ((yy < r // 2) | (xx < r // 2) | (yy >= size - r // 2) | (xx >= size - r // 2)).float()[None, None]
    full = _dilate(m, r)
    border = torch.maximum(torch.minimum(rim, m), full - m).clamp(0, 1)
    content = (m - border).clamp(0, 1)
    return content, border, full


def render_code(model, generator, w: torch.Tensor) -> torch.Tensor:
    """``w [B, n_styles, D]`` rendered by ``generator`` at the model's ``resize_to``, in [-1, 1] (unclamped)."""
    return _render(model, generator, w)


def _masked_l2(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((x - y) * mask).pow(2).sum() / mask.sum().clamp_min(1.0)


def stitch_frame(model, generator, w: torch.Tensor, source: torch.Tensor, edited: torch.Tensor, masks, config: StitchConfig):
    """Tune a copy of ``generator`` on one frame; returns ``(image [3, S, S], steps, border loss)``.

    Args:
        w: the frame's edited code ``[1, n_styles, D]``.
        source, edited: the source crop and the edited rendering ``[1, 3, S, S]`` in [-1, 1].
        masks: :func:`stitch_masks`'s ``(content, border, full)``.
    """
    content, border, _ = (m.to(source) for m in masks)
    tuned = copy.deepcopy(generator)
    params = _tunable(tuned)
    tuned.requires_grad_(False)
    for _, p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam([p for _, p in params], lr=config.lr)
    steps, border_loss = 0, float("nan")
    with torch.enable_grad():
        for _ in range(config.steps):
            out = _render(model, tuned, w)
            b = _masked_l2(out, source, border)
            border_loss = float(b.detach())
            if border_loss < config.border_threshold:
                break
            loss = b + config.content_weight * _masked_l2(out, edited, content)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    with torch.no_grad():
        image = _render(model, tuned, w)[0]
    return image, steps, border_loss


def paste_mask(full: torch.Tensor, config: StitchConfig) -> np.ndarray:
    """The blend weights ``[S, S]`` for pasting a stitched crop: the dilated mask eroded by half
    the border width and blurred over as much (STIT's feathered paste)."""
    size = full.shape[-1]
    r = max(1, round(config.outer_dilation * size) // 2)
    # Outside the crop counts as outside the mask, so a mask reaching the crop's edge fades there too.
    eroded = -F.max_pool2d(-F.pad(full, (r, r, r, r), value=0.0), 2 * r + 1, stride=1)
    img = Image.fromarray(np.uint8(np.clip(eroded[0, 0].numpy(), 0, 1) * 255))
    blurred = img.filter(ImageFilter.GaussianBlur(max(0.5, 0.3 * (r - 1) + 0.8)))
    return np.asarray(blurred, dtype=np.float32) / 255.0
