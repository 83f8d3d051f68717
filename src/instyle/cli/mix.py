"""``instyle mix``: multi-modal synthesis by style mixing (input styles + random styles)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from instyle.cli.common import MAX_BATCH, add_count, add_device_arg, add_precision_args, apply_precision_args, error
from instyle.errors import InputError, InstyleError

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
Writes <out>/<name>.png (input | outputs), outputs/<name>_<k>.<fmt>, grid.png and, with
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


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options shared by the latent-space commands."""
    p.add_argument("--checkpoint", "-c", required=True, help="pSp checkpoint: official .pt or an instyle model folder")
    p.add_argument("--out", "-o", required=True, help="output folder")
    add_count(p, "--batch-size", minimum=1, maximum=MAX_BATCH, default=4, help="images per forward pass (default: 4)")
    add_device_arg(p)
    add_precision_args(p)
    p.add_argument("--full-resolution", action="store_true", help="write the generator's full-size output (default: 256 px)")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="output image format (default: png)")
    p.add_argument("--w-encoder", metavar="PATH", help="HyperStyle only: the W-encoder checkpoint the model needs")
    add_sfe_args(p)


def add_sfe_args(p: argparse.ArgumentParser) -> None:
    """``--e4e`` / ``--generator``: the two files an official StyleFeatureEditor checkpoint needs;
    ``--generator`` alone: the replacement generator of an encoder over StyleGAN3."""
    p.add_argument("--e4e", metavar="PATH", help="StyleFeatureEditor only: the e4e checkpoint (e4e_ffhq_encode.pt)")
    p.add_argument(
        "--generator", metavar="PATH",
        help="StyleFeatureEditor: the StyleGAN2 file (stylegan2-ffhq-config-f.pt); encoders over StyleGAN3: the generator "
        "to decode with instead of the checkpoint's (.pt, NVIDIA .pkl or an instyle folder; see docs/stylegan3.md)",
    )


def sfe_files(args) -> dict:
    """The ``e4e=`` / ``generator=`` keywords of ``load_psp`` from the parsed options."""
    return {"e4e": getattr(args, "e4e", None), "generator": getattr(args, "generator", None)}


@dataclass
class Source:
    """One loaded input: its path, a unique output name, its W+ code ``[n_styles, D]`` and a
    preview of the network input (None for latent files)."""

    path: Path
    name: str
    w: torch.Tensor
    preview: object | None
    offsets: list | None = None  # HyperStyle: this image's generator offsets (batch 1 each)
    transform: torch.Tensor | None = None  # StyleGAN3: the [3, 3] rendering transform saved with the code


def load_model(args, allow_sfe: bool = False):
    """``(model, device)`` or ``None`` after printing the error. StyleFeatureEditor models
    (W+ plus a feature map) only where the command has an SFE path (``allow_sfe``)."""
    from instyle.interop import load_psp
    from instyle.models.family import family_of
    from instyle.utils.device import resolve_device

    if getattr(args, "batch_size", 1) < 1:
        error(f"--batch-size={args.batch_size} must be >= 1")
        return None
    try:
        device = resolve_device(args.device)
        model = load_psp(args.checkpoint, device=device, w_encoder=getattr(args, "w_encoder", None), **sfe_files(args))
        apply_precision_args(model, args)
        family = family_of(model)
        if not family.editable_latents and not allow_sfe:
            error(f"{args.checkpoint}: {family.title} models are used with `instyle encode` and `instyle edit direction`")
            return None
        return model, device
    except (InstyleError, OSError) as e:
        error(str(e))
        return None


def plan_sources(inputs: list[str], expand: bool = True, out=None, outputs=None, reserved=()):
    """``(files, output names, problems)`` for ``inputs``; with ``out`` the output folder is
    excluded from folder scans and checked (it must not be an input folder nor overwrite an input).

    Raises:
        instyle.inference.pipeline.OutputFolderError: one line naming the folder or files.
    """
    from instyle.inference.io import InputFile, collect_input_files, output_names
    from instyle.inference.pipeline import OutputFolderError, prepare_output_folder

    if expand:
        files, problems = collect_input_files(inputs, exclude=[out] if out is not None else [])
    else:
        files, problems = [InputFile(Path(p), Path(p).parent) for p in inputs], []
    outputs = outputs or (lambda name: [name])
    try:
        names = output_names(files, outputs, reserved)
    except ValueError as e:
        if out is not None:
            raise OutputFolderError(str(e)) from None
        names = [f.path.stem for f in files]  # nothing is written per input: the names only label them
    if out is not None:
        prepare_output_folder(out, files, [Path(out) / o for n in names for o in outputs(n)])
    return files, names, problems


