"""Checking what visitors upload, with messages fit for the page (never a stack trace).

Uploads arrive as Gradio file payloads (``{"path": ..., "orig_name": ...}``), editor payloads
(``{"background": ..., "layers": [...], "composite": ...}``), plain paths or PIL images.
:func:`read_upload` turns any of them into a decoded PIL image after checking the file size
and the pixel count (read from the header, before decoding) against the server's limits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from instyle.demo.settings import ServeSettings
from instyle.errors import InstyleError
from instyle.inference.io import ImageLoadError, load_image

__all__ = ["DemoInputError", "read_upload", "upload_file"]


class DemoInputError(InstyleError, ValueError):
    """An input a visitor gave cannot be used; ``str(e)`` is shown on the page as is."""


def _mb(n: float) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def upload_file(payload: Any) -> tuple[Path, str] | None:
    """``(path on the server, name the visitor knows it by)`` of an upload, or ``None`` if empty.

    For an image-editor payload the flattened ``composite`` is used (else its background).
    """
    if payload is None:
        return None
    if isinstance(payload, (str, os.PathLike)):
        p = Path(payload)
        return p, p.name
    if isinstance(payload, dict):
        if "composite" in payload or "background" in payload:
            return upload_file(payload.get("composite") or payload.get("background"))
        path = payload.get("path")
        if not path:
            return None
        return Path(path), str(payload.get("orig_name") or Path(path).name)
    path = getattr(payload, "path", None)  # a gradio FileData object
    if path:
        return Path(path), str(getattr(payload, "orig_name", None) or Path(path).name)
    raise DemoInputError(f"unsupported upload of type {type(payload).__name__}")


def read_upload(payload: Any, what: str, settings: ServeSettings, mode: str | None = "RGB") -> Image.Image:
    """Decode an uploaded image within the server's limits.

    Args:
        payload: the upload (see module docstring) or a PIL image (checked for size only).
        what: how the page calls this input (``"a face photo"``), used in messages.
        settings: the limits (``max_upload_mb``, ``max_pixels``).
        mode: PIL mode to convert to; ``None`` keeps palette / grayscale (label maps).

    Raises:
        DemoInputError: nothing uploaded, file too large, too many pixels, not an image, corrupt.
    """
    if isinstance(payload, Image.Image):
        w, h = payload.size
        if w * h > settings.max_pixels:
            raise DemoInputError(f"{what}: {w}x{h} pixels is more than the limit of {settings.max_pixels:,} pixels")
        return payload if mode is None else payload.convert(mode)
    found = upload_file(payload)
    if found is None:
        raise DemoInputError(f"Please upload {what} first.")
    path, name = found
    try:
        size = path.stat().st_size
    except OSError:
        raise DemoInputError(f"{name}: the upload could not be read; please upload it again") from None
    if size > settings.max_upload_bytes:
        raise DemoInputError(f"{name}: the file is {_mb(size)}; uploads are limited to {_mb(settings.max_upload_bytes)}")
    try:
        return load_image(path, mode=mode, max_pixels=settings.max_pixels)
    except ImageLoadError as e:
        raise DemoInputError(f"{name}: {e.reason}. Please upload a PNG, JPEG or WebP image.") from None
