"""``instyle encode``: images -> W+ latents -> reconstructions, for files, folders and globs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from instyle.cli.common import (
    CHECKPOINT_HELP,
    add_blend_arg,
    add_count,
    add_device_arg,
    add_precision_args,
    add_sfe_args,
    apply_precision_args,
    blend_ready,
    companion_files,
    error,
)
from instyle.cli.refining import add_refine_args, prepare_refine, run_refine

DESCRIPTION = """\
Encode images with a checkpoint of any family (pSp, e4e, ReStyle, HyperStyle, StyleFeatureEditor,
ReStyle over StyleGAN3) and write the reconstructions (and
optionally the W+ latents). ReStyle models refine their latents --iterations times
(default 5, as the original's inference script). Inputs are files, folders (searched recursively) or glob patterns.
Photos are prepared like the original test transforms (resize to 256x256 bilinear,
normalise to [-1, 1]); sketches, label maps, low-resolution or masked inputs are
prepared according to the checkpoint's task.

Bad inputs (corrupt, truncated, non-image, too small or too large files) are reported
one line each and skipped; the other files are still processed and the exit code is 1
when anything failed. Outputs are written atomically. Results are deterministic
(stored noise maps, --seed for anything random).

Outputs keep each file's path under its input folder (photos/sub/a.jpg -> OUT/sub/a.png);
inputs that would write the same file keep their suffix or folder name (a.png.png,
a.jpg.png). OUT/summary.json lists every input with its outputs or its error. OUT may lie
inside an input folder (it is not scanned) but may not be one.
HyperStyle checkpoints need their W-encoder file (--w-encoder); --iterations sets the
refinement steps (default 5, the original's). With --save-latents they write
latents/<name>.npz holding the W+ code and the image's generator offsets, which
`instyle edit` / `interpolate` / `mix` re-render on the tuned generator.

Large folders stream: images are decoded in background threads while the model
runs, outputs are written by a background thread, and memory stays flat. Under
`torchrun --nproc_per_node=N -m instyle.cli.main encode ...` each process takes
every N-th image (one GPU per process when --device is cuda).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="encode images into W+ and write reconstructions",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--checkpoint", "-c", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--out", "-o", required=True, help="output folder")
    add_count(p, "--batch-size", default=4, help="images per forward pass (default: 4)")
    add_count(p, "--iterations", default=None, metavar="N",
              help="ReStyle / HyperStyle refinement steps (default: 5, the originals'); pSp and e4e encode in one step")
    add_device_arg(p)
    p.add_argument("--w-encoder", metavar="PATH", help="HyperStyle only: the W-encoder checkpoint the model needs")
    add_sfe_args(p)
    add_precision_args(p)
    p.add_argument(
        "--save-latents", action="store_true",
        help="also write latents/<name>.npy, float32 [n_styles, 512] (HyperStyle: .npz with the offsets)",
    )
    p.add_argument(
        "--full-resolution", action="store_true",
        help="write the generator's full-size output, e.g. 1024 px (default: 256 px, the model's resize_to; the "
        "original inference.py writes full size unless --resize_outputs)",
    )
    p.add_argument("--side-by-side", action="store_true", help="write input | output pairs instead of outputs alone")
    p.add_argument("--grid", action="store_true", help="also write grid.png with input | output rows (first 16 images)")
    p.add_argument(
        "--align", action="store_true",
        help="FFHQ-align faces in the inputs first (needs dlib; see `instyle align`); keeps the crops and their "
        "alignment.json in OUT/aligned/",
    )
    p.add_argument(
        "--paste-back", action="store_true",
        help="with --align: also paste each reconstruction back into its original photo (OUT/pasted/<name>)",
    )
    add_blend_arg(p)
    p.add_argument(
        "--unaligned", action="store_true",
        help="StyleGAN3 encoders: encode each photo's face aligned, render it where and as rotated as in an unaligned "
        "crop (landmark transform, saved in latents/<name>.npz); needs dlib (see docs/stylegan3.md)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for anything random (default: 0)")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="output image format (default: png)")
    add_count(p, "--limit", metavar="N",
              help="encode only the first N inputs in path order (the original's --n_images)")
    add_count(p, "--resize-factor", metavar="N",
              help="super-resolution models: down-sample each full-resolution photo by N first (the original's "
              "--resize_factors); with --side-by-side each row is source | down-sampled | output")
    add_refine_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from instyle.errors import InstyleError
    from instyle.inference.io import collect_input_files
    from instyle.inference.pipeline import EncodeOptions, OutputFolderError, check_output_folder, encode_files, world
    from instyle.interop import load_psp
    from instyle.models.family import family_of, get_family, list_families
    from instyle.utils.config import ConfigError
    from instyle.utils.device import resolve_device

    rank, world_size = world()
    try:
        options = EncodeOptions(
            batch_size=args.batch_size, save_latents=args.save_latents, full_resolution=args.full_resolution,
            side_by_side=args.side_by_side, grid=args.grid, align=args.align, format=args.format,
            iterations=args.iterations, resize_factor=args.resize_factor, limit=args.limit,
            paste_back=args.paste_back, blend=args.blend,
        )
        device = resolve_device(args.device)
        if world_size > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    except (ConfigError, ValueError) as e:
        error(str(e).replace("batch_size=", "--batch-size="))
        return 2
    if args.align and not _face_tools_ready():
        return 2
    if not blend_ready(args):
        return 2
    try:
        check_output_folder(args.out)  # before the long model load
    except OutputFolderError as e:
        error(str(e))
        return 2
    refining = prepare_refine(args) if args.refine else None  # refused settings fail before the long load
    if args.refine and refining is None:
        return 2
    torch.manual_seed(args.seed)
    if device.type == "cpu":
        from instyle.ops.fast_memory import retain_freed_memory

        retain_freed_memory()  # a batch job: reuse freed large blocks (INSTYLE_MALLOC=default opts out)
    try:
        model = load_psp(args.checkpoint, device=device, **companion_files(args))
        apply_precision_args(model, args)
    except InstyleError as e:
        error(str(e))
        return 2
    family = family_of(model)
    if family.encoding == "features":  # StyleFeatureEditor: its encodings are written as its own files
        return _encode_sfe(args, model, rank, world_size)
    if args.iterations is not None and (args.iterations < 1 or (not family.iterative and args.iterations != 1)):
        titles = [get_family(f).title for f in list_families() if get_family(f).iterative]
        iterative = ", ".join(titles[:-1]) + " and " + titles[-1] if len(titles) > 1 else titles[0]
        error(f"--iterations={args.iterations}: {iterative} models take N >= 1; this {family.name} model encodes in one step")
        return 2

    files, problems = collect_input_files(args.inputs, exclude=[args.out])
    for msg in problems if rank == 0 else []:
        print(f"instyle: skipped {msg}", file=sys.stderr)
    if not files:
        error("no input images found")
        return 1
    if getattr(args, "unaligned", False):
        return _unaligned(args, model, files, len(problems), refining)
    if args.refine:
        return _refine(args, model, files, len(problems), refining)
    # Every process reports the files of its own shard.
    log = lambda msg: tqdm.write(f"instyle: {msg}", file=sys.stderr)
    try:
        summary = encode_files(
            model, files, args.out, options, log=log, progress=rank == 0, meta={"checkpoint": str(args.checkpoint)}, skipped=problems
        )
    except OutputFolderError as e:
        error(str(e))
        return 2
    failed = summary["failed"] + summary["not_done"]
    print(f"encoded {summary['encoded']} image(s) into {args.out} in {summary['seconds']:.1f}s" + (f"; {failed} failed" if failed else ""))
    if summary.get("grid", {}).get("images"):
        shown, done = summary["grid"]["images"], summary["encoded"]
        print(f"{summary['grid']['file']} shows " + (f"all {done} image(s)" if shown >= done else f"the first {shown} of {done} images"))
    return 1 if failed or not summary["summary_written"] else 0


