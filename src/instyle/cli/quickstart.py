"""``instyle quickstart``: the whole pipeline on a random-weight model, with no downloads."""

from __future__ import annotations

import argparse
from pathlib import Path

from instyle.cli.common import MAX_INPUTS, add_count

DESCRIPTION = """\
Run the main job end to end without any downloaded weights:

  1. write a small pSp model with deterministic RANDOM weights (NOT a trained model:
     its outputs are abstract textures, not faces) in instyle's own format,
  2. encode the face photos in ../shared/data/faces/ when that folder exists, else the
     bundled public-domain sample (astronaut.png), and
  3. write the reconstructions, their W+ latents and a grid.

With a real checkpoint (see README), use `instyle encode --checkpoint CKPT ...` instead.
"""

DEFAULT_PHOTOS = Path("..") / "shared" / "data" / "faces"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="run the pipeline on a random-weight model (no downloads)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", "-o", default="outputs/quickstart", help="output folder (default: outputs/quickstart)")
    p.add_argument("--photos", default=None, help=f"photos to encode (default: {DEFAULT_PHOTOS} if present, else the bundled sample)")
    p.add_argument("--config", default="quickstart", help="registered model config (default: quickstart)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    add_count(p, "--limit", minimum=0, maximum=MAX_INPUTS, default=24, help="encode at most this many photos (default: 24; 0 = all)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib.resources as resources

    from instyle.cli.encode import register as encode_register
    from instyle.cli.encode import run as encode_run
    from instyle.inference.io import collect_inputs
    from instyle.models import get_config
    from instyle.models.init import random_psp

    out = Path(args.out)
    model_dir = out / "model"
    print("=" * 78)
    print("instyle quickstart: this model has RANDOM weights. It is NOT a trained pSp model;")
    print("its outputs are abstract textures, not faces. Use a published checkpoint for real results.")
    print("=" * 78)
    model = random_psp(get_config(args.config), seed=args.seed)
    model.save_pretrained(model_dir, extra={"note": "random weights, NOT a trained model", "seed": args.seed})
    print(f"wrote random-weight model ({args.config}, seed {args.seed}) to {model_dir}")

    if args.photos:
        inputs = [args.photos]
    elif DEFAULT_PHOTOS.is_dir():
        inputs = [str(DEFAULT_PHOTOS)]
    else:
        inputs = [str(resources.files("instyle") / "assets" / "astronaut.png")]
    paths, _ = collect_inputs(inputs)
    if args.limit and len(paths) > args.limit:
        paths = paths[: args.limit]
    print(f"encoding {len(paths)} photo(s) from {inputs[0]}")
    # the encode command's own parser: every option it has gets its default
    parser = argparse.ArgumentParser(prog="instyle")
    encode_register(parser.add_subparsers())
    ns = parser.parse_args(
        ["encode", *([str(p) for p in paths] or inputs), "--checkpoint", str(model_dir), "--out", str(out / "results"),
         "--device", args.device, "--save-latents", "--grid", "--seed", str(args.seed)]
    )
    rc = encode_run(ns)
    print(f"results: {out / 'results'} (<name>.png reconstructions, grid.png, latents/<name>.npy, summary.json)")
    return rc
