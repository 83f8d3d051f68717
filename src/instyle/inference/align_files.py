"""FFHQ alignment of many photos into a folder of crops (``instyle align``): resumable, an
``alignment.json`` index rewritten atomically, bad photos reported and skipped."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instyle.alignment import DETECTORS, align_faces
from instyle.inference.io import ImageLoadError, InputFile, load_image, output_names, save_image
from instyle.inference.pipeline import OutputFolderError, is_fatal_write_error, prepare_output_folder
from instyle.utils.atomic import atomic_write_bytes
from instyle.utils.config import ConfigError
from instyle.utils.progress import track

__all__ = ["AlignOptions", "MAX_FACES_PER_PHOTO", "align_files", "read_alignment_index"]

#: With ``all_faces``, at most this many faces per photo are written (largest first).
MAX_FACES_PER_PHOTO = 16


@dataclass
class AlignOptions:
    """Settings of :func:`align_files` (validated on creation)."""

    size: int = 1024
    all_faces: bool = False
    detector: str = "auto"
    upsample: int = 1
    overwrite: bool = False
    workers: int = 1

    def __post_init__(self) -> None:

        for key, low in (("size", 1), ("upsample", 0), ("workers", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{key}={value!r} must be an integer >= {low}")
        if self.detector not in DETECTORS:
            raise ConfigError(f"detector={self.detector!r} is not one of: {', '.join(DETECTORS)}")

    def outputs(self, name: str) -> list[str]:
        """Crops written for the photo named ``name``: the largest face, then (``all_faces``) the others."""
        extra = range(1, MAX_FACES_PER_PHOTO) if self.all_faces else []
        return [f"{name}.png"] + [f"{name}_{k}.png" for k in extra]


def _face_record(face, source: Path) -> dict:
    return {
        "source": str(source),
        "quad": [[round(float(v), 3) for v in pt] for pt in face.quad],
        "box": [round(float(v), 1) for v in face.detection.box],
        "score": round(face.detection.score, 4),
        "detector": face.detection.detector,
    }


def read_alignment_index(path: Path, log: Callable[[str], None]) -> dict:
    """``alignment.json`` as ``{crop file: record}``; a corrupt one is kept aside as
    ``alignment.json.corrupt`` and rebuilt (its crops are redone), never silently trusted."""
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_bytes())
        if isinstance(index, dict) and all(isinstance(r, dict) and len(r.get("quad", ())) == 4 for r in index.values()):
            return index
        reason = "not a {crop: record} mapping with 4-point quads"
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    backup = path.with_name(path.name + ".corrupt")
    os.replace(path, backup)
    log(f"{path} is corrupt ({reason}); kept as {backup.name} and rebuilt: crops without a valid record are redone")
    return {}


def _ordered_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``fn`` over ``items`` in ``workers`` threads, results in order, at most ``2 * workers`` pending."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list[Future] = []
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        for f in pending:
            yield f.result()


def _same_file(a: str, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def align_files(files: Sequence[InputFile], out: str | os.PathLike, options: AlignOptions, *, log, progress=False) -> dict:
    """FFHQ-align the faces of ``files`` into ``out`` (``options.workers`` photos at a time).

    Each photo's crops are written atomically, then its records are added to
    ``out/alignment.json`` (rewritten atomically), so a killed run leaves every written crop
    either recorded or redone by the rerun: a photo is skipped only when its crop exists and
    is recorded with this source.

    Returns:
        Counts: ``faces``, ``images``, ``resumed``, ``no_face``, ``failed``, ``seconds``.
    """
    try:
        names = output_names(files, options.outputs, ["alignment.json", "alignment.json.corrupt"])
    except ValueError as e:
        raise OutputFolderError(str(e)) from None
    out = prepare_output_folder(out, files, [Path(out) / o for n in names for o in options.outputs(n)])
    index_path = out / "alignment.json"
    index = read_alignment_index(index_path, log)
    counts = {"faces": 0, "images": 0, "resumed": 0, "no_face": 0, "failed": 0}
    todo = []
    for f, name in zip(files, names):
        record = index.get(f"{name}.png")
        if not options.overwrite and (out / f"{name}.png").is_file() and record and _same_file(record.get("source", ""), f.path):
            counts["resumed"] += 1
        else:
            todo.append((f, name))
    t0 = time.perf_counter()
    results = _ordered_map(lambda item: (item, *_align_one(item[0].path, options)), todo, options.workers)
    for (f, name), faces, problem in track(results, "align", "img", total=len(todo), enabled=progress):
        if problem is not None or not faces:
            log(problem or f"no face found in {f.path} (try --detector cnn or --upsample 2)")
            counts["failed" if problem else "no_face"] += 1
            continue
        try:
            for file, face in zip(options.outputs(name), faces):
                save_image(face.image, out / file)
                index[file] = _face_record(face, f.path)
            atomic_write_bytes(index_path, (json.dumps(index, indent=1) + "\n").encode())
        except OSError as e:
            log(f"could not write the crops of {f.path}: {e.strerror or e}")
            counts["failed"] += 1
            if is_fatal_write_error(e):
                break
            continue
        counts["faces"] += len(faces)
        counts["images"] += 1
    counts["seconds"] = time.perf_counter() - t0
    return counts


def _align_one(path: Path, options: AlignOptions):
    """``(faces, None)`` or ``(None, one-line problem)`` for one photo."""

    try:
        faces = align_faces(
            load_image(path), size=options.size, all_faces=options.all_faces, detector=options.detector, upsample=options.upsample
        )
        return faces[:MAX_FACES_PER_PHOTO], None
    except (ImageLoadError, ValueError, OSError) as e:
        return None, f"skipped {e if str(path) in str(e) else f'{path}: {e}'}"