def _encode_sfe(args: argparse.Namespace, model, rank: int, world_size: int) -> int:
    """StyleFeatureEditor: one image at a time; --save-latents writes encoding .npz files."""
    from instyle.inference.io import collect_input_files, output_names
    from instyle.inference.pasteback import ALIGNED_DIR, INDEX_NAME, PASTED_DIR
    from instyle.inference.pipeline import OutputFolderError, prepare_output_folder
    from instyle.inference.sfe_runner import encode_sfe_files

    unsupported = [f"--{k.replace('_', '-')}" for k in ("iterations", "refine", "side_by_side", "grid", "resize_factor")
                   if getattr(args, k, None)]
    if unsupported or world_size > 1:
        error(f"{' '.join(unsupported) or 'torchrun'}: not available for StyleFeatureEditor models")
        return 2
    files, problems = collect_input_files(args.inputs, exclude=[args.out])
    for msg in problems:
        print(f"instyle: skipped {msg}", file=sys.stderr)
    files = files[: args.limit] if args.limit else files
    if not files:
        error("no input images found")
        return 1
    def planned(n: str) -> list[str]:
        return ([f"{n}.{args.format}"] + ([f"latents/{n}.npz"] if args.save_latents else [])
                + ([f"{ALIGNED_DIR}/{n}.png"] if args.align else []) + ([f"{PASTED_DIR}/{n}.{args.format}"] if args.paste_back else []))

    try:
        names = output_names(files, planned, ["summary.json", f"{ALIGNED_DIR}/{INDEX_NAME}"])
        prepare_output_folder(args.out, files, [Path(args.out) / o for n in names for o in planned(n)])
    except (OutputFolderError, ValueError) as e:
        error(str(e))
        return 2
    summary = encode_sfe_files(
        model, [(f.path, n) for f, n in zip(files, names)], args.out, save_latents=args.save_latents,
        full_resolution=args.full_resolution, fmt=args.format, align=args.align, paste_back=args.paste_back,
        blend=args.blend, log=lambda m: print(f"instyle: {m}", file=sys.stderr), meta={"checkpoint": str(args.checkpoint)},
    )
    failed = summary["failed"] + len(problems)
    print(f"encoded {summary['encoded']} image(s) into {args.out} in {summary['seconds']:.1f}s" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def _unaligned(args: argparse.Namespace, model, files, n_skipped: int = 0, refining=None) -> int:
    """``--unaligned``: ReStyle over StyleGAN3 with the landmark transform on the last iteration;
    with ``--refine optimize|pti`` the unaligned crop is fitted under that transform."""
    from instyle.inference.pipeline import OutputFolderError
    from instyle.inference.refine import LOSS_REFINERS
    from instyle.inference.unaligned import encode_unaligned_files, unaligned_preparer
    from instyle.models.family import family_of

    if not family_of(model).transform:
        error("--unaligned needs an encoder over StyleGAN3 (e.g. restyle_pSp_ffhq.pt); this model's generator takes no transform")
        return 2
    if args.refine and (args.refine not in LOSS_REFINERS or args.align):
        error(f"--unaligned --refine {args.refine}{' --align' if args.align else ''}: the unaligned encode refines with "
              f"{' or '.join(LOSS_REFINERS)} only, and aligns by itself (no --align; --iterations sets ReStyle's steps)")
        return 2
    if not _face_tools_ready():
        return 2
    if args.refine:
        # as the unaligned encode, every image's latent (and its transform) is written
        args = argparse.Namespace(**{**vars(args), "save_latents": True})
        return _refine(args, model, files, n_skipped, refining, prepare=unaligned_preparer(model))
    files = files[: args.limit] if args.limit else files
    try:
        summary = encode_unaligned_files(
            model, files, args.out, iterations=args.iterations, full_resolution=args.full_resolution,
            side_by_side=args.side_by_side, image_format=args.format, log=lambda m: print(f"instyle: {m}", file=sys.stderr),
        )
    except (OutputFolderError, ValueError) as e:
        error(str(e))
        return 2
    print(f"encoded {summary['encoded']} unaligned image(s) into {args.out}" + (f"; {summary['failed']} failed" if summary["failed"] else ""))
    return 1 if summary["failed"] else 0


def _face_tools_ready() -> bool:
    from instyle.alignment import AlignmentUnavailable
    from instyle.alignment.models import require_dlib

    try:
        require_dlib()
        return True
    except AlignmentUnavailable as e:
        error(f"--align needs the face tools (pip install 'instyle[faces]'): {e}")
        return False


def _refine(args: argparse.Namespace, model, files, n_skipped: int, prepared, prepare=None) -> int:
    """``--refine``: output names and folder checks as for a plain encode, then the per-image loop
    (``prepare``: path -> network input or RefineInput; default the plain / aligned input)."""
    from instyle.inference.io import output_names
    from instyle.inference.pasteback import ALIGNED_DIR, INDEX_NAME
    from instyle.inference.pipeline import OutputFolderError, input_preparer, prepare_output_folder
    from instyle.inference.refine import refine_outputs

    files = files[: args.limit] if args.limit else files
    try:
        outputs = lambda name: refine_outputs(name, args.refine, args.format, args.save_latents, args.align, args.paste_back)
        names = output_names(files, outputs, ["grid.png", "summary.json", f"{ALIGNED_DIR}/{INDEX_NAME}"])
        prepare_output_folder(args.out, files, [Path(args.out) / o for n in names for o in outputs(n)])
    except (OutputFolderError, ValueError) as e:
        error(str(e))
        return 2
    items = [(f.path, n) for f, n in zip(files, names)]
    faces: dict | None = {} if args.align else None  # the aligned crops, kept as encode --align keeps them
    prepare = prepare or input_preparer(model, args.align, args.resize_factor, faces)
    return run_refine(args, model, items, prepare, n_skipped, prepared, faces)
