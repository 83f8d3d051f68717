"""``instyle encode``: images -> W+ latents -> reconstructions, for files, folders and globs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from instyle.cli.common import add_device_arg, error
from instyle.errors import InputError, InstyleError

DESCRIPTION = """\
Encode images with a pSp checkpoint and write the reconstructions (and optionally the
W+ latents). Inputs are files, folders (searched recursively) or glob patterns.
Photos are prepared like the original test transforms (resize to 256x256 bilinear,
normalise to [-1, 1]); sketches, label maps, low-resolution or masked inputs are
prepared according to the checkpoint's task.

Bad inputs (corrupt, truncated, non-image, too small or too large files) are reported
one line each and skipped; the other files are still processed and the exit code is 1
when anything failed. Outputs are written atomically. Results are deterministic
(stored noise maps, --seed for anything random).

Large folders stream: images are decoded in background threads while the model
runs, outputs are written by a background thread, and memory stays flat. Under
`torchrun --nproc_per_node=N -m instyle.cli.main encode ...` each process takes
every N-th image (one GPU per process when --device is cuda).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="encode images into W+ and write reconstructions",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--checkpoint", "-c", required=True, help="pSp checkpoint: official .pt or an instyle model folder")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: 4)")
    add_device_arg(p)
    p.add_argument("--save-latents", action="store_true", help="also write latents/<name>.npy, float32 [n_styles, 512]")
    p.add_argument(
        "--full-resolution", action="store_true", help="write the generator's full-size output (default: 256 px like the original)"
    )
    p.add_argument("--side-by-side", action="store_true", help="write input | output pairs instead of outputs alone")
    p.add_argument("--grid", action="store_true", help="also write grid.png with input | output rows (first 16 images)")
    p.add_argument("--align", action="store_true", help="FFHQ-align faces in the inputs first (needs dlib; see `instyle align`)")
    p.add_argument("--seed", type=int, default=0, help="seed for anything random (default: 0)")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="output image format (default: png)")
    p.set_defaults(func=run)


def _unique_names(paths: list[Path]) -> list[str]:
    """Output stems that never collide (``a``, ``a_1``, ...)."""
    used: dict[str, int] = {}
    names = []
    for p in paths:
        stem = p.stem
        n = used.get(stem, 0)
        used[stem] = n + 1
        names.append(stem if n == 0 else f"{stem}_{n}")
    return names


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from instyle.inference.io import collect_inputs, make_grid, save_image, tensor_to_pil
    from instyle.inference.latents import save_latent
    from instyle.inference.pipeline import BackgroundWriter, prefetch_batches, shard, world
    from instyle.inference.preprocess import input_preview, prepare_input
    from instyle.interop import CheckpointError, load_psp
    from instyle.utils.device import resolve_device

    if args.batch_size < 1:
        error(f"--batch-size={args.batch_size} must be >= 1")
        return 2
    rank, world_size = world()
    try:
        device = resolve_device(args.device)
        if world_size > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    except InstyleError as e:
        error(str(e))
        return 2
    torch.manual_seed(args.seed)
    if device.type == "cpu":
        from instyle.ops.fast_memory import retain_freed_memory

        retain_freed_memory()  # a batch job: reuse freed large blocks (INSTYLE_MALLOC=default opts out)
    try:
        model = load_psp(args.checkpoint, device=device)
    except CheckpointError as e:
        error(str(e))
        return 2

    paths, problems = collect_inputs(args.inputs)
    for msg in problems if rank == 0 else []:
        print(f"instyle: skipped {msg}", file=sys.stderr)
    failed = len(problems) if rank == 0 else 0
    if not paths:
        error("no input images found")
        return 1

    align = None
    if args.align:
        from instyle.alignment import AlignmentUnavailable
        from instyle.alignment.models import require_dlib
        from instyle.inference.preprocess import align_input

        try:
            require_dlib()
        except AlignmentUnavailable as e:
            error(f"--align needs the face tools (pip install 'instyle[faces]'): {e}")
            return 2
        align = align_input

    def prepare(item):
        path, _name = item
        try:
            return prepare_input(align(path, model.input_size) if align else path, model.config)
        except (InstyleError, OSError) as e:
            raise InputError(str(e) if str(path) in str(e) else f"{path}: {e}") from None

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Names are fixed over the whole input list, so every torchrun process agrees on them.
    items = shard(list(zip(paths, _unique_names(paths))))
    grid_rows = []
    encoded = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(items), unit="img", desc="encode", file=sys.stderr, disable=None if rank == 0 else True)
    with BackgroundWriter() as writer:
        for batch in prefetch_batches(items, prepare, args.batch_size, errors=(InputError,)):
            for _item, msg in batch.failures:
                tqdm.write(f"instyle: skipped {msg}", file=sys.stderr)
            failed += len(batch.failures)
            if batch.tensors is not None:
                x = batch.tensors.to(device)
                encoded += len(batch.items)
                with torch.inference_mode():
                    w = model.encode(x)
                    y = model.decode(w, resize=not args.full_resolution)
                for (path, name), xi, yi, wi in zip(batch.items, x, y, w):
                    recon = tensor_to_pil(yi)
                    want_grid = args.grid and len(grid_rows) < 16
                    preview = input_preview(xi, model.config) if args.side_by_side or want_grid else None
                    out_img = make_grid([[preview, recon]], cell=recon.size[1], pad=0) if args.side_by_side else recon
                    writer.submit(save_image, out_img, out / f"{name}.{args.format}", tag=path)
                    if args.save_latents:
                        writer.submit(save_latent, out / "latents" / f"{name}.npy", wi.float().cpu(), tag=path)
                    if want_grid:
                        grid_rows.append([preview, recon])
            bar.update(len(batch.items) + len(batch.failures))
    bar.close()
    bad_paths = {str(tag) for tag, _ in writer.errors}
    for tag, e in writer.errors:
        print(f"instyle: could not write output for {tag}: {e}", file=sys.stderr)
    failed += len(bad_paths)
    done = encoded - len(bad_paths)
    elapsed = time.perf_counter() - t0
    suffix = "" if world_size == 1 else f"_rank{rank}"
    if grid_rows:
        save_image(_pair_grid(grid_rows), out / f"grid{suffix}.png")
    summary = {
        "checkpoint": str(args.checkpoint),
        "device": str(device),
        "encoded": done,
        "failed": failed,
        "seconds": round(elapsed, 3),
        "images_per_second": round(done / elapsed, 3) if elapsed > 0 else None,
        "output_size": model.output_size if args.full_resolution else model.config.resize_to,
        "rank": rank,
        "world_size": world_size,
    }
    (out / f"summary{suffix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"encoded {done} image(s) into {out} in {elapsed:.1f}s" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def _pair_grid(pairs: list[list]):
    """Input|output pairs laid out four pairs per row."""
    from instyle.inference.io import make_grid

    rows = [sum(pairs[i : i + 4], []) for i in range(0, len(pairs), 4)]
    return make_grid(rows, cell=256)
