"""``instyle prepare``: make a task's training pairs from a folder of face photos."""

from __future__ import annotations

import argparse
import json
import os
import sys
import zlib
from pathlib import Path

from instyle.cli.common import MAX_SIDE, add_count, error
from instyle.errors import InputError, InstyleError

DESCRIPTION = """\
Write the (input, target) pairs a task trains on, paired by file name:
  OUT/target/<name>.png   the photo resized to --size (optionally FFHQ-aligned first)
  OUT/source/<name>.png   the task's input for it:
    sketch2face       pencil sketch (L, lines on white)
    seg2face          label map (L: pixel value = CelebAMask-HQ class) drawn from dlib
                      landmarks, or converted from --labels DIR (index or palette PNGs)
    super_resolution  bicubic down/up-sampled photo, factor drawn from --option factors=...
    inpainting        photo with the masked region filled
    image2image       the file of the same name in --inputs DIR, resized
    inversion, frontalization: no source/ (the input is the photo itself)
Random choices are seeded per file (--seed), so reruns are identical. Files whose outputs
exist are skipped (resumable; --overwrite redoes them). Unusable files are reported and
listed in the summary; the exit code is 1 when any file failed.
Examples:
  instyle prepare sketch2face --photos faces/ --out data/sketch
  instyle prepare super_resolution --photos faces/ --out data/sr --option factors=4,8
  instyle prepare seg2face --photos celebamask/img --labels celebamask/mask --out data/seg
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="make a task's training pairs (sketches, label maps, low-res, masked) from photos",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", metavar="TASK", help="task preset name (see docs/tasks.md)")
    p.add_argument("--photos", required=True, help="folder of target photos (searched recursively)")
    p.add_argument("--out", "-o", required=True, help="output folder (gets target/ and source/)")
    p.add_argument("--labels", help="seg2face: folder of label maps named like the photos")
    p.add_argument("--inputs", help="image2image: folder of input images named like the photos")
    add_count(p, "--size", minimum=16, maximum=MAX_SIDE, default=256, help="side of the written images (default: 256)")
    p.add_argument("--align", action="store_true", help="FFHQ-align each photo (largest face) first")
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="task option, e.g. factors=4 or mask=random"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the per-file random choices (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="redo files whose outputs exist")
    p.set_defaults(func=run)


def _parse_value(text: str):
    if "," in text:
        return [_parse_value(t) for t in text.split(",") if t]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items: list[str]) -> dict:
    """``["factors=4,8", "mask=random"]`` -> ``{"factors": [4, 8], "mask": "random"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r} must look like KEY=VALUE")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _index(folder: str | None, what: str) -> dict[str, Path]:
    from instyle.inference.io import IMAGE_EXTENSIONS

    if folder is None:
        return {}
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder {root} does not exist")
    return {
        p.relative_to(root).with_suffix("").as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    }


def _match(index: dict[str, Path], key: str) -> Path | None:
    """The file named ``key`` in ``index``; a key that kept its image suffix (``a.png``) also matches ``a``."""
    from instyle.inference.io import IMAGE_EXTENSIONS

    stem, ext = os.path.splitext(key)
    return index.get(key) or (index.get(stem) if ext.lower() in IMAGE_EXTENSIONS else None)


def make_pair_images(task, photo, key: str, seed: int, label_file=None, input_file=None):
    """``(target, source or None)`` PIL images for one photo (``source`` None: the photo is the input)."""
    import numpy as np
    from PIL import Image

    from instyle.inference.io import load_image
    from instyle.tasks import Task

    target = photo.resize((task.size, task.size), Image.Resampling.BILINEAR) if photo.size != (task.size,) * 2 else photo
    if task.name == "seg2face" and label_file is not None:
        labels = task.labels_from_file_image(load_image(label_file, mode=None))
        return target, Image.fromarray(labels.astype(np.uint8))  # L index image, as CelebAMask-HQ
    if task.needs_source and task.name != "seg2face":
        if input_file is None:
            raise ValueError(f"no input image named {key!r} (give --inputs DIR with files named like the photos)")
        src = load_image(input_file)
        return target, src.resize((task.size, task.size), Image.Resampling.BICUBIC)
    if type(task).make_input_image is Task.make_input_image:
        return target, None
    rng = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8", "surrogateescape"))])  # any file name
    return target, task.make_input_image(target, rng)


