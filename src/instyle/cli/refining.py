"""The ``--refine`` options of ``instyle encode`` (helper module, not a command)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from instyle.cli.common import MAX_ITERATIONS, add_count, error

REFINE_METHODS = ("optimize", "pti", "restyle", "hyperstyle")
#: Most optimiser steps per image (the originals use 200 to 1000).
MAX_REFINE_STEPS = 100_000


def add_refine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("refinement (slower, sharper; see docs/inference_tools.md)")
    g.add_argument("--refine", choices=REFINE_METHODS, help="refine each image after encoding: latent optimisation, "
                   "pivotal tuning, or the model's own iterations (ReStyle / HyperStyle checkpoints only)")
    add_count(g, "--refine-steps", minimum=1, maximum=MAX_REFINE_STEPS,
              help=f"optimiser steps per image (default: 200, pti over StyleGAN3: 350 as stylegan3-editing; restyle/hyperstyle: iterations, default 5, at most {MAX_ITERATIONS})")
    g.add_argument("--refine-time", type=float, help="stop refining an image after this many seconds")
    g.add_argument("--refine-lpips-stop", type=float, metavar="T",
                   help="stop refining an image once its LPIPS falls below T (default: none; pti over StyleGAN3: "
                   "0.06 as stylegan3-editing)")
    g.add_argument("--refine-lr", type=float, help="learning rate (default: optimize 0.02, pti 3e-4)")
    g.add_argument("--refine-noise", action="store_true", help="optimize: also fit the noise maps (regularised)")
    g.add_argument("--refine-lpips", type=float, help="LPIPS weight of the loss; 0 = MSE only (default: 1)")
    g.add_argument("--lpips-weights", help="torchvision AlexNet weights for LPIPS (default: torchvision's cache)")


def prepare_refine(args: argparse.Namespace):
    """Everything ``--refine`` can check before the model loads: the settings, whether the
    checkpoint's family runs the method, the LPIPS weights. ``(config, lpips)``, or None
    after printing the error."""
    from instyle.errors import InstyleError
    from instyle.inference.refine import LOSS_REFINERS, check_refiner_fits, default_refine_config
    from instyle.interop.loading import peek_family
    from instyle.models.iterative import DEFAULT_ITERATIONS
    from instyle.utils.progress import timed

    try:
        if args.full_resolution or args.side_by_side:
            raise ValueError("--refine writes 256 px reconstructions only (no --full-resolution, --side-by-side)")
        if args.refine not in LOSS_REFINERS and (args.refine_steps or 0) > MAX_ITERATIONS:
            raise ValueError(f"--refine-steps={args.refine_steps}: --refine {args.refine} runs the model's iterations, "
                             f"at most {MAX_ITERATIONS}")
        family = peek_family(args.checkpoint)
        steps = args.refine_steps or (None if args.refine in LOSS_REFINERS else DEFAULT_ITERATIONS)
        # the family's published settings (e.g. stylegan3-editing's PTI) under what was typed
        config = default_refine_config(family, args.refine, steps=steps, lr=args.refine_lr,
                                       lpips_weight=args.refine_lpips, lpips_threshold=args.refine_lpips_stop,
                                       optimize_noise=args.refine_noise or None,
                                       time_budget=args.refine_time, seed=args.seed, progress=True)
        check_refiner_fits(args.refine, family)
        lpips = None
        if args.refine in LOSS_REFINERS and config.lpips_weight > 0:
            from instyle.losses.lpips import LPIPSLoss

            hint = ("`instyle encode --refine ... --lpips-weights PATH`, or `--refine-lpips 0` to fit with MSE only "
                    "(blurrier).")
            with timed("loading LPIPS (AlexNet)", "loaded LPIPS"):
                lpips = LPIPSLoss(weights=args.lpips_weights, hint=hint)
    except (InstyleError, ValueError, ImportError, OSError) as e:
        error(str(e))
        return None
    return config, lpips


def run_refine(args: argparse.Namespace, model, items: list, prepare, failed: int, prepared, faces: dict | None = None) -> int:
    """``encode --refine``: the per-image loop lives in :func:`instyle.inference.refine.refine_files`.
    ``prepared``: what :func:`prepare_refine` returned; ``faces``: the aligned faces ``prepare``
    keeps (``--align``)."""
    from instyle.inference.refine import refine_files
    from instyle.interop import CheckpointError
    from instyle.utils.atomic import atomic_write_bytes

    config, lpips = prepared
    try:
        if lpips is not None:
            lpips = lpips.to(next(model.parameters()).device)
        out = Path(args.out)
        summary = refine_files(model, items, out, args.refine, config, prepare, lpips, args.format,
                               args.save_latents, log=lambda m: print(m, file=sys.stderr), grid=args.grid,
                               faces=faces, paste_back=getattr(args, "paste_back", False),
                               blend=getattr(args, "blend", "feather"))
    except (CheckpointError, ValueError, ImportError) as e:
        error(str(e))
        return 2
    summary["failed"] += failed
    summary["checkpoint"] = str(args.checkpoint)
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    print(f"refined {summary['refined']} image(s) with {args.refine} into {out}"
          + (f" ({summary['resumed']} already done)" if summary["resumed"] else "")
          + (f"; {summary['failed']} failed" if summary["failed"] else ""))
    return 1 if summary["failed"] else 0
