"""``instyle evaluate``: the paper's reconstruction metrics on a folder, and run comparisons."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from instyle.cli.common import (
    CHECKPOINT_HELP,
    COUNT_BOUNDS,
    add_count,
    add_device_arg,
    add_precision_args,
    add_sfe_args,
    apply_precision_args,
    bounded_int,
    error,
)
from instyle.errors import InstyleError

DESCRIPTION = """\
Measure a checkpoint on a folder of faces the way the pSp paper's Table 1 does: per image
and on average MSE (on [-1, 1] images), LPIPS (AlexNet), PSNR, SSIM, identity similarity
and runtime per image (model forward after warm-up, synchronised on GPU, with the device
and batch size recorded); FID when Inception weights are given. Writes REPORT_DIR/
report.json, per_image.csv, report.md and best_worst.png.

Data: a folder of photos (targets; the input is made from each by the model's task -- the
photo itself for inversion), or the folder `instyle prepare` writes: target/ + source/
matched by file name (sketches, label maps; the older inputs/ + targets/ names work too). --predictions DIR scores saved outputs instead of a checkpoint.

Identity: dlib's 128-D face descriptor by default (offline; --face-box aligned uses the
known box of aligned crops, detect runs dlib's detector on the target), or --identity
arcface:PATH to ArcFace / CurricularFace IR(-SE) weights (MTCNN crop of each image when
facenet-pytorch is installed: pip install 'instyle[metrics]'). Outputs without a detectable
face get no identity value; the report counts them and excludes them from the mean. LPIPS needs torchvision's AlexNet
weights (--lpips-weights PATH or torchvision's cache). Missing networks are reported as
n/a with the reason; nothing is downloaded.

  instyle evaluate --checkpoint psp.pt --data celeba_hq_test --out report/
  instyle evaluate --checkpoint psp-ft=runs/ft/checkpoints/latest --data celeba_hq_test --out report_ft/
  instyle evaluate --compare report_a/report.json report_b/report.json

LEC (e4e's Latent Editing Consistency, lower is better) for one edit: encode, edit,
generate, encode again, undo the edit, and measure the W+ distance to the first code:
  instyle evaluate -c e4e.pt --data faces/ --out report/ --lec age.pt --lec-edit age=3
writes report/lec.json (--lec-edit defaults to NAME=3, the e4e example; GANSpace needs
e.g. --lec-edit ganspace:54,7,8=20).
  instyle evaluate --compare psp/ e4e/ restyle/        # several side by side, best per metric
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="reconstruction metrics (MSE, LPIPS, PSNR, SSIM, identity, runtime) and comparisons",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", "-c", metavar="[NAME=]PATH",
        help=CHECKPOINT_HELP + "; NAME labels it in the report (default: its file or folder name)",
    )
    p.add_argument("--w-encoder", metavar="PATH", help="HyperStyle only: the W-encoder checkpoint the model needs")
    add_sfe_args(p)
    p.add_argument("--predictions", help="score saved outputs in this folder (matched to --data by name) instead")
    p.add_argument("--data", help="folder of target photos, or a prepared folder (target/ + source/)")
    p.add_argument("--task", help="task making inputs from targets (default: the checkpoint's)")
    p.add_argument("--out", "-o", help="report folder")
    add_count(p, "--batch-size", default=4, help="images per forward pass (default: 4)")
    add_device_arg(p)
    add_precision_args(p)
    p.add_argument("--lpips-weights", help="torchvision AlexNet weights for LPIPS (default: torchvision's cache)")
    p.add_argument(
        "--identity", default="dlib",
        help="'dlib' (default), 'none', or 'arcface:PATH' to ArcFace/CurricularFace weights (a bare PATH works too)",
    )
    p.add_argument("--face-box", choices=["aligned", "detect"], default="aligned", help="dlib face box (default: aligned)")
    p.add_argument("--inception-weights", help="torchvision Inception-v3 weights; FID is computed only with them")
    add_count(p, "--limit", metavar="N", help="evaluate only the first N images (as encode --limit)")
    p.add_argument("--max-images", type=bounded_int(*COUNT_BOUNDS["--limit"]), dest="limit", help=argparse.SUPPRESS)  # the old spelling
    add_count(p, "--iterations", metavar="N",
              help="ReStyle / HyperStyle refinement steps (default: the model's, 5); pSp and e4e encode in one step")
    p.add_argument(
        "--per-iteration", action="store_true",
        help="ReStyle / HyperStyle: also measure the reconstruction after every iteration (report.md table, "
        "report.json per_iteration), like the original scripts' per-step outputs",
    )
    add_count(p, "--resize-factor", metavar="N",
              help="super-resolution models: make each input by down-sampling its target xN (the original's "
              "--resize_factors; default: the largest training factor, named in the report)")
    add_count(p, "--warmup", minimum=0, maximum=100, default=None,
              help="untimed warm-up passes before timing (default: 1 on a GPU, 0 on the CPU, where a pass costs a full run)")
    p.add_argument("--lec", metavar="[NAME=]FILE", help="also measure LEC for this edit file (direction, GANSpace, SeFa)")
    p.add_argument("--lec-edit", metavar="NAME[:COMP]=S", help="the edit LEC applies (default: NAME=3)")
    p.add_argument(
        "--compare", nargs="+", metavar="REPORT",
        help="compare report.json files (or report folders): two with deltas, more side by side",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return _run_compare(args)
    if not args.data or not args.out:
        error("--data and --out are required (or use --compare A.json B.json)")
        return 2
    if bool(args.checkpoint) == bool(args.predictions):
        error("give exactly one of --checkpoint or --predictions")
        return 2
    if args.lec and not args.checkpoint:
        error("--lec measures a checkpoint: give --checkpoint")
        return 2
    if args.batch_size < 1:
        error(f"--batch-size={args.batch_size} must be >= 1")
        return 2
    from instyle.evaluation.report import evaluate
    from instyle.inference.editing import named_file

    try:  # before computing anything: a report that cannot be written is lost work
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        error(f"--out {args.out}: cannot write there ({e.strerror or e})")
        return 2
    if args.checkpoint:
        name, path = named_file(args.checkpoint)
        args.name, args.checkpoint = (name, path) if path != args.checkpoint else (None, args.checkpoint)
    measured = args.checkpoint and (getattr(args, "backend", "torch") != "torch" or args.precision == "auto")
    try:
        checkpoint = args.checkpoint
        if args.w_encoder or args.e4e or args.generator or measured:  # HyperStyle / SFE / --backend: load here
            from instyle.interop import load_psp

            where = {"device": args.device} if measured else {}
            checkpoint = load_psp(args.checkpoint, w_encoder=args.w_encoder, e4e=args.e4e, generator=args.generator, **where)
        if measured:  # --backend / auto: applied here, on the model the report then runs
            apply_precision_args(checkpoint, args)
        report = evaluate(
            checkpoint,
            args.data,
            task=args.task,
            batch_size=args.batch_size,
            device=args.device,
            precision=None if measured else args.precision,
            compile=False if measured else args.compile,
            out_dir=args.out,
            predictions_dir=args.predictions,
            lpips_weights=args.lpips_weights,
            identity=None if args.identity == "none" else args.identity,
            face_box=args.face_box,
            inception_weights=args.inception_weights,
            max_images=args.limit,
            warmup=args.warmup,
            progress=True,
            resize_factor=args.resize_factor,
            name=getattr(args, "name", None) or (Path(args.checkpoint).name if args.w_encoder else None),
            iterations=args.iterations,
            per_iteration=args.per_iteration,
        )
    except (InstyleError, FileNotFoundError) as e:
        error(str(e))
        return 2
    except OSError as e:
        error(f"could not write the report into {args.out}: {e.strerror or e}")
        return 1
    if args.checkpoint and not measured and (args.precision != "fp32" or args.compile):
        picked = f" -> {report['precision']}" if args.precision == "auto" else ""
        print(f"instyle: precision {args.precision}{picked}" + (", torch.compile" if args.compile else ""), file=sys.stderr)
    print((Path(args.out) / "report.md").read_text())
    refused = _refused_weights(args, report)
    for flag, why in refused:
        error(f"{flag}: the weights were refused ({why})")
    if args.lec and _run_lec(args) != 0:
        return 2
    if not report["n_images"]:
        error("no image could be evaluated")
        return 1
    return 1 if report["failed"] or refused else 0


def _refused_weights(args: argparse.Namespace, report: dict) -> list[tuple[str, str]]:
    """``(flag, reason)`` for each weight file the user named that could not be used."""
    named = {
        "lpips": ("--lpips-weights", args.lpips_weights),
        "identity": ("--identity", args.identity if args.identity not in ("dlib", "none") else None),
        "fid": ("--inception-weights", args.inception_weights),
    }
    return [
        (f"{flag} {path}", report["unavailable"].get(key, "not used").splitlines()[0])
        for key, (flag, path) in named.items()
        if path and key not in report["networks"]
    ]


def _run_lec(args: argparse.Namespace) -> int:
    from instyle.evaluation.lec import edit_function, lec_on_folder
    from instyle.inference.editing import load_edit, named_file, parse_edit, resolve_edit
    from instyle.interop import CheckpointError, load_psp
    from instyle.utils.atomic import atomic_write_bytes
    from instyle.utils.device import resolve_device

    name, path = named_file(args.lec)
    try:
        model = load_psp(args.checkpoint, device=resolve_device(args.device))
        edit = load_edit(path, model.n_styles, model.config.generator.style_dim)
        spec = parse_edit(args.lec_edit or f"{name}=3")
        edit = edit_function(resolve_edit(spec.name, {name: edit}), spec)
        result = lec_on_folder(model, args.data, edit, args.batch_size, args.limit)
    except (CheckpointError, ValueError) as e:
        error(f"LEC: {e}")
        return 2
    result = {"edit": args.lec_edit or f"{name}=3", "file": str(path), **result}
    atomic_write_bytes(Path(args.out) / "lec.json", (json.dumps(result, indent=2) + "\n").encode())
    print(f"LEC ({result['edit']}): {result['lec']:.4f} over {result['n_images']} image(s); see {Path(args.out) / 'lec.json'}")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from instyle.evaluation.report import compare, compare_many
    from instyle.utils.atomic import atomic_write_bytes

    try:
        result = compare(*args.compare) if len(args.compare) == 2 else compare_many(args.compare)
    except InstyleError as e:
        error(str(e))
        return 2
    print(result["markdown"])
    if args.out:
        out = Path(args.out)
        try:
            atomic_write_bytes(out / "comparison.md", result["markdown"].encode("utf-8", "backslashreplace"))
            atomic_write_bytes(out / "comparison.json", (json.dumps(result, indent=2) + "\n").encode())
        except OSError as e:
            error(f"could not write the comparison into {out}: {e.strerror or e}")
            return 1
    print("best: " + ", ".join(f"{k}: {v}" for k, v in result["best"].items()))
    return 0