def run(args: argparse.Namespace) -> int:

    from instyle.inference.io import collect_input_files, output_names
    from instyle.inference.pipeline import OutputFolderError, prepare_output_folder
    from instyle.tasks import get_task
    from instyle.utils.atomic import atomic_write_bytes
    from instyle.utils.config import ConfigError

    try:
        task = get_task(args.task, size=args.size).with_input_options(**parse_options(args.option))
        labels = _index(args.labels, "--labels")
        inputs = _index(args.inputs, "--inputs")
    except (ConfigError, ValueError, TypeError, FileNotFoundError) as e:
        error(str(e))
        return 2
    if task.name == "image2image" and not inputs:
        error("image2image needs --inputs DIR (input images named like the photos)")
        return 2
    align = None
    if args.align:
        from instyle.alignment import AlignmentUnavailable, align_face
        from instyle.alignment.models import require_dlib

        try:
            require_dlib()
        except AlignmentUnavailable as e:
            error(str(e))
            return 2
        align = align_face
    root = Path(args.photos)
    if not root.is_dir():
        error(f"--photos {root} is not a folder")
        return 2
    files, problems = collect_input_files([root], exclude=[args.out])
    if not files:
        error(f"no images found in {root}")
        return 1
    out = Path(args.out)
    try:
        # a.png and a.jpg in one folder keep their suffixes (a.png.png, a.jpg.png): one pair each.
        keys = output_names(files)
        prepare_output_folder(out, files, [out / sub / f"{k}.png" for k in keys for sub in ("target", "source")])
    except (OutputFolderError, ValueError) as e:
        error(str(e))
        return 2
    record = {"task": task.name, "size": task.size, "options": parse_options(args.option), "seed": args.seed}
    try:
        atomic_write_bytes(out / "prepare.json", (json.dumps(record, indent=1) + "\n").encode())
    except OSError as e:
        error(f"could not write {out / 'prepare.json'}: {e.strerror or e}")
        return 1
    written, resumed, failures, stopped = _make_pairs(task, files, keys, out, args, align, labels, inputs)
    failures = list(problems) + failures  # broken links, unreadable folders first
    if stopped:
        return 1
    print(f"prepared {written} pair(s) for {task.name} in {out}; {resumed} already done, {len(failures)} skipped")
    if failures:
        print("skipped files:", file=sys.stderr)
        for msg in failures:
            print(f"  {msg}", file=sys.stderr)
    return 1 if failures else 0


def _make_pairs(task, files, keys, out: Path, args, align, labels, inputs) -> tuple[int, int, list[str], bool]:
    """Write the pairs: ``(written, already done, failure lines, stopped by a write error)``."""
    from instyle.inference.io import load_image, save_image
    from instyle.utils.progress import track, warn

    written = resumed = 0
    failures: list[str] = []
    pairs = list(zip((f.path for f in files), keys))
    for path, key in track(pairs, f"prepare {task.name}", "img"):
        target_file, source_file = out / "target" / f"{key}.png", out / "source" / f"{key}.png"
        if not args.overwrite and target_file.is_file():  # the target is written last
            resumed += 1
            continue
        try:
            photo = load_image(path)
            if align is not None:
                face = align(photo, size=task.size)
                if face is None:
                    raise InputError("no face found to align")
                photo = face.image
            target, source = make_pair_images(task, photo, key, args.seed, _match(labels, key), _match(inputs, key))
        except (InstyleError, OSError) as e:
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            failures.append(msg)
            warn(f"skipped {msg}")
            continue
        try:
            if source is not None:
                save_image(source, source_file)
            save_image(target, target_file)  # last: its presence marks the pair as done
        except OSError as e:
            error(f"could not write the pair of {path}: {e.strerror or e}; stopped after {written} new pair(s)")
            return written, resumed, failures, True
        written += 1
    return written, resumed, failures, False
