"""Reading image files -- the one reader of training data and inference inputs.

:func:`load_image` raises :class:`ImageLoadError` with a one-line reason that names the
file (corrupt, truncated, empty, not an image, too small, too large, unreadable, a
value range it cannot interpret), so batch jobs and data loaders can report it and
continue. It applies the EXIF orientation, as every photo viewer does.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from instyle.errors import InstyleError

__all__ = ["ImageLoadError", "MAX_PIXELS", "MIN_SIDE", "load_image"]

#: Largest accepted image (pixels); larger headers are refused before decoding (decompression bombs).
MAX_PIXELS = 8192 * 8192
#: Smallest accepted side in pixels.
MIN_SIDE = 16


class ImageLoadError(InstyleError, ValueError):
    """An input file cannot be used as an image. ``str(e)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _white_level(img: Image.Image, arr: np.ndarray) -> float:
    """The value that means white in a 16-bit, 32-bit integer or float image: 1 for
    floats in [0, 1], else 255 or 65535, whichever range the values fit."""
    if img.mode.startswith("I;16"):
        return 65535.0
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 65535:
        raise ValueError(f"pixel values {lo:g}..{hi:g} are outside every range it can interpret ([0, 1], [0, 255], [0, 65535])")
    if img.mode == "F" and hi <= 1.0:
        return 1.0
    return 255.0 if hi <= 255 else 65535.0


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode (1, L, LA, P, PA, RGBA, I;16, I, F, CMYK, ...) to ``mode``.

    Raises:
        ValueError: for a wide (16/32-bit, float) image whose values fit no known range.
    """
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        white = _white_level(img, arr)
        arr = np.clip(arr / white * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels over white, the usual look of a transparent image.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert(mode)


def load_image(
    path: str | os.PathLike,
    mode: str | None = "RGB",
    max_pixels: int = MAX_PIXELS,
    min_side: int = MIN_SIDE,
    data: bytes | None = None,
) -> Image.Image:
    """Open an image file as a fully decoded PIL image in ``mode`` (None keeps the file's
    mode, e.g. palette label maps; 16-bit images still become 8-bit ``L``).

    Applies the EXIF orientation, converts grayscale / palette / RGBA (over white) /
    16-bit images, and refuses images larger than ``max_pixels`` before decoding them.
    With ``data`` (the file's bytes, read by the caller within its own limits) the file is
    not opened again and ``path`` only names it in messages.

    Raises:
        ImageLoadError: with a one-line reason naming the file.
    """
    p = Path(path)
    if data is not None:
        size = len(data)
    elif p.is_dir():
        raise ImageLoadError(p, "is a folder, not an image file")
    else:
        try:
            st = p.stat()
        except OSError as e:
            raise ImageLoadError(p, f"cannot read ({e.strerror or e})") from None
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise ImageLoadError(p, "not a regular file")
        size = st.st_size
    if size == 0:
        raise ImageLoadError(p, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p if data is None else io.BytesIO(data)) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageLoadError(
                        p, f"image is too large ({w}x{h} = {w * h / 1e6:.0f} MP; the limit is {max_pixels / 1e6:.0f} MP)"
                    )
                if min(w, h) < min_side:
                    raise ImageLoadError(p, f"image is too small ({w}x{h}; at least {min_side}x{min_side} is needed)")
                img.load()
                img = ImageOps.exif_transpose(img)
                try:
                    if mode is None:
                        return _to_mode(img, "L") if img.mode in _WIDE_MODES else img
                    return _to_mode(img, mode)
                except ValueError as e:
                    raise ImageLoadError(p, str(e)) from None
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(p, "not an image file (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(p, "image is too large (decompression bomb protection)") from None
    except PermissionError:
        raise ImageLoadError(p, "permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            msg = f"truncated or corrupt image data ({msg})"
        else:
            msg = f"corrupt image ({msg})"
        raise ImageLoadError(p, msg) from None
