"""``instyle align``: FFHQ-align the faces of photos (files, folders, globs)."""

from __future__ import annotations

import argparse
import sys

from instyle.cli.common import MAX_SIDE, MAX_WORKERS, add_count, error

DESCRIPTION = """\
Detect faces with dlib, fit the 68 landmarks and crop each face the way FFHQ was made
(eye/mouth-based oriented square, reflected and blurred padding where the crop leaves the
photo). Writes OUT/<name>.png for the largest face (with --all-faces also <name>_1.png, ...
for the others, largest first, at most 16) and OUT/alignment.json with each crop's source
quad, so results can be pasted back into the photo. <name> is the photo's path under its
input folder without the suffix (with the suffix, or the folder's name in front, when two
photos would otherwise write the same crop). alignment.json is rewritten atomically after
every photo, so an interrupted run resumes exactly; a corrupt one is kept aside as
alignment.json.corrupt and rebuilt. --workers N aligns N photos at once (one set of dlib
models per thread).

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
    add_count(p, "--size", minimum=16, maximum=MAX_SIDE, default=1024, help="side of the aligned crops in pixels (default: 1024; pSp uses 256)")
    p.add_argument("--all-faces", action="store_true", help="write every face found, not only the largest")
    p.add_argument("--detector", choices=["auto", "hog", "cnn"], default="auto", help="face detector (default: auto)")
    add_count(p, "--upsample", minimum=0, maximum=4, default=1, help="detector upsampling; raise for tiny faces (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs already exist")
    add_count(p, "--workers", minimum=1, maximum=MAX_WORKERS, default=1,
              help="photos aligned at once in threads, like the original's --num_threads (default: 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from instyle.alignment import AlignmentUnavailable
    from instyle.alignment.models import require_dlib, shape_predictor
    from instyle.inference.align_files import AlignOptions, align_files
    from instyle.inference.io import collect_input_files
    from instyle.inference.pipeline import OutputFolderError
    from instyle.utils.config import ConfigError

    try:
        options = AlignOptions(
            size=args.size, all_faces=args.all_faces, detector=args.detector, upsample=args.upsample,
            overwrite=args.overwrite, workers=args.workers,
        )
        require_dlib()
        shape_predictor()
    except ConfigError as e:
        error(f"--{str(e).replace('_', '-')}")
        return 2
    except AlignmentUnavailable as e:
        error(str(e))
        return 2
    files, problems = collect_input_files(args.inputs, exclude=[args.out])
    for msg in problems:
        print(f"instyle: skipped {msg}", file=sys.stderr)
    if not files:
        error("no input images found")
        return 1
    try:
        counts = align_files(files, args.out, options, log=lambda m: tqdm.write(f"instyle: {m}", file=sys.stderr), progress=True)
    except OutputFolderError as e:
        error(str(e))
        return 2
    counts["failed"] += len(problems)
    done = counts["images"] + counts["no_face"]
    print(
        f"aligned {counts['faces']} face(s) from {counts['images']} image(s) into {args.out}; "
        f"{counts['resumed']} already done, {counts['no_face']} without a face, {counts['failed']} failed"
        + (f"; {counts['seconds'] / done:.2f} s per image" if done else "")
    )
    return 1 if counts["no_face"] or counts["failed"] else 0
