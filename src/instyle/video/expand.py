"""Field-of-view expansion: a rendering wider than its crop, through the generator's input
transform (encoders over StyleGAN3).

stylegan3-editing's ``utils/fov_expansion.py`` (``Expander``, used by its video pipeline's
``postprocess_and_smooth_inversions`` and ``VideoEditor.get_smoothed_edited_images`` with
``VideoConfig.expansion_amounts = [left, right, top, bottom]``): besides the crop itself, the
code is rendered under the frame's transform composed with the inverse of a translation by
the expansion (in generator pixels over the generator's side) towards each edge and corner
that is expanded, and the edge strips of those renderings are merged around the crop into a
``(top + R + bottom) x (left + R + right)`` canvas (R: the generator's side).

:func:`expanded_quad` and :func:`canvas_mask` say where such a canvas lies in the frame (the
crop's quad grown by the amounts) and how it is blended there, so :mod:`instyle.video.pipeline`
can paste it back like a crop (the original writes the canvas as its output frame instead).
"""

from __future__ import annotations

import numpy as np
import torch

from instyle.alignment.ffhq import feather_mask
from instyle.alignment.stylegan3_transform import make_transform

__all__ = ["canvas_mask", "expanded_quad", "expanded_render", "square_canvas"]


def _piece_shifts(res: int, left: int, right: int, top: int, bottom: int) -> list[tuple[float, float] | None]:
    """The original's ``Expander._get_transforms`` translations, in its order: the crop, left,
    top, right, bottom, top-left, top-right, bottom-right, bottom-left (None: not expanded)."""
    def edge(n, shift):
        return None if n == 0 else shift

    def corner(h, v, shift):
        return None if h == 0 or v == 0 else shift

    return [
        (0.0, 0.0),
        edge(left, (left / res, 0.0)),
        edge(top, (0.0, top / res)),
        edge(right, (-right / res, 0.0)),
        edge(bottom, (0.0, -bottom / res)),
        corner(left, top, (left / res, top / res)),
        corner(right, top, (-right / res, top / res)),
        corner(right, bottom, (-right / res, -bottom / res)),
        corner(left, bottom, (left / res, -bottom / res)),
    ]


def expanded_render(synthesize, w: torch.Tensor, transform: torch.Tensor, res: int, amounts) -> torch.Tensor:
    """``[B, 3, top + res + bottom, left + res + right]``: ``w [B, n, D]`` rendered under
    ``transform`` (``[3, 3]`` or ``[B, 3, 3]``) with the field of view grown by ``amounts =
    (left, right, top, bottom)`` generator pixels (the original's ``generate_expanded_image``
    and ``_merge_images``).

    Args:
        synthesize: ``fn(w, transform) -> [B, 3, res, res]`` (the model's rendering under a
            transform at the generator's side, e.g. ``model.synthesize``).
    """
    left, right, top, bottom = (int(a) for a in amounts)
    t = transform.to(torch.float64)
    images = []
    for shift in _piece_shifts(res, left, right, top, bottom):
        if shift is None:
            images.append(None)
            continue
        piece = torch.from_numpy(np.linalg.inv(make_transform(shift, 0.0))).to(t)
        images.append(synthesize(w, (t @ piece).float()))
    first = images[0]
    out = first.new_zeros(first.shape[0], first.shape[1], top + res + bottom, left + res + right)
    out[:, :, top : top + res, left : left + res] = first
    if left > 0:
        out[:, :, top : top + res, :left] = images[1][:, :, :, :left]
    if top > 0:
        out[:, :, :top, left : left + res] = images[2][:, :, :top, :]
    if right > 0:
        out[:, :, top : top + res, left + res :] = images[3][:, :, :, res - right :]
    if bottom > 0:
        out[:, :, top + res :, left : left + res] = images[4][:, :, res - bottom :, :]
    if top > 0 and left > 0:
        out[:, :, :top, :left] = images[5][:, :, :top, :left]
    if top > 0 and right > 0:
        out[:, :, :top, res + left :] = images[6][:, :, :top, res - right :]
    if bottom > 0 and right > 0:
        out[:, :, res + top :, res + left :] = images[7][:, :, res - bottom :, res - right :]
    if bottom > 0 and left > 0:
        out[:, :, res + top :, :left] = images[8][:, :, res - bottom :, :left]
    return out


def square_canvas(canvas: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` (in [-1, 1]) padded with black (-1) at the right or bottom to
    ``max(H, W)`` square (what :func:`~instyle.alignment.ffhq.paste_back` takes)."""
    h, w = canvas.shape[-2:]
    side = max(h, w)
    return torch.nn.functional.pad(canvas, (0, side - w, 0, side - h), value=-1.0)


def expanded_quad(quad: np.ndarray, res: int, amounts) -> np.ndarray:
    """The ``[4, 2]`` source quad (top-left, bottom-left, bottom-right, top-right) of the
    :func:`square_canvas` of an expansion of the crop ``quad`` (``res``: the generator's side,
    the unit of ``amounts = (left, right, top, bottom)``)."""
    left, right, top, bottom = (int(a) for a in amounts)
    q = np.asarray(quad, dtype=np.float64)
    ex, ey = (q[3] - q[0]) / res, (q[1] - q[0]) / res  # one generator pixel along x, y
    side = max(res + left + right, res + top + bottom)
    tl = q[0] - left * ex - top * ey
    return np.stack([tl, tl + side * ey, tl + side * (ex + ey), tl + side * ex])


def canvas_mask(side: int, res: int, amounts, feather: float) -> np.ndarray:
    """``[side, side]`` paste weights of a :func:`square_canvas` resized to ``side``: the
    feathered rectangle of the rendered canvas, 0 over the padding."""
    left, right, top, bottom = (int(a) for a in amounts)
    w, h = res + left + right, res + top + bottom
    big = max(w, h)
    cw, ch = max(1, round(side * w / big)), max(1, round(side * h / big))
    ramp_x, ramp_y = feather_mask(cw, feather)[cw // 2], feather_mask(ch, feather)[ch // 2]
    scale_x = ramp_x / max(float(ramp_x.max()), 1e-12)
    scale_y = ramp_y / max(float(ramp_y.max()), 1e-12)
    out = np.zeros((side, side), dtype=np.float32)
    out[:ch, :cw] = np.outer(scale_y, scale_x)
    return out
