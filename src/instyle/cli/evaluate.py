"""``instyle evaluate``: the paper's reconstruction metrics on a folder, and run comparisons."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from instyle.cli.common import add_device_arg, add_precision_args, error

DESCRIPTION = """\
Measure a checkpoint on a folder of faces the way the pSp paper's Table 1 does: per image
and on average MSE (on [-1, 1] images), LPIPS (AlexNet), PSNR, SSIM, identity similarity
and runtime per image (model forward after warm-up, synchronised on GPU, with the device
and batch size recorded); FID when Inception weights are given. Writes REPORT_DIR/
report.json, per_image.csv, report.md and best_worst.png.

Data: a folder of photos (targets; the input is made from each by the model's task -- the
photo itself for inversion), or inputs/ + targets/ subfolders matched by file name
(sketches, label maps). --predictions DIR scores saved outputs instead of a checkpoint.

Identity: dlib's 128-D face descriptor by default (offline; --face-box aligned uses the
known box of aligned crops so unrecognisable outputs still get a number, detect runs
dlib's detector on the target), or --identity PATH to ArcFace / CurricularFace IR(-SE)
weights (MTCNN crop when facenet-pytorch is installed). LPIPS needs torchvision's AlexNet
weights (--lpips-weights PATH or torchvision's cache). Missing networks are reported as
n/a with the reason; nothing is downloaded.

  instyle evaluate --checkpoint psp.pt --data celeba_hq_test --out report/
  instyle evaluate --compare report_a/report.json report_b/report.json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="reconstruction metrics (MSE, LPIPS, PSNR, SSIM, identity, runtime) and comparisons",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", "-c", help="pSp checkpoint: official .pt or an instyle model folder")
    p.add_argument("--predictions", help="score saved outputs in this folder (matched to --data by name) instead")
    p.add_argument("--data", "-d", help="folder of target photos, or with inputs/ and targets/ subfolders")
    p.add_argument("--task", help="task making inputs from targets (default: the checkpoint's)")
    p.add_argument("--out", "-o", help="report folder")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: 4)")
    add_device_arg(p)
    add_precision_args(p)
    p.add_argument("--lpips-weights", help="torchvision AlexNet weights for LPIPS (default: torchvision's cache)")
    p.add_argument("--identity", default="dlib", help="'dlib' (default), 'none', or a path to ArcFace/CurricularFace weights")
    p.add_argument("--face-box", choices=["aligned", "detect"], default="aligned", help="dlib face box (default: aligned)")
    p.add_argument("--inception-weights", help="torchvision Inception-v3 weights; FID is computed only with them")
    p.add_argument("--max-images", type=int, help="evaluate at most this many images")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up passes (default: 1)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two report.json files (or report folders)")
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
    if args.batch_size < 1:
        error(f"--batch-size={args.batch_size} must be >= 1")
        return 2
    from instyle.evaluation.report import evaluate
    from instyle.interop import CheckpointError

    try:
        report = evaluate(
            args.checkpoint,
            args.data,
            task=args.task,
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision,
            compile=args.compile,
            out_dir=args.out,
            predictions_dir=args.predictions,
            lpips_weights=args.lpips_weights,
            identity=None if args.identity == "none" else args.identity,
            face_box=args.face_box,
            inception_weights=args.inception_weights,
            max_images=args.max_images,
            warmup=args.warmup,
            progress=True,
        )
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        error(str(e))
        return 2
    if args.checkpoint and (args.precision != "fp32" or args.compile):
        picked = f" -> {report['precision']}" if args.precision == "auto" else ""
        print(f"instyle: precision {args.precision}{picked}" + (", torch.compile" if args.compile else ""), file=sys.stderr)
    print((Path(args.out) / "report.md").read_text())
    if not report["n_images"]:
        error("no image could be evaluated")
        return 1
    return 1 if report["failed"] else 0


def _run_compare(args: argparse.Namespace) -> int:
    from instyle.evaluation.report import compare

    try:
        result = compare(*args.compare)
    except ValueError as e:
        error(str(e))
        return 2
    print(result["markdown"])
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.md").write_text(result["markdown"])
        (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        "better: " + ", ".join(f"{k}: {v}" for k, v in result["better"].items()),
        file=sys.stdout,
    )
    return 0
