"""``instyle convert``: official pSp / rosinality / NVIDIA files -> instyle's own format."""

from __future__ import annotations

import argparse
import sys
import warnings

from instyle.cli.common import add_sfe_args, companion_files, error

DESCRIPTION = """\
Convert a model file to instyle's own format (a folder with config.json +
model.safetensors), which loads without executing any code and records the
architecture explicitly.

Accepted inputs: official pSp, e4e and ReStyle checkpoints (.pt), rosinality StyleGAN2 checkpoints
(.pt, the g_ema generator), NVIDIA StyleGAN2-ADA pickles (.pkl, read without
running code from the file) and instyle folders. The kind (pSp model or generator)
is detected from the file. Official HyperStyle checkpoints need their W-encoder file
(--w-encoder); the folder written holds both and loads without it. Official
StyleFeatureEditor checkpoints need the e4e and StyleGAN2 files (--e4e, --generator); the
folder written holds all three.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert official/rosinality/NVIDIA files to instyle's safetensors format",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="model file or folder")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument(
        "--kind", choices=["auto", "psp", "generator"], default="auto", help="what to extract (default: auto-detect)"
    )
    p.add_argument("--w-encoder", metavar="PATH", help="HyperStyle only: the W-encoder checkpoint the model needs")
    add_sfe_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instyle.interop import CheckpointError, load_generator, load_psp, save_generator
    from instyle.interop.loading import resolve_path
    from instyle.interop.readers import reader_for
    from instyle.interop.safe_load import safe_torch_load
    from instyle.models.family import model_kinds
    from instyle.models.own_format import is_own_format, read_config

    try:
        src = resolve_path(args.input)
        kind = args.kind
        if kind == "auto":
            if is_own_format(src):
                kind = "psp" if read_config(src)["kind"] in model_kinds() else "generator"
            elif src.suffix == ".pkl":
                kind = "generator"
            else:
                kind = "psp" if reader_for(safe_torch_load(src)) is not None else "generator"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if kind == "psp":  # a model of any family
                model = load_psp(src, **companion_files(args))
                model.save_pretrained(args.out_dir, extra={"converted_from": src.name})
                desc = model.describe()
            else:
                g = load_generator(src)
                save_generator(g, args.out_dir, extra={"converted_from": src.name})
                desc = f"generator: {g.size}px, style_dim {g.style_dim}, {g.n_latent} styles"
        for w in caught:
            print(f"instyle: note: {w.message}", file=sys.stderr)
    except CheckpointError as e:
        error(str(e))
        return 2
    print(f"wrote {args.out_dir} ({desc})")
    return 0
