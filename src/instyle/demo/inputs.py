"""Checking what visitors upload, with messages fit for the page (never a stack trace).

Uploads arrive as Gradio file payloads (``{"path": ..., "orig_name": ...}``), editor payloads
(``{"background": ..., "layers": [...], "composite": ...}``), plain paths, bytes or PIL images.
A payload only *names* a file, and a client can name any path or URL; :class:`UploadArea`
accepts only files that arrived as uploads of this server (inside its upload folder once every
symlink is resolved, regular files, within the size limit) and answers everything else with
the one message :data:`NOT_AN_UPLOAD`, so a refusal tells nothing about the server's files.
:func:`read_upload` turns an upload into a decoded PIL image, reading at most the upload limit
and checking the pixel count (from the header, before decoding) against the server's limits.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from instyle.demo.settings import ServeSettings
from instyle.errors import InstyleError
from instyle.inference.io import ImageLoadError, load_image

__all__ = ["NOT_AN_UPLOAD", "DemoInputError", "UploadArea", "read_upload", "upload_file"]

#: The answer to every file reference that is not an upload of this server (paths, URLs,
#: special files, symlinks out of the upload folder): one text, whatever the reason.
NOT_AN_UPLOAD = (
    "This server reads only images uploaded to it: upload the file with the page or with "
    "gradio_client's handle_file() (server paths and URLs are refused)."
)

#: Keys of an image-editor payload whose values are files.
_EDITOR_FILE_KEYS = ("background", "composite", "layers")


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


def _is_file_ref(d: dict) -> bool:
    meta = d.get("meta")
    return "path" in d or "url" in d or (isinstance(meta, dict) and meta.get("_type") == "gradio.FileData")


class UploadArea:
    """The folder this server's uploads land in, and the test a named file must pass.

    Args:
        root: the upload folder (Gradio's upload/cache folder); symlinks in it are resolved.
        max_bytes: the upload size limit.
        known: optional test that a path (as the upload route returned it) arrived as an
            upload of this server, not merely lies in a folder other apps may share.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int, known: Callable[[str], bool] | None = None):
        self.root = Path(os.path.realpath(root))
        self.max_bytes = int(max_bytes)
        self.known = known

    def verify(self, path: Any) -> Path:
        """The real path of an uploaded regular file named by ``path``.

        Only system calls that cannot block are made (``realpath``, ``stat``): nothing is opened.

        Raises:
            DemoInputError: :data:`NOT_AN_UPLOAD` for anything else (not a string, a URL, outside
                the upload folder after resolving symlinks, unknown, missing, not a regular
                file, over the size limit).
        """
        if not isinstance(path, str) or not path or "\x00" in path or "://" in path:
            raise DemoInputError(NOT_AN_UPLOAD)
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(self.root) or real == self.root:
            raise DemoInputError(NOT_AN_UPLOAD)
        if self.known is not None and not self.known(path):
            raise DemoInputError(NOT_AN_UPLOAD)
        try:
            st = os.stat(real)
        except (OSError, ValueError):
            raise DemoInputError(NOT_AN_UPLOAD) from None
        if not stat.S_ISREG(st.st_mode) or st.st_size > self.max_bytes:
            raise DemoInputError(NOT_AN_UPLOAD)
        return real

    def check_payload(self, value: Any, file_slot: bool = True) -> None:
        """Verify every file an input value names (nested editor payloads included).

        ``file_slot``: the value stands where a file is expected (an image input): anything
        but ``None``, a file payload or an editor payload (a bare path or URL string) is refused.

        Raises:
            DemoInputError: :data:`NOT_AN_UPLOAD`.
        """
        if value is None:
            return
        if isinstance(value, dict):
            if _is_file_ref(value):
                self.verify(value.get("path"))
                return
            for key, item in value.items():
                self.check_payload(item, file_slot and key in _EDITOR_FILE_KEYS)
        elif isinstance(value, (list, tuple)):
            for item in value:
                self.check_payload(item, file_slot)
        elif file_slot:
            raise DemoInputError(NOT_AN_UPLOAD)


def _read_bounded(path: Path, name: str, max_bytes: int) -> bytes:
    """The bytes of a regular file, at most ``max_bytes`` of them; never blocks on a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise DemoInputError(f"{name}: the upload could not be read; please upload it again") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DemoInputError(NOT_AN_UPLOAD)
        data = f.read(max_bytes + 1) if st.st_size <= max_bytes else b""
    size = max(st.st_size, len(data))
    if size > max_bytes:
        raise DemoInputError(f"{name}: the file is {_mb(size)}; uploads are limited to {_mb(max_bytes)}")
    return data


def read_upload(
    payload: Any, what: str, settings: ServeSettings, mode: str | None = "RGB", uploads: UploadArea | None = None
) -> Image.Image:
    """Decode an uploaded image within the server's limits.

    Args:
        payload: the upload (see module docstring), its bytes, or a PIL image (checked for size only).
        what: how the page calls this input (``"a face photo"``), used in messages.
        settings: the limits (``max_upload_mb``, ``max_pixels``).
        mode: PIL mode to convert to; ``None`` keeps palette / grayscale (label maps).
        uploads: the server's upload area: the named file must be an upload of it (the demo
            always passes it; without it the caller vouches for the path).

    Raises:
        DemoInputError: nothing uploaded, not an upload of this server, file too large, too many
            pixels, not an image, corrupt.
    """
    if isinstance(payload, Image.Image):
        w, h = payload.size
        if w * h > settings.max_pixels:
            raise DemoInputError(f"{what}: {w}x{h} pixels is more than the limit of {settings.max_pixels:,} pixels")
        return payload if mode is None else payload.convert(mode)
    if isinstance(payload, (bytes, bytearray)):
        path, name, data = Path("upload"), "the upload", bytes(payload)
        if len(data) > settings.max_upload_bytes:
            raise DemoInputError(
                f"{what}: the file is {_mb(len(data))}; uploads are limited to {_mb(settings.max_upload_bytes)}"
            )
    else:
        found = upload_file(payload)
        if found is None:
            raise DemoInputError(f"Please upload {what} first.")
        path, name = found
        if uploads is not None:
            path = uploads.verify(str(path))
        data = _read_bounded(path, name, settings.max_upload_bytes)
    try:
        return load_image(path, mode=mode, max_pixels=settings.max_pixels, data=data)
    except ImageLoadError as e:
        raise DemoInputError(f"{name}: {e.reason}. Please upload a PNG, JPEG or WebP image.") from None
