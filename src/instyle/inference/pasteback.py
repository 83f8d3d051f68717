"""Results back into the original photos: the alignment records of aligned crops, found
beside the files that came from them, and :func:`~instyle.alignment.ffhq.paste_back`.

Where a result's alignment is found (one rule for every command):

* an image ``DIR/NAME.png`` whose folder holds ``alignment.json`` with the key ``NAME.png``
  (what ``instyle align`` writes, and ``encode --align`` in ``OUT/aligned/``);
* a latent ``OUT/latents/REL.npy`` (or ``.npz``) of ``encode --align --save-latents``: the
  record ``REL.png`` of ``OUT/aligned/alignment.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from instyle.alignment.ffhq import paste_back
from instyle.errors import InputError
from instyle.inference.io import load_image

__all__ = ["ALIGNED_DIR", "INDEX_NAME", "PASTED_DIR", "PasteBackError", "face_record", "find_alignment", "paste_result"]

#: ``encode --align`` keeps the aligned crops (and their index) here, under its output folder
ALIGNED_DIR = "aligned"
#: results pasted into the original photos go here, under the command's output folder
PASTED_DIR = "pasted"
INDEX_NAME = "alignment.json"


class PasteBackError(InputError):
    """A result cannot be pasted back: no alignment record, or its photo is gone."""


def _record(index_path: Path, key: str) -> dict | None:
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_bytes())
    except (OSError, ValueError) as e:
        raise PasteBackError(f"{index_path}: unreadable alignment index ({e})") from None
    record = index.get(key) if isinstance(index, dict) else None
    if record is None:
        return None
    if not isinstance(record, dict) or len(record.get("quad", ())) != 4 or not isinstance(record.get("source"), str):
        raise PasteBackError(f"{index_path}: the record of {key!r} has no 4-point quad and source photo")
    return {**record, "index": str(index_path)}


def find_alignment(path: str | os.PathLike) -> dict:
    """The alignment record (``source`` photo, ``quad``) of an aligned crop or of a latent
    encoded from one (see the module docstring).

    Raises:
        PasteBackError: none found (the message says where it looked).
    """
    path = Path(path)
    looked = [(path.parent / INDEX_NAME, path.with_suffix(".png").name if path.suffix.lower() in (".npy", ".npz") else path.name)]
    parts = path.parts
    if path.suffix.lower() in (".npy", ".npz") and "latents" in parts:
        k = len(parts) - 1 - parts[::-1].index("latents")
        rel = Path(*parts[k + 1 :]).with_suffix(".png").as_posix()
        looked.insert(0, (Path(*parts[:k]) / ALIGNED_DIR / INDEX_NAME, rel))
    for index_path, key in looked:
        record = _record(index_path, key)
        if record is not None:
            return record
    where = " or ".join(f"{p} [{k!r}]" for p, k in looked)
    raise PasteBackError(
        f"{path}: no alignment record to paste it back (looked in {where}); make the input with "
        "`instyle align` or `instyle encode --align`"
    )


def paste_result(record: dict, result: Image.Image, feather: float = 0.1) -> Image.Image:
    """``result`` (a square output of the aligned crop, any size) pasted into the record's photo."""
    source = Path(record["source"])
    if not source.is_absolute() and "index" in record:
        beside = Path(record["index"]).parent / source
        source = beside if beside.is_file() else source
    try:
        photo = load_image(source, mode="RGB")
    except (OSError, ValueError) as e:
        raise PasteBackError(f"cannot paste back into {source}: {e}") from None
    return paste_back(photo, result, np.asarray(record["quad"], dtype=np.float64), feather=feather)


def face_record(face, source: str | os.PathLike) -> dict:
    """The ``alignment.json`` record of an aligned face (as ``instyle align`` writes it)."""
    return {
        "source": str(Path(source).resolve()),
        "quad": [[round(float(v), 3) for v in pt] for pt in face.quad],
        "box": [round(float(v), 1) for v in face.detection.box],
        "score": round(face.detection.score, 4),
        "detector": face.detection.detector,
    }
