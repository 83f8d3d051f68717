"""``instyle directions``: compute edit directions from a generator (SeFa)."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from instyle.cli.common import error

DESCRIPTION = """\
Compute latent edit directions from a generator's weights, no data needed.

  instyle directions sefa --generator stylegan2-ffhq.pt --layers 2-5 --out dirs.npz
  instyle edit direction face.jpg -c psp.pt -d dirs.npz --edit sefa:0=-5..5:7

SeFa (closed-form factorisation): the eigenvectors of A^T A, where A stacks the
row-normalised modulation weights of the synthesis convolutions driven by --layers
(0-based W+ style indices, ranges inclusive, or 'all'). Edits move exactly those styles.
--mode e4e reproduces the e4e port's layer handling (convs[l-1] read, style l-1 edited:
one off) for comparisons with its results. The generator is any file instyle loads:
rosinality or official pSp .pt, NVIDIA .pkl, an instyle folder.
Writes an .npz with directions [K, 512] (by decreasing eigenvalue), eigenvalues and layers.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "directions",
        help="compute edit directions from a generator (SeFa)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    s = kinds.add_parser("sefa", help="closed-form factorisation of the modulation weights")
    s.add_argument("--generator", "-g", required=True, help="generator or pSp checkpoint (any format instyle loads)")
    s.add_argument("--layers", default="all", help="0-based styles, e.g. 2-5 or 0,1,4-6, or 'all' (default)")
    s.add_argument("--mode", choices=["styles", "e4e"], default="styles", help="layer indexing (default: styles)")
    s.add_argument("--out", "-o", required=True, help="output .npz")
    s.set_defaults(func=run_sefa)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_sefa(args: argparse.Namespace) -> int:
    from instyle.inference.directions import sefa
    from instyle.inference.mixing import parse_latent_mask
    from instyle.interop import CheckpointError, load_generator

    try:
        layers = None if args.layers == "all" else parse_latent_mask(args.layers)
        if Path(args.out).suffix != ".npz":
            raise ValueError(f"--out {args.out!r}: SeFa directions are written as .npz")
        with warnings.catch_warnings():  # SeFa reads weights only: a missing average latent is no concern
            warnings.simplefilter("ignore")
            generator = load_generator(args.generator, latent_avg_samples=16)
        result = sefa(generator, layers, args.mode)
    except (CheckpointError, ValueError) as e:
        error(str(e))
        return 2
    path = result.save(args.out)
    top = ", ".join(f"{v:.3g}" for v in result.eigenvalues[:5].tolist())
    print(f"wrote {len(result.directions)} SeFa directions for styles {list(result.layers)} to {path}; top eigenvalues {top}")
    return 0
