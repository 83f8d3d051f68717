"""Bounded reads of small input files (JSON reports and configs, file headers).

A path a user names may be a FIFO (opening it blocks), a device such as ``/dev/zero``
(reading it never ends), a huge file or a JSON document nested 100 000 levels deep (the
parser recurses). These helpers refuse each with one line naming the file, before
anything large is read or parsed. The error class is the caller's (``InputError`` for
inputs, ``CheckpointError`` for model files).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from instyle.errors import InputError, InstyleError

__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "describe_file", "json_depth", "open_regular_file", "read_json_file"]

#: Largest JSON file read (a report or a model config is a few KB).
MAX_JSON_BYTES = 16 << 20
#: Deepest JSON nesting accepted (instyle's own files use fewer than 6 levels).
MAX_JSON_DEPTH = 64


def open_regular_file(path: str | os.PathLike, what: str, error: type[InstyleError] = InputError) -> BinaryIO:
    """Open ``path`` for binary reading, refusing folders, FIFOs and devices *before*
    opening them; a file that cannot be opened is named with its reason (not "missing")."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        hint = f" (a broken link to {os.readlink(path)})" if path.is_symlink() else ""
        raise error(f"{path}: no such {what}{hint}") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path}: is a folder, expected the {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = "a pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a special file"
        target = f" (a link to {os.path.realpath(path)})" if path.is_symlink() else ""
        raise error(f"{path}: not a regular file: {kind}{target}, expected the {what}")
    try:
        return open(path, "rb")
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from None


def json_depth(text: str) -> int:
    """Deepest ``[`` / ``{`` nesting of a JSON text (brackets inside strings ignored)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def read_json_file(
    path: str | os.PathLike, what: str, error: type[InstyleError] = InputError, max_bytes: int = MAX_JSON_BYTES
) -> Any:
    """Parse a JSON file of at most ``max_bytes`` nested at most :data:`MAX_JSON_DEPTH` deep."""
    path = Path(path)
    with open_regular_file(path, what, error) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: unreadable {what}: larger than {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: unreadable {what}: {describe_file(path)} (not UTF-8 text)") from None
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise error(f"{path}: unreadable {what}: JSON nested {depth} levels deep, at most {MAX_JSON_DEPTH} accepted")
    try:
        return json.loads(text)
    except ValueError as e:
        raise error(f"{path}: unreadable {what}: invalid JSON ({e})") from None


def describe_file(path: str | os.PathLike) -> str:
    """What a file looks like, for an error: ``"16 bytes of text ('this is not it!')"``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if size == 0:
        return "an empty file (0 bytes)"
    try:
        text = head.decode("utf-8").strip()
    except UnicodeDecodeError:
        return f"{size} bytes of binary data"
    if text.isprintable():
        return f"{size} bytes of text ({text[:40]!r})"
    return f"{size} bytes of data"
