"""``instyle interpolate``: linear interpolation in W+ between two or more inputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from instyle.cli.common import add_count, add_model_args, error, load_model

DESCRIPTION = """\
Encode A, B (and more) and decode w' = lambda * w_A + (1 - lambda) * w_B for lambda from 1
to 0 in --steps frames per segment (A -> B -> C ...; shared endpoints appear once). Inputs
are images or latent files (.npy/.npz). Writes frames/frame_NNNN.<fmt>, grid.png (one row,
at most --grid-frames frames) and an animation (GIF by default; MP4 needs imageio-ffmpeg).
An unreadable input is reported and skipped (exit code 1) as long as two inputs remain.

Latent files of `instyle encode --unaligned` (StyleGAN3) render with their saved transform;
between two of them the 3x3 transforms are blended with the same weights as the codes, as
stylegan3-editing's inversion animation does (a matrix blend, not an angle blend).
"""

#: Most frames per segment (each one a full image).
MAX_STEPS = 1024


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interpolate",
        help="interpolate between encoded images in W+ (frames, grid, GIF/MP4)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="two or more images or latent files (a file of several codes counts as several), in path order")
    add_model_args(p)
    add_count(p, "--steps", minimum=2, maximum=MAX_STEPS, default=8, help="frames per segment, endpoints included (default: 8)")
    p.add_argument("--animation", default="gif", choices=["gif", "webp", "mp4", "none"], help="animation format (default: gif)")
    p.add_argument("--fps", type=float, default=10.0, help="animation frames per second (default: 10)")
    p.add_argument("--boomerang", action="store_true", help="animation plays forward then backward")
    add_count(p, "--grid-frames", minimum=2, maximum=256, default=12, help="most frames shown in grid.png (default: 12)")
    p.add_argument("--save-latents", action="store_true", help="also write latents.npy [frames, n_styles, 512]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instyle.inference.encoding import Encoding
    from instyle.inference.interpolation import interpolate_path, save_animation
    from instyle.inference.io import make_grid, save_image
    from instyle.inference.latents import save_latent
    from instyle.inference.offsets import path_coefficients
    from instyle.inference.refine import blend_generator_deltas
    from instyle.inference.sources import load_sources, render_images
    from instyle.models.family import family_of
    from instyle.utils.progress import Progress

    if args.steps < 2:
        error(f"--steps={args.steps} must be >= 2")
        return 2
    loaded = load_model(args, allow_sfe=True)
    if loaded is None:
        return 2
    model, device = loaded
    if not family_of(model).editable_latents:  # the family's own latent path (StyleFeatureEditor)
        return _run_sfe(args, model)
    sources, failed = load_sources(model, device, args.inputs, args.batch_size, expand=False)
    if len(sources) < 2:
        error(f"only {len(sources)} usable code(s); interpolation needs at least two inputs (A B [C ...]) or a latent file of several codes")
        return 1 if failed else 2
    w = interpolate_path([s.w for s in sources], args.steps)
    ends = [s.encoding for s in sources]
    # Each frame's extra (HyperStyle's generator offsets) follows the same path as its latent.
    coefficients = path_coefficients(len(sources), args.steps)
    out = Path(args.out)
    frames = []
    # PTI: each frame renders on the sources' tuned generators blended by the same weights.
    tuned = any(s.generator_delta is not None for s in sources)
    step = 1 if tuned else args.batch_size
    with Progress(len(w), "interpolate", "frame") as bar:
        for start in range(0, len(w), step):
            stop = start + step
            try:
                enc = Encoding.blend(ends, coefficients[start:stop]).with_latents(w[start:stop])
            except ValueError as e:  # some inputs with their extra (.npz files, images), some without
                error(str(e))
                return 2
            delta = blend_generator_deltas([s.generator_delta for s in sources], coefficients[start].tolist()) if tuned else None
            frames.extend(render_images(model, enc, args.full_resolution, args.batch_size, generator_delta=delta))
            bar.update(stop - start if stop <= len(w) else len(w) - start)
    for i, im in enumerate(frames):
        save_image(im, out / "frames" / f"frame_{i:04d}.{args.format}")
    pick = _spread(len(frames), max(2, args.grid_frames))
    save_image(make_grid([[frames[i] for i in pick]], cell=min(256, frames[0].size[1])), out / "grid.png")
    if args.save_latents:
        save_latent(out / "latents.npy", w.cpu())
    written = f"{len(frames)} frames"
    if args.animation != "none":
        try:
            path = save_animation(frames, out / f"interpolation.{args.animation}", fps=args.fps, boomerang=args.boomerang)
            written += f" and {path.name}"
        except RuntimeError as e:
            error(str(e))
            failed += 1
    print(f"interpolated {len(sources)} inputs: {written} in {out}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def _run_sfe(args: argparse.Namespace, model) -> int:
    """StyleFeatureEditor: latents and feature maps follow the same path; inputs are images
    or SFE encoding files (.npz)."""
    import sys

    from instyle.errors import InstyleError
    from instyle.inference.interpolation import save_animation
    from instyle.inference.io import make_grid, save_image
    from instyle.inference.offsets import path_coefficients
    from instyle.inference.sfe_runner import load_sfe_source, render
    from instyle.models.sfe import SFEEncoding, save_encoding

    sources, failed = [], 0
    for p in map(Path, args.inputs):
        try:
            sources += load_sfe_source(model, p, p.stem)
        except (InstyleError, OSError, ValueError) as e:
            print(f"instyle: skipped {e if str(p) in str(e) else f'{p}: {e}'}", file=sys.stderr)
            failed += 1
    if len(sources) < 2:
        error(f"only {len(sources)} usable input(s); interpolation needs at least two")
        return 1 if failed else 2
    try:
        path = SFEEncoding.blend([s.encoding for s in sources], path_coefficients(len(sources), args.steps))
    except ValueError as e:
        error(str(e))
        return 2
    out = Path(args.out)
    frames = [render(model, path[i], args.full_resolution)[0] for i in range(len(path))]
    for i, im in enumerate(frames):
        save_image(im, out / "frames" / f"frame_{i:04d}.{args.format}")
    pick = _spread(len(frames), max(2, args.grid_frames))
    save_image(make_grid([[frames[i] for i in pick]], cell=min(256, frames[0].size[1])), out / "grid.png")
    if args.save_latents:
        save_encoding(out / "latents.npz", path)
    written = f"{len(frames)} frames"
    if args.animation != "none":
        try:
            anim = save_animation(frames, out / f"interpolation.{args.animation}", fps=args.fps, boomerang=args.boomerang)
            written += f" and {anim.name}"
        except RuntimeError as e:
            error(str(e))
            failed += 1
    print(f"interpolated {len(sources)} inputs: {written} in {out}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def _spread(n: int, k: int) -> list[int]:
    """At most ``k`` indices spread evenly over ``range(n)``, first and last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
