"""``instyle serve``: the local web demo and service (Gradio), see ``docs/demo.md``."""

from __future__ import annotations

import argparse

from instyle.cli.common import (
    MAX_ITERATIONS,
    MAX_WORKERS,
    add_count,
    add_device_arg,
    add_precision_args,
    add_sfe_args,
    apply_precision_args,
    error,
)
from instyle.utils.image_file import MAX_PIXELS

DESCRIPTION = """\
Start a local web page where you drop a face photo, sketch or label map and see its
reconstruction, style-mixed variants and an interpolation; the same server answers
programs through Gradio's client API, and GET /healthz reports readiness.

Every --checkpoint is loaded once at start; visitors choose among them by name (never by
path): NAME=PATH names a model, e.g. -c psp=runs/a/checkpoints/latest -c e4e=e4e_ffhq_encode.pt. Without a checkpoint the server runs the quickstart model with RANDOM weights and
says so on the page. Binds to 127.0.0.1 by default; nothing is fetched from the internet.
Needs the demo extra: pip install 'instyle[demo]'.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="start the local web demo and API server",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", "-c", action="append", default=[], metavar="[NAME=]CKPT",
        help="pSp, e4e, ReStyle, HyperStyle, StyleFeatureEditor or ReStyle-over-StyleGAN3 checkpoint (official .pt or instyle "
        "model folder), shown as NAME (default: its file or "
        "folder name); repeat to offer several",
    )  # fmt: skip
    p.add_argument("--w-encoder", metavar="PATH", help="HyperStyle only: the W-encoder checkpoint official HyperStyle files need")
    add_sfe_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    add_count(p, "--port", minimum=0, maximum=65535, default=7860, help="TCP port (default: 7860; 0 = any free port)")
    add_device_arg(p)
    add_precision_args(p)
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MB (default: 10)")
    add_count(p, "--max-pixels", minimum=1, maximum=MAX_PIXELS, default=25_000_000,
              help="largest accepted image in pixels (default: 25000000)")
    add_count(p, "--concurrency", minimum=1, maximum=MAX_WORKERS, default=1, help="model runs at the same time (default: 1)")
    add_count(p, "--queue-size", minimum=1, maximum=10_000, default=64, help="requests allowed to wait (default: 64)")
    add_count(p, "--iterations", minimum=1, maximum=MAX_ITERATIONS, default=None, metavar="N",
              help="ReStyle / HyperStyle refinement steps (default: 5, the originals')")
    p.add_argument("--direction", action="append", default=[], metavar="[NAME=]FILE",
                   help="edit file for the Edit tab (InterFaceGAN/GANSpace .pt, .npy, SeFa .npz); repeatable")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from instyle.demo import ModelStore, ServeSettings
    from instyle.demo.editing import load_edits
    from instyle.errors import InstyleError
    from instyle.interop import CheckpointError
    from instyle.utils.config import ConfigError

    if importlib.util.find_spec("gradio") is None:
        error("`instyle serve` needs the demo extra: pip install 'instyle[demo]'")
        return 2
    try:
        settings = ServeSettings(
            host=args.host,
            port=args.port,
            max_upload_mb=args.max_upload_mb,
            max_pixels=args.max_pixels,
            concurrency=args.concurrency,
            queue_size=args.queue_size,
            device=args.device,
            directions=tuple(args.direction),
        )
        load_edits(settings.directions)  # a bad file fails now, not on the page
        store = ModelStore.from_checkpoints(args.checkpoint, device=args.device, w_encoder=args.w_encoder, e4e=args.e4e,
                                            generator=args.generator)
        if args.iterations is not None:
            store.set_iterations(args.iterations)
        for name in store.names:
            apply_precision_args(store.get(name).model, args)
    except (ConfigError, CheckpointError, ValueError, OSError, InstyleError) as e:
        error(str(e))
        return 2
    from instyle.utils.progress import timed

    with timed("loading the web framework (Gradio)", "loaded Gradio"):
        from instyle.demo.app import serve  # imports Gradio: only once the inputs are known to be good

    serve(settings, store)
    return 0
