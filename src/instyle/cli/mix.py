"""``instyle mix``: multi-modal synthesis by style mixing (input styles + random styles)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from instyle.cli.common import add_count, add_model_args, error, load_model

DESCRIPTION = """\
For each input, write N outputs that keep the input's styles on some layers and take the
others from random styles (z drawn with --seed, mapped through StyleGAN2's mapping network,
optionally truncated toward the mean w by --truncation).

--latent-mask lists the layers taken from the random styles, 0-BASED and inclusive, exactly
like the original's --latent_mask. The default 8-17 is the original's published command
(--latent_mask=8,9,...,17 for 1024 px; 8 to the last layer for other sizes): the input keeps
layers 0-7, the random style supplies layers 8-17. The paper's text words this in 1-based
counting as "layers 1-7 from the input, 8-18 random" (one off from the command); instyle
follows the command, and every index here is 0-based.

--mix-alpha A blends instead of replacing, as the original's --mix_alpha:
  w[i] = A * random[i] + (1 - A) * input[i]   for i in the mask.
For super-resolution the paper mixes the medium layers with --latent-mask 4-7 --mix-alpha 0.5.

Inputs are images (prepared for the checkpoint's task) or latent files (.npy/.npz from
`instyle encode --save-latents`). Output k of every input uses the same random style.
A latent file of `instyle encode --unaligned` (StyleGAN3) renders every output with its
saved transform. Writes <out>/<name>.png (input | outputs), outputs/<name>_<k>.<fmt>, grid.png and, with
--save-latents, latents/<name>.npy [N, n_styles, 512]. Bad inputs are reported and skipped
(exit code 1 at the end).
"""

#: Most outputs per input (each one a full image).
MAX_OUTPUTS = 256


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mix",
        help="multi-modal synthesis: mix input styles with random styles",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, globs or latent files (.npy/.npz)")
    add_model_args(p)
    add_count(p, "--n-outputs", "-n", minimum=1, maximum=MAX_OUTPUTS, default=5, help="outputs per input (default: 5)")
    p.add_argument(
        "--latent-mask",
        default=None,
        help="0-based layers taken from the random style, e.g. 8-17 or 0,1,4-6 (default: 8 to the last layer)",
    )
    p.add_argument("--mix-alpha", type=float, default=None, help="blend weight of the random style in [0, 1] (default: replace)")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi of the random styles (default: 1 = none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random styles (default: 0)")
    p.add_argument("--save-latents", action="store_true", help="also write latents/<name>.npy [N, n_styles, 512]")
    p.set_defaults(func=run)


def _mix_outputs(args) -> Callable[[str], list[str]]:
    """The files ``mix`` writes for the input named ``name`` (relative to --out)."""

    def outputs(name: str) -> list[str]:
        files = [f"{name}.{args.format}"] + [f"outputs/{name}_{k}.{args.format}" for k in range(args.n_outputs)]
        return files + ([f"latents/{name}.npy"] if args.save_latents else [])

    return outputs


def _check_args(args) -> bool:
    for bad, msg in (
        (args.n_outputs < 1, f"--n-outputs={args.n_outputs} must be >= 1"),
        (args.mix_alpha is not None and not 0.0 <= args.mix_alpha <= 1.0, f"--mix-alpha={args.mix_alpha} must be in [0, 1]"),
        (not 0.0 <= args.truncation <= 1.0, f"--truncation={args.truncation} must be in [0, 1]"),
    ):
        if bad:
            error(msg)
            return False
    return True


def run(args: argparse.Namespace) -> int:
    from instyle.inference.mixing import default_latent_mask, parse_latent_mask
    from instyle.inference.pipeline import OutputFolderError
    from instyle.inference.sources import load_sources, plan_sources

    if not _check_args(args):
        return 2
    loaded = load_model(args)
    if loaded is None:
        return 2
    model, device = loaded
    try:
        mask = parse_latent_mask(args.latent_mask, model.n_styles) if args.latent_mask else default_latent_mask(model.n_styles)
    except ValueError as e:
        error(f"--latent-mask: {e}")
        return 2
    try:
        plan = plan_sources(args.inputs, out=args.out, outputs=_mix_outputs(args), reserved=["grid.png", "summary.json"])
    except OutputFolderError as e:
        error(str(e))
        return 2
    sources, failed = load_sources(model, device, args.inputs, args.batch_size, plan=plan)
    if not sources:
        error("no usable inputs")
        return 1
    done, failed = _mix_and_write(model, sources, plan[0], mask, args, failed)
    alpha = "replace" if args.mix_alpha is None else f"alpha {args.mix_alpha}"
    print(
        f"mixed {done} input(s) x {args.n_outputs} outputs into {args.out} "
        f"(layers {_span(mask)} random, {alpha}, seed {args.seed})" + (f"; {failed} failed" if failed else "")
    )
    return 1 if failed else 0


def _mix_and_write(model, sources: list, files, mask: list[int], args, failed: int) -> tuple[int, int]:
    """Mix and write every source, then grid.png and summary.json: ``(done, failed)``."""
    from instyle.inference.io import make_grid, save_image
    from instyle.inference.latents import save_latent
    from instyle.inference.mixing import style_mix
    from instyle.inference.pipeline import FATAL_WRITE_ERRNOS
    from instyle.inference.sources import render_images
    from instyle.utils.atomic import atomic_write_bytes
    from instyle.utils.progress import track, warn

    out, outputs = Path(args.out), _mix_outputs(args)
    records = {str(f.path): {"input": str(f.path), "outputs": [], "status": "failed"} for f in files}
    grid_rows, done = [], 0
    for src in track(sources, "mix", "img"):
        mixed = style_mix(
            model, src.w[None], args.n_outputs, latent_mask=mask, alpha=args.mix_alpha, seed=args.seed, truncation=args.truncation
        )[0]
        images = render_images(model, src.encoding.with_latents(mixed), args.full_resolution, args.batch_size,
                               generator_delta=src.generator_delta)
        first = [src.preview] if src.preview is not None else render_images(
            model, src.encoding, args.full_resolution, 1, generator_delta=src.generator_delta
        )
        row = first + images
        try:
            for k, im in enumerate(images):
                save_image(im, out / "outputs" / f"{src.name}_{k}.{args.format}")
            save_image(make_grid([row], cell=images[0].size[1]), out / f"{src.name}.{args.format}")
            if args.save_latents:
                save_latent(out / "latents" / f"{src.name}.npy", mixed.cpu())
        except OSError as e:
            warn(f"could not write outputs for {src.path}: {e.strerror or e}")
            failed += 1
            if e.errno in FATAL_WRITE_ERRNOS:
                break
            continue
        records[str(src.path)].update(outputs=outputs(src.name), status="mixed")
        done += 1
        if len(grid_rows) < 16:
            grid_rows.append(row)
    try:
        if grid_rows:
            save_image(make_grid(grid_rows, cell=256), out / "grid.png")
        summary = {"mixed": done, "failed": failed, "n_outputs": args.n_outputs, "files": list(records.values())}
        atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    except OSError as e:
        error(f"could not write {out / 'summary.json'} or grid.png: {e.strerror or e}")
        failed += 1
    return done, failed


def _span(mask: list[int]) -> str:
    """``[8, 9, 10, 12]`` -> ``"8-10,12"`` (0-based)."""
    parts, start = [], None
    for i, v in enumerate(mask):
        if start is None:
            start = v
        if i + 1 == len(mask) or mask[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(parts) or "none"
