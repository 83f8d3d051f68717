"""Results back into the original photos: the alignment records of aligned crops, found
beside the files that came from them, and :func:`~instyle.alignment.ffhq.paste_back`.

Where a result's alignment is found (one rule for every command):

* an image ``DIR/NAME.png`` whose folder holds ``alignment.json`` with the key ``NAME.png``
  (what ``instyle align`` writes, and ``encode --align`` in ``OUT/aligned/``);
* a latent ``OUT/latents/REL.npy`` (or ``.npz``) of ``encode --align --save-latents``: the
  record ``REL.png`` of ``OUT/aligned/alignment.json``.

Two blends (``blend``): ``"feather"`` (default) fades the result into the photo over a
smooth ramp at the crop's edges; ``"poisson"`` is StyleFeatureEditor's optional step
(``runners/simple_runner.py``, ``unalign``): the crop pasted hard over the pixels it covers,
then the photo *around* it solved again by Poisson image editing (the ``fpie`` package,
extra ``poisson``) from the photo's own gradients, so its colours meet the result's edge.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from instyle.alignment.ffhq import paste_back, warp_to_source
from instyle.errors import InputError, MissingExtraError
from instyle.inference.io import load_image

__all__ = [
    "ALIGNED_DIR", "BLENDS", "INDEX_NAME", "PASTED_DIR", "POISSON_ITERATIONS", "PasteBackError", "face_record",
    "find_alignment", "paste_result", "poisson_backend", "poisson_paste", "require_poisson",
]

#: ``encode --align`` keeps the aligned crops (and their index) here, under its output folder
ALIGNED_DIR = "aligned"
#: results pasted into the original photos go here, under the command's output folder
PASTED_DIR = "pasted"
INDEX_NAME = "alignment.json"
#: how a result meets the photo around it (see the module docstring)
BLENDS = ("feather", "poisson")
#: the original's ``fpie -n 5000``
POISSON_ITERATIONS = 5000


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


def require_poisson() -> None:
    """Check the ``poisson`` blend can run (before a long job).

    Raises:
        MissingExtraError: fpie (or OpenCV, which it reads images with) is missing; one line
            naming the extra to install.
    """
    _fpie_processor()


def _fpie_processor():
    # taichi (fpie's fast backends) announces itself on stdout; commands keep stdout for their own
    # output, and without its print buffer taichi takes the redirect for no console of its own
    os.environ.setdefault("TI_ENABLE_PYBUF", "0")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            from fpie import process
    except ImportError:
        raise MissingExtraError(
            "--blend poisson needs the 'fpie' package (and OpenCV): pip install 'instyle[poisson]'"
        ) from None
    return process


def poisson_backend(available: list[str] | tuple[str, ...]) -> str:
    """The fpie backend to run: the original's ``taichi-gpu`` where CUDA is there (taichi's GPU
    arch crashes the process without a CUDA driver), else the same taichi solver on the CPU,
    else fpie's plain NumPy Jacobi solver."""
    import torch

    if "taichi-gpu" in available and torch.cuda.is_available():
        return "taichi-gpu"
    return "taichi-cpu" if "taichi-cpu" in available else "numpy"


def poisson_paste(
    photo: Image.Image,
    result: Image.Image,
    quad: np.ndarray,
    iterations: int = POISSON_ITERATIONS,
    backend: str | None = None,
) -> Image.Image:
    """``result`` (a square output of the aligned crop) pasted into ``photo`` as StyleFeatureEditor
    does (``runners/simple_runner.py``, ``unalign``): hard over every pixel the warped crop covers,
    then ``fpie -s PHOTO -m MASK -t PASTED -n 5000 -b taichi-gpu -g src`` over the rest, MASK
    white where the crop does not reach (fpie's equation solver, offsets 0).

    The original's own unalign files (a JPEG mask, a PNG composite truncated to ``uint8``) are
    not written: the arrays go to fpie as they are, the composite rounded. ``backend`` is an fpie
    backend name (default: :func:`poisson_backend`).
    """
    process = _fpie_processor()
    if not isinstance(iterations, int) or iterations < 1:
        raise InputError(f"iterations={iterations!r} must be a positive integer")
    photo = photo.convert("RGB")
    side = result.width
    warp = warp_to_source(photo.size, result, quad, np.ones((side, side), np.float32))
    if warp is None:
        return photo.copy()
    (x0, y0, x1, y1), warped, cover = warp
    src = np.asarray(photo, dtype=np.uint8)
    inside = np.zeros(src.shape[:2], dtype=bool)
    inside[y0:y1, x0:x1] = cover > 0
    tgt = _hard_paste(src, inside, (x0, y0, x1, y1), warped)
    if inside[1:-1, 1:-1].all():  # fpie keeps the photo's border: nothing left to solve
        return Image.fromarray(tgt)
    mask = np.repeat(np.where(inside, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    name = backend or poisson_backend(process.ALL_BACKEND)
    if name not in process.ALL_BACKEND:
        raise InputError(f"fpie backend {name!r} is not available here; available: {', '.join(process.ALL_BACKEND)}")
    with contextlib.redirect_stdout(sys.stderr):
        solver = process.EquProcessor("src", name)
        solver.reset(src, mask, tgt, (0, 0), (0, 0))
        out, _ = solver.step(iterations)
    return Image.fromarray(np.asarray(out, dtype=np.uint8))


def _hard_paste(src: np.ndarray, inside: np.ndarray, box: tuple[int, int, int, int], warped: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = box
    out = src.copy()
    region = out[y0:y1, x0:x1]
    cover = inside[y0:y1, x0:x1]
    region[cover] = np.clip(np.rint(warped[cover]), 0, 255).astype(np.uint8)
    return out


def paste_result(record: dict, result: Image.Image, feather: float = 0.1, blend: str = "feather") -> Image.Image:
    """``result`` (a square output of the aligned crop, any size) pasted into the record's photo
    with ``blend`` (one of :data:`BLENDS`)."""
    if blend not in BLENDS:
        raise InputError(f"blend={blend!r} is not one of {', '.join(BLENDS)}")
    source = Path(record["source"])
    if not source.is_absolute() and "index" in record:
        beside = Path(record["index"]).parent / source
        source = beside if beside.is_file() else source
    try:
        photo = load_image(source, mode="RGB")
    except (OSError, ValueError) as e:
        raise PasteBackError(f"cannot paste back into {source}: {e}") from None
    quad = np.asarray(record["quad"], dtype=np.float64)
    if blend == "poisson":
        return poisson_paste(photo, result, quad)
    return paste_back(photo, result, quad, feather=feather)


def face_record(face, source: str | os.PathLike) -> dict:
    """The ``alignment.json`` record of an aligned face (as ``instyle align`` writes it)."""
    return {
        "source": str(Path(source).resolve()),
        "quad": [[round(float(v), 3) for v in pt] for pt in face.quad],
        "box": [round(float(v), 1) for v in face.detection.box],
        "score": round(face.detection.score, 4),
        "detector": face.detection.detector,
    }