def load_sources(model, device, inputs: list[str], batch_size: int = 4, expand: bool = True, plan=None) -> tuple[list[Source], int]:
    """Encode images / read latent files. Bad inputs are reported on stderr and counted.

    ``plan`` is a :func:`plan_sources` result (default: planned here without an output folder).

    Returns:
        ``(sources in input order, number of failures)``.
    """
    from instyle.inference.latents import read_latent_file
    from instyle.inference.offsets import check_offsets, encode_with_offsets, sample_offsets, uses_offsets
    from instyle.inference.preprocess import prepare_input

    files, names, problems = plan if plan is not None else plan_sources(inputs, expand)
    for msg in problems:
        print(f"instyle: skipped {msg}", file=sys.stderr)
    failed = len(problems)
    shape = (model.n_styles, model.config.generator.style_dim)
    loaded: list[Source | None] = []
    pending: list[tuple[int, Path, str, torch.Tensor]] = []
    for path, name in zip((f.path for f in files), names):
        try:
            if path.suffix.lower() in (".npy", ".npz"):
                latent = read_latent_file(path)
                w = latent.w_plus
                transform = _saved_transform(model, latent.meta, device)
                if tuple(w.shape[1:]) != shape:
                    raise InputError(
                        f"latent of shape {tuple(w.shape)} does not fit this model: it takes [{shape[0]}, {shape[1]}] "
                        f"codes (a file may hold [B, {shape[0]}, {shape[1]}])"
                    )
                offsets = latent.deltas
                if offsets is not None and not uses_offsets(model):
                    raise InputError("this latent file carries HyperStyle generator offsets; use its HyperStyle model")
                if offsets is not None:
                    check_offsets(model, offsets)
                offsets = None if offsets is None else [d if d is None else d.to(device) for d in offsets]
                # a file of several codes (e.g. mix --save-latents) is one source per code: NAME/0, NAME/1, ...
                for k, code in enumerate(w):
                    own = None if offsets is None else [d if d is None or d.shape[0] == 1 else d[k : k + 1] for d in offsets]
                    loaded.append(Source(path, name if len(w) == 1 else f"{name}/{k}", code.to(device), None, own, transform))
            else:
                pending.append((len(loaded), path, name, prepare_input(path, model.config)))
                loaded.append(None)
        except (InstyleError, OSError) as e:
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            print(f"instyle: skipped {msg}", file=sys.stderr)
            failed += 1
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        x = torch.stack([t for *_, t in chunk]).to(device)
        with torch.inference_mode():
            w, offsets = encode_with_offsets(model, x)
        for j, ((i, path, name, t), wi) in enumerate(zip(chunk, w.float())):
            loaded[i] = Source(path, name, wi, preview(t, model.config), sample_offsets(offsets, j))
    return [s for s in loaded if s is not None], failed


def _saved_transform(model, meta: dict, device) -> torch.Tensor | None:
    """The ``transform`` ``encode --unaligned`` stores in a latent's meta, for a StyleGAN3 model."""
    from instyle.models.family import family_of

    t = (meta or {}).get("transform")
    if t is None or not family_of(model).transform:
        return None
    t = torch.as_tensor(t, dtype=torch.float32)
    if t.shape != (3, 3) or not bool(torch.isfinite(t).all()):
        raise InputError(f"the latent's saved transform must be a finite [3, 3] matrix, got shape {tuple(t.shape)}")
    return t.to(device)


def preview(x: torch.Tensor, config):
    """A viewable picture of a network input (photo, sketch or label map)."""
    from instyle.inference.preprocess import input_preview

    return input_preview(x, config)


def decode(model, w: torch.Tensor, full_resolution: bool, batch_size: int, offsets=None, transform=None) -> list:
    """W+ codes ``[N, n_styles, D]`` -> PIL images, in batches; ``offsets``: HyperStyle
    generator offsets (batch 1: shared by all codes, or batch N); ``transform``: a StyleGAN3
    model's ``[3, 3]`` rendering transform (``encode --unaligned``)."""
    from instyle.inference.io import tensor_to_pil
    from instyle.inference.offsets import batch_slice, decode_with_offsets

    out = []
    with torch.inference_mode():
        for start in range(0, len(w), batch_size):
            stop = start + batch_size
            if transform is not None:
                y = model.decode(w[start:stop], transform=transform, resize=not full_resolution)
            else:
                y = decode_with_offsets(model, w[start:stop], batch_slice(offsets, start, stop), resize=not full_resolution)
            out.extend(tensor_to_pil(t) for t in y)
    return out


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


def _mix_and_write(model, sources: list[Source], files, mask: list[int], args, failed: int) -> tuple[int, int]:
    """Mix and write every source, then grid.png and summary.json: ``(done, failed)``."""
    from tqdm import tqdm

    from instyle.inference.io import make_grid, save_image
    from instyle.inference.latents import save_latent
    from instyle.inference.mixing import style_mix
    from instyle.inference.pipeline import FATAL_WRITE_ERRNOS
    from instyle.utils.atomic import atomic_write_bytes

    out, outputs = Path(args.out), _mix_outputs(args)
    records = {str(f.path): {"input": str(f.path), "outputs": [], "status": "failed"} for f in files}
    grid_rows, done = [], 0
    for src in tqdm(sources, unit="img", desc="mix", file=sys.stderr, disable=None):
        mixed = style_mix(
            model, src.w[None], args.n_outputs, latent_mask=mask, alpha=args.mix_alpha, seed=args.seed, truncation=args.truncation
        )[0]
        images = decode(model, mixed, args.full_resolution, args.batch_size, src.offsets)
        first = [src.preview] if src.preview is not None else decode(model, src.w[None], args.full_resolution, 1, src.offsets)
        row = first + images
        try:
            for k, im in enumerate(images):
                save_image(im, out / "outputs" / f"{src.name}_{k}.{args.format}")
            save_image(make_grid([row], cell=images[0].size[1]), out / f"{src.name}.{args.format}")
            if args.save_latents:
                save_latent(out / "latents" / f"{src.name}.npy", mixed.cpu())
        except OSError as e:
            tqdm.write(f"instyle: could not write outputs for {src.path}: {e.strerror or e}", file=sys.stderr)
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
