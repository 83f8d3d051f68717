"""Linear interpolation in W+ (the paper's Fig. 9) and animations of the frames.

    frames_w = interpolate(w_a, w_b, steps=8)       # [8, n_styles, 512]; frame 0 = w_a, frame 7 = w_b
    images = model.decode(frames_w)
    save_animation([tensor_to_pil(i) for i in images], "morph.gif", fps=10)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from instyle.utils.atomic import atomic_path

__all__ = ["interpolation_weights", "interpolate", "interpolate_path", "save_animation", "ANIMATION_FORMATS"]

#: Animation file suffixes :func:`save_animation` writes.
ANIMATION_FORMATS = (".gif", ".webp", ".mp4")


def interpolation_weights(steps: int) -> torch.Tensor:
    """``[steps]`` values of λ from 1 down to 0 (both included)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps={steps!r} must be an integer >= 2 (the two endpoints included)")
    return torch.linspace(1.0, 0.0, steps, dtype=torch.float64)


def _as_code(w: torch.Tensor, name: str) -> torch.Tensor:
    if w.ndim == 3 and w.shape[0] == 1:
        w = w[0]
    if w.ndim != 2:
        raise ValueError(f"{name} must be one W+ code [n_styles, D] (or [1, n_styles, D]), got {tuple(w.shape)}")
    return w


def interpolate(w_a: torch.Tensor, w_b: torch.Tensor, steps: int) -> torch.Tensor:
    """``w' = λ·w_A + (1 − λ)·w_B`` for λ from 1 to 0 in ``steps`` equal steps.

    Args:
        w_a, w_b: W+ codes ``[n_styles, D]`` (a leading batch of 1 is accepted).
        steps: number of frames (>= 2); the first is exactly ``w_a``, the last exactly ``w_b``.

    Returns:
        ``[steps, n_styles, D]`` in the dtype of ``w_a``.
    """
    w_a, w_b = _as_code(w_a, "w_a"), _as_code(w_b, "w_b")
    if w_a.shape != w_b.shape:
        raise ValueError(f"codes to interpolate differ in shape: {tuple(w_a.shape)} vs {tuple(w_b.shape)}")
    lam = interpolation_weights(steps).to(device=w_a.device, dtype=w_a.dtype)[:, None, None]
    frames = lam * w_a[None] + (1 - lam) * w_b.to(w_a)[None]
    # λ=1 and λ=0 give w_a*1 + w_b*0 exactly, except that inf/nan in the other code would
    # propagate; pin the endpoints so they are the given codes bit for bit.
    frames[0], frames[-1] = w_a, w_b.to(w_a)
    return frames


def interpolate_path(ws: Sequence[torch.Tensor], steps_per_segment: int) -> torch.Tensor:
    """Piecewise-linear path through several codes, ``A -> B -> C -> ...``.

    Each segment has ``steps_per_segment`` frames including its endpoints; a shared endpoint
    appears once, so the result has ``(len(ws) - 1) * (steps_per_segment - 1) + 1`` frames and
    frame ``k * (steps_per_segment - 1)`` is exactly ``ws[k]``.

    Returns:
        ``[frames, n_styles, D]``.
    """
    ws = list(ws)
    if len(ws) < 2:
        raise ValueError(f"interpolate_path needs at least two codes, got {len(ws)}")
    parts = []
    for k, (a, b) in enumerate(zip(ws[:-1], ws[1:])):
        seg = interpolate(a, b, steps_per_segment)
        parts.append(seg if k == 0 else seg[1:])
    return torch.cat(parts)


def save_animation(
    frames: Sequence[Image.Image], path: str | os.PathLike, fps: float = 10.0, boomerang: bool = False
) -> Path:
    """Write frames as an animation, atomically.

    ``.gif`` and ``.webp`` are written with Pillow (looping forever); ``.mp4`` with imageio's
    ffmpeg plugin (``pip install imageio imageio-ffmpeg``), H.264 at ``fps``.

    Args:
        frames: PIL images of one size.
        fps: frames per second.
        boomerang: play forward then backward (seamless loop).

    Raises:
        ValueError: no frames, bad fps or an unsupported suffix.
        RuntimeError: MP4 requested but imageio's ffmpeg plugin is not installed.
    """
    path = Path(path)
    frames = list(frames)
    if not frames:
        raise ValueError("save_animation needs at least one frame")
    if not fps > 0:
        raise ValueError(f"fps={fps} must be > 0")
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_FORMATS:
        raise ValueError(f"{path.name}: animations are written as {', '.join(ANIMATION_FORMATS)}")
    if boomerang and len(frames) > 2:
        frames = frames + frames[-2:0:-1]
    frames = [f.convert("RGB") for f in frames]
    if suffix == ".mp4":
        return _save_mp4(frames, path, fps)
    duration = max(int(round(1000.0 / fps)), 10)  # ms per frame; browsers floor tiny GIF delays
    with atomic_path(path) as tmp:
        frames[0].save(
            tmp,
            format="GIF" if suffix == ".gif" else "WEBP",
            save_all=True,
            append_images=frames[1:],
            duration=duration,
            loop=0,
            **({"lossless": True} if suffix == ".webp" else {}),
        )
    return path


def _save_mp4(frames: list[Image.Image], path: Path, fps: float) -> Path:
    import numpy as np

    try:
        import imageio.v3 as iio
        import imageio_ffmpeg  # noqa: F401  (the plugin imageio uses for MP4)
    except ImportError:
        raise RuntimeError(
            f"{path.name}: writing MP4 needs imageio with its ffmpeg plugin (pip install imageio imageio-ffmpeg); "
            "write a .gif or .webp instead"
        ) from None
    # H.264 with yuv420p needs even sides.
    w, h = frames[0].size
    w2, h2 = w - w % 2, h - h % 2
    arr = np.stack([np.asarray(f.crop((0, 0, w2, h2))) for f in frames])
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, arr, extension=".mp4", plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)
    return path
