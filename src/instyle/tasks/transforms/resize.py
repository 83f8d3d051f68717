"""Super-resolution degradation: bicubic down- and up-sampling that stay pixel-aligned.

PIL's ``resize`` maps continuous coordinates by the exact size ratio with pixel centres at
``+0.5`` in both directions, so down- then up-sampling keeps every feature in place (no
half-pixel shift), and factor 1 returns the image unchanged.
"""

from __future__ import annotations

from PIL import Image

from instyle.errors import InputError

__all__ = ["downsample", "degrade_resolution"]


def downsample(image: Image.Image, factor: int) -> Image.Image:
    """``image`` shrunk by integer ``factor`` with (antialiased) bicubic; ``factor=1`` is a copy."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"downsampling factor must be an integer >= 1, got {factor!r}")
    if factor == 1:
        return image.copy()
    w, h = image.size
    if w < factor or h < factor:
        raise InputError(f"cannot downsample a {w}x{h} image by {factor}")
    return image.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.BICUBIC)


def degrade_resolution(image: Image.Image, factor: int) -> Image.Image:
    """``image`` downsampled by ``factor`` and bicubic-upsampled back to its own size."""
    small = downsample(image, factor)
    return small if factor == 1 else small.resize(image.size, Image.Resampling.BICUBIC)
