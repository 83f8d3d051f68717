"""Reading, converting and writing images -- robustly.

Every reader raises :class:`ImageLoadError` with a one-line reason that names the
file (corrupt, truncated, empty, not an image, too small, too large, unreadable),
so batch jobs can report it and continue. Writers are atomic (temporary file +
rename): an interrupted job never leaves a half-written image behind.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from instyle.utils.atomic import atomic_path

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "MAX_PIXELS",
    "MIN_SIDE",
    "collect_inputs",
    "load_image",
    "save_image",
    "pil_to_tensor",
    "tensor_to_pil",
    "make_grid",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
#: Largest accepted image (pixels); larger headers are refused before decoding (decompression bombs).
MAX_PIXELS = 8192 * 8192
#: Smallest accepted side in pixels.
MIN_SIDE = 16


class ImageLoadError(ValueError):
    """An input file cannot be used as an image. ``str(e)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def collect_inputs(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> tuple[list[Path], list[str]]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated list of files.

    Folders contribute files with an image extension (recursively by default); explicit
    files are kept whatever their extension (they get a clear error later if not images).

    Returns:
        ``(paths, problems)`` where problems are messages for inputs that matched nothing.
    """
    out: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        s = str(item)
        p = Path(s).expanduser()
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(q for q in p.glob(pattern) if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                problems.append(f"{p}: folder contains no images ({', '.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        elif p.exists():
            out.append(p)
        elif any(ch in s for ch in "*?["):
            found = sorted(Path(m) for m in glob.glob(s, recursive=True) if Path(m).is_file())
            if not found:
                problems.append(f"{s}: pattern matched no files")
            out.extend(found)
        else:
            problems.append(f"{p}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique, problems


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode (1, L, LA, P, PA, RGBA, I;16, I, F, CMYK, ...) to ``mode``."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
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
) -> Image.Image:
    """Open an image file as a fully decoded PIL image in ``mode`` (None keeps the file's
    mode, e.g. palette label maps; 16-bit images still become 8-bit ``L``).

    Applies the EXIF orientation, converts grayscale / palette / RGBA (over white) /
    16-bit images, and refuses images larger than ``max_pixels`` before decoding them.

    Raises:
        ImageLoadError: with a one-line reason naming the file.
    """
    p = Path(path)
    if p.is_dir():
        raise ImageLoadError(p, "is a folder, not an image file")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ImageLoadError(p, f"cannot read ({e.strerror or e})") from None
    if size == 0:
        raise ImageLoadError(p, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageLoadError(
                        p, f"image is too large ({w}x{h} = {w * h / 1e6:.0f} MP; the limit is {max_pixels / 1e6:.0f} MP)"
                    )
                if min(w, h) < min_side:
                    raise ImageLoadError(p, f"image is too small ({w}x{h}; at least {min_side}x{min_side} is needed)")
                img.load()
                img = ImageOps.exif_transpose(img)
                if mode is None:
                    return _to_mode(img, "L") if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F") else img
                return _to_mode(img, mode)
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


def pil_to_tensor(img: Image.Image, size: int | tuple[int, int] | None = 256) -> torch.Tensor:
    """PIL image -> ``[C, S, S]`` float32 in [-1, 1], resized (bilinear) like the original
    test transforms (``Resize((S, S))``, ``ToTensor``, ``Normalize(0.5, 0.5)``); ``size`` may
    also be ``(height, width)`` (the cars models' ``Resize((192, 256))``)."""
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    return t * 2.0 - 1.0


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` or ``[1, H, W]`` in [-1, 1] (clamped) -> PIL RGB / L image."""
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"expected an image tensor [3 or 1, H, W], got {tuple(t.shape)}")
    arr = ((t.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        return Image.fromarray(arr[:, :, 0], mode="L")
    return Image.fromarray(arr, mode="RGB")


def save_image(img: Image.Image | torch.Tensor, path: str | os.PathLike, **save_kwargs) -> Path:
    """Write an image atomically; the format follows the suffix (PNG when none)."""
    if isinstance(img, torch.Tensor):
        img = tensor_to_pil(img)
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **save_kwargs)
    return path


def make_grid(
    rows: Sequence[Sequence[Image.Image | torch.Tensor]],
    cell: int | None = None,
    pad: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tile images into a grid, one list per row; cells are resized to ``cell`` (default:
    the first image's height)."""
    pil_rows = [[tensor_to_pil(i) if isinstance(i, torch.Tensor) else i for i in row] for row in rows]
    if not pil_rows or not any(pil_rows):
        raise ValueError("make_grid needs at least one image")
    first = next(i for row in pil_rows for i in row)
    cell = cell or first.size[1]
    ncols = max(len(r) for r in pil_rows)
    grid = Image.new("RGB", (ncols * cell + (ncols + 1) * pad, len(pil_rows) * cell + (len(pil_rows) + 1) * pad), background)
    for r, row in enumerate(pil_rows):
        for c, im in enumerate(row):
            im = im.convert("RGB")
            if im.size != (cell, cell):
                im = im.resize((cell, cell), Image.Resampling.BICUBIC)
            grid.paste(im, (pad + c * (cell + pad), pad + r * (cell + pad)))
    return grid
