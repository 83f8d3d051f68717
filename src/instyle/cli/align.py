"""``instyle align``: FFHQ-align the faces of photos (files, folders, globs)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from instyle.cli.common import error
from instyle.errors import InstyleError

DESCRIPTION = """\
Detect faces with dlib, fit the 68 landmarks and crop each face the way FFHQ was made
(eye/mouth-based oriented square, reflected and blurred padding where the crop leaves the
photo). Writes OUT/<name>.png for the largest face (with --all-faces also <name>_1.png, ...
for the others, largest first) and OUT/alignment.json with each crop's source quad, so
results can be pasted back into the photo.

Detectors: hog (fast; misses near-profile and tiny faces), cnn (dlib's MMOD CNN; finds
profile and rotated faces, several times slower on CPU), auto (hog, then cnn when hog finds
nothing; default). Faces smaller than about 40 px are missed: raise --upsample for them.
Photos without a face and unreadable files are reported and skipped; the others are still
processed, existing outputs are kept (resumable; --overwrite redoes them), and the exit code
is 1 when any input yielded no face or failed. Needs: pip install 'instyle[faces]'.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align",
        help="FFHQ-align faces in photos (dlib landmarks)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--size", type=int, default=1024, help="side of the aligned crops in pixels (default: 1024; pSp uses 256)")
    p.add_argument("--all-faces", action="store_true", help="write every face found, not only the largest")
    p.add_argument("--detector", choices=["auto", "hog", "cnn"], default="auto", help="face detector (default: auto)")
    p.add_argument("--upsample", type=int, default=1, help="detector upsampling; raise for tiny faces (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs already exist")
    p.set_defaults(func=run)


def _record(face, source: Path) -> dict:
    return {
        "source": str(source),
        "quad": [[round(float(v), 3) for v in pt] for pt in face.quad],
        "box": [round(float(v), 1) for v in face.detection.box],
        "score": round(face.detection.score, 4),
        "detector": face.detection.detector,
    }


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from instyle.alignment import AlignmentUnavailable, align_faces
    from instyle.alignment.models import require_dlib, shape_predictor
    from instyle.inference.io import collect_inputs, load_image, save_image
    from instyle.utils.atomic import atomic_write_bytes

    if args.size < 1 or args.upsample < 0:
        error(f"--size must be >= 1 and --upsample >= 0 (got {args.size}, {args.upsample})")
        return 2
    try:
        require_dlib()
        shape_predictor()
    except AlignmentUnavailable as e:
        error(str(e))
        return 2
    paths, problems = collect_inputs(args.inputs)
    for msg in problems:
        print(f"instyle: skipped {msg}", file=sys.stderr)
    if not paths:
        error("no input images found")
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "alignment.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    stems: dict[str, int] = {}
    counts = {"faces": 0, "images": 0, "resumed": 0, "no_face": 0, "failed": len(problems)}
    t0 = time.perf_counter()
    for path in tqdm(paths, unit="img", desc="align", file=sys.stderr, disable=None):
        n = stems.get(path.stem, 0)
        stems[path.stem] = n + 1
        name = path.stem if n == 0 else f"{path.stem}_{n}"  # a.jpg and sub/a.png never collide
        if not args.overwrite and (out / f"{name}.png").is_file():
            counts["resumed"] += 1
            continue
        try:
            faces = align_faces(
                load_image(path), size=args.size, all_faces=args.all_faces, detector=args.detector, upsample=args.upsample
            )
        except (InstyleError, OSError) as e:
            tqdm.write(f"instyle: skipped {e if str(path) in str(e) else f'{path}: {e}'}", file=sys.stderr)
            counts["failed"] += 1
            continue
        if not faces:
            tqdm.write(f"instyle: no face found in {path} (try --detector cnn or --upsample 2)", file=sys.stderr)
            counts["no_face"] += 1
            continue
        for k, face in enumerate(faces):
            file = f"{name}.png" if k == 0 else f"{name}_{k}.png"
            save_image(face.image, out / file)
            index[file] = _record(face, path)
        counts["faces"] += len(faces)
        counts["images"] += 1
    atomic_write_bytes(index_path, (json.dumps(index, indent=1) + "\n").encode())
    elapsed = time.perf_counter() - t0
    done = counts["images"] + counts["no_face"]
    print(
        f"aligned {counts['faces']} face(s) from {counts['images']} image(s) into {out}; "
        f"{counts['resumed']} already done, {counts['no_face']} without a face, {counts['failed']} failed"
        + (f"; {elapsed / done:.2f} s per image" if done else "")
    )
    return 1 if counts["no_face"] or counts["failed"] else 0
