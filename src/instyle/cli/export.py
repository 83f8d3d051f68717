"""``instyle export``: a checkpoint -> ONNX graphs (encoder, generator, whole model) + export.json."""

from __future__ import annotations

import argparse

from instyle.cli.common import CHECKPOINT_HELP, MAX_BATCH, MAX_ITERATIONS, add_count, error

DESCRIPTION = """\
Export a checkpoint of any family (pSp, e4e, ReStyle, HyperStyle, StyleFeatureEditor,
ReStyle over StyleGAN3) to ONNX for deployment without instyle or PyTorch (ONNX Runtime,
OpenVINO, TensorRT, ...). OUT receives:

  encoder.onnx    image [B, C, H, W] in [-1, 1] -> w_plus [B, styles, style_dim]
                  (ReStyle: --iterations refinement steps unrolled; HyperStyle: also its
                  per-image generator offsets delta_<layer>; StyleFeatureEditor: also
                  w_e4e and fused_feat, explicit outputs)
  generator.onnx  w_plus and the per-image extras (HyperStyle: delta_<layer>;
                  StyleFeatureEditor: fused_feat, feature_delta; ReStyle over StyleGAN3:
                  transform [B, 3, 3]) -> image [B, 3, S, S]
  model.onnx      image -> reconstruction, one graph
  export.json     source checkpoint and fingerprint, family, input size, normalisation,
                  styles, output size and crop, every graph's inputs/outputs, what to feed
                  the extras, parity

The batch size is dynamic. The generator's stored noise maps are
constants in the graphs (instyle's deterministic output). Every export ends with a parity
check against PyTorch fp32 at batch 1 and 2 (max abs difference printed); an export above
the bound (1e-4, the conformance bound) is refused and nothing is written.
Needs the deploy extra: pip install 'instyle[deploy]'.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (encoder, generator, whole model) with a parity check",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", "-c", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--out", "-o", required=True, help="output folder (created; an earlier export there is replaced)")
    p.add_argument("--w-encoder", metavar="PATH", help="HyperStyle only: the W-encoder checkpoint the model needs")
    add_count(p, "--iterations", minimum=1, maximum=MAX_ITERATIONS, default=None, metavar="N",
              help="ReStyle / HyperStyle / ReStyle over StyleGAN3: refinement steps unrolled into the encoder "
                   "(default: the model's)")
    p.add_argument(
        "--graphs", default="encoder,generator,model", metavar="G[,G]",
        help="which graphs to write: encoder, generator, model (default: all three)",
    )
    add_count(p, "--batch", minimum=1, maximum=MAX_BATCH, default=None, metavar="N",
              help="a fixed batch for a family whose graphs cannot take a dynamic one (none today)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instyle.errors import InstyleError
    from instyle.export import export_onnx
    from instyle.export.onnx import check_graphs
    from instyle.interop import load_psp

    try:
        graphs = check_graphs(tuple(g.strip() for g in args.graphs.split(",") if g.strip()))  # before the load
        model = load_psp(args.checkpoint, device="cpu", w_encoder=args.w_encoder)
        result = export_onnx(
            model, args.out, source=args.checkpoint, iterations=args.iterations, graphs=graphs, batch=args.batch,
            log=lambda msg: print(f"instyle: {msg}", flush=True),  # the parity of each graph: a result (stdout)
        )
    except InstyleError as e:
        error(str(e))
        return 2
    meta = result.metadata
    print(f"wrote {', '.join(g['file'] for g in meta['graphs'].values())} and export.json to {args.out} "
          f"({meta['family']}, input {'x'.join(str(v) for v in meta['input']['shape'][1:])}, {meta['styles']} styles, "
          f"batch {meta['batch']})")
    return 0
