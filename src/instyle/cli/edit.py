"""``instyle edit``: latent directions, layer-wise style combination and local input edits."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from instyle.cli.common import add_blend_arg, add_count, add_model_args, blend_ready, error, load_model

DESCRIPTION = """\
Three kinds of edits (layer indices are 0-based, ranges inclusive: 0-7, 0,1,4-6):

  instyle edit direction INPUT... --direction smile.npy --strengths=-3..3:7 [--layers 0-7]
      w + s * d for each strength s (start..stop:count or a list); the direction is a .npy of
      shape [512] or [n_styles, 512], or a published InterFaceGAN .pt (age.pt, pose.pt, ...).
  instyle edit direction INPUT... -d age=age.pt -d ffhq_pca.pt --edit age=-3..3:7 --edit ganspace:54,7,8=20
      named edits, each NAME[:COMPONENT]=VALUES (VALUES: a..b:count, a list or one value).
      NAME is the one given with -d NAME=FILE, the file's stem, or a kind when only one file
      of it is loaded (interfacegan, ganspace, sefa). GANSpace (--edit ganspace:IDX,START,END=T)
      moves styles START..END-1 to coordinate T of PCA component IDX, measured on the first
      style, exactly as e4e does; a SeFa file (`instyle directions sefa`) takes sefa:K=VALUES.
      Writes captioned strips <name>_<edit>.png, <name>/<edit>/strength_*.png, grid.png and
      latents/<name>/<edit>.npy [n_values, n_styles, 512].
  instyle edit combine A B --layers 0-3
      A's code with the styles of --layers taken from B (0-3: pose and shape; 4-7:
      features; 8+: colours and fine detail).
  instyle edit local INPUT --labels-from OTHER --classes 13        (label-map models)
  instyle edit local INPUT --box L,T,R,B --set-label 0             (label-map models)
  instyle edit local INPUT --region-from OTHER --box L,T,R,B | --mask M.png
      edit the *input* (a label map, a sketch or a photo) and encode it again, so only that
      part of the face changes: take the region of some classes from another label map,
      paint a box with one class, or copy a box / mask region of another input. Writes the
      edited input, both outputs and a comparison grid.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edit",
        help="edit latents (directions, style combination) or inputs (local editing)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = p.add_subparsers(dest="mode", metavar="MODE")

    d = modes.add_parser("direction", help="apply a latent direction with a range of strengths")
    d.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, globs or latent files")
    add_model_args(d)
    d.add_argument(
        "--direction",
        "-d",
        action="append",
        required=True,
        metavar="[NAME=]FILE",
        help="edit file: .npy [512] or [n_styles, 512], InterFaceGAN .pt, GANSpace PCA .pt, SeFa .npz (repeatable)",
    )
    d.add_argument("--edit", "-e", action="append", metavar="NAME[:COMP]=VALUES", help="named edit, e.g. age=-3..3:7 (repeatable)")
    d.add_argument(
        "--strengths",
        "-s",
        default="-3..3:7",
        help="start..stop:count or a list like -2,0,2 (the syntax of --edit's VALUES); write --strengths=-2,0,2 when "
        "it starts with a minus (default: -3..3:7)",
    )
    d.add_argument("--layers", default=None, help="0-based layers to edit, e.g. 0-7 (default: all)")
    d.add_argument(
        "--paste-back", action="store_true",
        help="also paste every edited face into its original photo (OUT/pasted/...): inputs are crops of "
        "`instyle align` / `encode --align` or latents of `encode --align --save-latents` (StyleFeatureEditor: "
        "also photos aligned here with --align)",
    )
    add_blend_arg(d)
    d.add_argument(
        "--align", action="store_true",
        help="StyleFeatureEditor: FFHQ-align the face of each photo first, as the original (needs dlib); keeps the "
        "crops and their alignment.json in OUT/aligned/; with --paste-back the edits go back into the photos",
    )
    d.add_argument(
        "--mask", metavar="FILE",
        help="StyleFeatureEditor: a square mask of the aligned face, white where the image stays unedited (the "
        "original's mask_path; its learned face parser is not available, see docs/sfe.md); one mask for every input",
    )
    d.set_defaults(func=run_direction)

    c = modes.add_parser("combine", help="take some layers' styles of A from B")
    c.add_argument("inputs", nargs=2, metavar="INPUT", help="A and B: images or latent files")
    add_model_args(c)
    c.add_argument("--layers", required=True, help="0-based layers taken from B, e.g. 0-3")
    c.set_defaults(func=run_combine)

    loc = modes.add_parser("local", help="edit a region of the input (label map, sketch, photo) and re-encode")
    loc.add_argument("input", metavar="INPUT", help="the input image in the model's format")
    add_model_args(loc)
    loc.add_argument("--labels-from", help="label map whose --classes region replaces the input's")
    loc.add_argument("--classes", help="class ids for --labels-from, e.g. 13 or 4,5")
    loc.add_argument("--region-from", help="image whose --box / --mask region is copied into the input")
    loc.add_argument("--box", help="region L,T,R,B in pixels of the input (right/bottom exclusive)")
    loc.add_argument("--mask", help="region as a mask image (non-zero = region), resized to the input")
    add_count(loc, "--set-label", minimum=0, maximum=255, help="paint the --box / --mask region with this class id")
    loc.set_defaults(func=run_local)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _layers(spec: str | None, n_styles: int) -> list[int] | None:
    from instyle.inference.mixing import parse_latent_mask

    return None if spec is None else parse_latent_mask(spec, n_styles)


def _load_edits(specs: list[str], model) -> dict:
    """``[NAME=]FILE`` options -> ``{name: edit}`` (name: the given one or the file's stem)."""
    from instyle.inference.editing import load_edit, named_file

    edits = {}
    for spec in specs:
        name, path = named_file(spec)
        if name in edits:
            raise ValueError(f"two edit files are called {name!r}; name them with -d NAME=FILE")
        edits[name] = load_edit(path, model.n_styles, model.config.generator.style_dim)
    return edits


def _plan(args, model) -> list[tuple[object, object]]:
    """``[(edit, EditSpec)]`` from --edit, or the one direction with --strengths."""
    from instyle.inference.editing import EditSpec, parse_edit, parse_strengths, resolve_edit

    edits = _load_edits(args.direction, model)
    if args.edit:
        specs = [parse_edit(e) for e in args.edit]
        return [(resolve_edit(sp.name, edits), sp) for sp in specs]
    if len(edits) != 1:
        raise ValueError(f"{len(edits)} edit files given: say which to apply with --edit NAME=VALUES")
    (name, edit), = edits.items()
    if edit.kind != "interfacegan":
        raise ValueError(f"{edit.source} is a {edit.kind} file: pick a component with --edit, e.g. {edit.kind}:0=-3..3:7"
                         if edit.kind != "ganspace" else f"{edit.source} is a GANSpace file: use --edit ganspace:IDX,START,END=VALUES")
    return [(edit, EditSpec(name, None, tuple(parse_strengths(args.strengths))))]


def _direction_outputs(args, edits, named: bool):
    """The files ``run_direction`` writes for an input called ``name`` (checked before any work)."""
    fmt = args.format

    def outputs(name: str) -> list[str]:
        files = []
        for _, spec in edits:
            stem, folder = (f"{name}_{spec.slug}", f"{name}/{spec.slug}") if named else (name, name)
            latent = f"latents/{name}/{spec.slug}.npy" if named else f"latents/{name}.npy"
            files += [f"{stem}.{fmt}", latent] + [f"{folder}/strength_{v:+.3f}.{fmt}" for v in spec.strengths]
        return files

    return outputs


def _alignments(sources, failed: int) -> tuple[dict, int]:
    """``({source name: alignment record}, failed)``: a source without one is reported and counted."""
    from instyle.inference.pasteback import PasteBackError, find_alignment
    from instyle.utils.progress import warn

    found = {}
    for src in sources:
        try:
            found[src.name] = find_alignment(src.path)
        except PasteBackError as e:
            warn(f"cannot paste back: {e}")
            failed += 1
    return found, failed


def run_direction(args: argparse.Namespace) -> int:
    from instyle.inference.editing import edit_codes
    from instyle.inference.io import caption, make_grid, save_image
    from instyle.inference.latents import save_latent
    from instyle.inference.pasteback import PASTED_DIR, paste_result
    from instyle.inference.pipeline import OutputFolderError
    from instyle.inference.sources import load_sources, plan_sources, render_images
    from instyle.models.family import family_of
    from instyle.utils.progress import track

    try:  # the values are checked before the long model load
        from instyle.inference.editing import parse_edit, parse_strengths

        _ = [parse_edit(e) for e in args.edit] if args.edit else parse_strengths(args.strengths)
    except ValueError as e:
        error(str(e))
        return 2
    if args.align:
        from instyle.alignment import AlignmentUnavailable
        from instyle.alignment.models import require_dlib

        try:
            require_dlib()
        except AlignmentUnavailable as e:
            error(f"--align needs the face tools (pip install 'instyle[faces]'): {e}")
            return 2
    if not blend_ready(args):
        return 2
    loaded = load_model(args, allow_sfe=True)
    if loaded is None:
        return 2
    model, device = loaded
    if not family_of(model).editable_latents:  # the family's own editing path (StyleFeatureEditor)
        return _run_direction_sfe(args, model)
    if args.align or args.mask:
        error(f"{'--align' if args.align else '--mask'}: StyleFeatureEditor models only; for this model align the photos "
              "first (`instyle align` or `encode --align --save-latents`, then --paste-back), or edit a region of the "
              "input with `instyle edit local --mask`")
        return 2
    try:
        edits = _plan(args, model)
        layers = _layers(args.layers, model.n_styles)
        named = bool(args.edit)
        probe = torch.zeros(model.n_styles, model.config.generator.style_dim)
        for edit, spec in edits:  # every component and layer checked before any input is read
            edit_codes(probe, edit, spec, layers)
    except ValueError as e:
        error(str(e))
        return 2
    try:  # never write into an input folder nor over an input file
        plan = plan_sources(args.inputs, out=args.out, outputs=_direction_outputs(args, edits, named), reserved=["grid.png"])
    except OutputFolderError as e:
        error(str(e))
        return 2
    sources, failed = load_sources(model, device, args.inputs, args.batch_size, plan=plan)
    if not sources:
        error("no usable inputs")
        return 1
    out = Path(args.out)
    rows = []
    alignments, failed = _alignments(sources, failed) if args.paste_back else ({}, failed)
    for src in track(sources, "edit", "img"):
        for edit, spec in edits:
            codes = edit_codes(src.w, edit, spec, layers)
            images = render_images(model, src.encoding.with_latents(codes), args.full_resolution, args.batch_size,
                                   generator_delta=src.generator_delta)
            folder = out / src.name / spec.slug if named else out / src.name
            for s, im in zip(spec.strengths, images):
                save_image(im, folder / f"strength_{s:+.3f}.{args.format}")
                if src.name in alignments:  # the same relative path under pasted/
                    rel = (folder / f"strength_{s:+.3f}.{args.format}").relative_to(out)
                    save_image(paste_result(alignments[src.name], im, blend=args.blend), out / PASTED_DIR / rel)
            stem = f"{src.name}_{spec.slug}" if named else src.name
            save_latent(out / "latents" / (f"{src.name}/{spec.slug}.npy" if named else f"{src.name}.npy"), codes)
            row = ([src.preview] if src.preview is not None else []) + [
                caption(im, spec.label(s)) for s, im in zip(spec.strengths, images)
            ]
            save_image(make_grid([row], cell=images[0].size[1]), out / f"{stem}.{args.format}")
            if len(rows) < 16:
                rows.append(row)
    save_image(make_grid(rows, cell=256), out / "grid.png")
    what = f"{len(edits)} edit(s)" if named else f"{len(edits[0][1].strengths)} strengths"
    print(f"edited {len(sources)} input(s) with {what} into {out}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def _run_direction_sfe(args: argparse.Namespace, model) -> int:
    """StyleFeatureEditor's editing: each value is the original's degree (InterFaceGAN moves by
    degree / 2, GANSpace sets the coordinate); inputs are images or SFE encoding files."""
    import sys

    from instyle.errors import InstyleError
    from instyle.inference.io import make_grid, save_image
    from instyle.inference.pasteback import ALIGNED_DIR, INDEX_NAME, PASTED_DIR, PasteBackError
    from instyle.inference.pipeline import OutputFolderError
    from instyle.inference.sfe_editing import edit_fn, preset_spec, read_mask
    from instyle.inference.sfe_runner import Alignments, edit_sfe_sources, load_sfe_source
    from instyle.inference.sources import plan_sources

    if not model.config.editor:
        error(f"{args.checkpoint}: an SFE inverter (phase 1) has no feature editor and cannot edit; use the editor checkpoint")
        return 2
    if args.layers is not None:
        error("--layers: StyleFeatureEditor edits act on the layers the direction defines (all for InterFaceGAN; "
              "the component's styles for GANSpace)")
        return 2
    try:
        args.edit = [preset_spec(e) for e in args.edit or []]  # the original's GANSpace names
        edits = _plan(args, model)
        probe = torch.zeros(1, model.n_styles, model.config.generator.style_dim)
        for edit, spec in edits:  # every component checked before any input is read
            for s in spec.strengths:
                edit_fn(edit, s, spec.component)(probe)
        mask = read_mask(args.mask) if args.mask else None  # read and checked once, before any input
    except ValueError as e:
        error(str(e))
        return 2

    def outputs(name: str) -> list[str]:
        files = [f"{ALIGNED_DIR}/{name}.png"] if args.align else []
        for _, spec in edits:
            files += [f"{name}_{spec.slug}.{args.format}", f"latents/{name}/{spec.slug}.npz"]
            strip = [f"{name}/{spec.slug}/strength_{v:+.3f}.{args.format}" for v in spec.strengths]
            files += strip + ([f"{PASTED_DIR}/{f}" for f in strip] if args.paste_back else [])
        return files

    try:
        files, names, problems = plan_sources(args.inputs, out=args.out, outputs=outputs,
                                              reserved=["grid.png", f"{ALIGNED_DIR}/{INDEX_NAME}"])
    except OutputFolderError as e:
        error(str(e))
        return 2
    for msg in problems:
        print(f"instyle: skipped {msg}", file=sys.stderr)
    failed, rows, count = len(problems), [], 0
    aligned = Alignments(Path(args.out), blend=args.blend)
    for f, name in zip(files, names):
        try:
            sources = load_sfe_source(model, f.path, name, align=args.align)
            for src in sources:
                aligned.keep(src)  # a photo aligned here: its crop and record
                if args.paste_back and src.face is None:
                    try:
                        aligned.find(src)  # an aligned crop, or the encoding of one
                    except PasteBackError as e:
                        print(f"instyle: warning: cannot paste back: {e}", file=sys.stderr)
                        failed += 1
            rows += edit_sfe_sources(model, sources, edits, args.out, full_resolution=args.full_resolution, fmt=args.format,
                                     mask=mask, alignments=aligned if args.paste_back else None)
            count += len(sources)
        except (InstyleError, OSError, ValueError) as e:
            print(f"instyle: skipped {e if str(f.path) in str(e) else f'{f.path}: {e}'}", file=sys.stderr)
            failed += 1
    aligned.close()
    if not count:
        error("no usable inputs")
        return 1
    save_image(make_grid(rows[:16], cell=256), Path(args.out) / "grid.png")
    print(f"edited {count} input(s) with {len(edits)} edit(s) into {args.out}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def run_combine(args: argparse.Namespace) -> int:
    from instyle.inference.editing import combine_styles
    from instyle.inference.io import make_grid, save_image
    from instyle.inference.sources import load_sources, render_images

    loaded = load_model(args)
    if loaded is None:
        return 2
    model, device = loaded
    try:
        layers = _layers(args.layers, model.n_styles)
    except ValueError as e:
        error(f"--layers: {e}")
        return 2
    sources, failed = load_sources(model, device, args.inputs, args.batch_size, expand=False)
    if len(sources) != 2:
        error("combine needs both inputs A and B")
        return 1
    a, b = sources
    w = combine_styles(a.w, b.w, layers)
    # HyperStyle: A and the combination render on A's tuned generator, B on its own.
    out_a, mixed = render_images(model, a.encoding.with_latents(torch.stack([a.w, w])), args.full_resolution, 2,
                                 generator_delta=a.generator_delta)
    (out_b,) = render_images(model, b.encoding, args.full_resolution, 1, generator_delta=b.generator_delta)
    out = Path(args.out)
    save_image(mixed, out / f"{a.name}_with_{b.name}.{args.format}")
    save_image(make_grid([[out_a, out_b, mixed]]), out / "grid.png")
    print(f"combined {a.name} with layers {args.layers} of {b.name} into {out}")
    return 1 if failed else 0


# --------------------------------------------------------------------------- local editing


def _read(path: str, mode: str | None):
    from instyle.inference.io import load_image

    return load_image(path, mode=mode)


def _region(args, shape: tuple[int, int]) -> np.ndarray | None:
    from PIL import Image

    from instyle.inference.editing import box_mask

    if args.box:
        try:
            box = tuple(int(v) for v in args.box.split(","))
            if len(box) != 4:
                raise ValueError
        except ValueError:
            raise ValueError(f"--box {args.box!r}: give L,T,R,B in pixels") from None
        return box_mask(shape, box)
    if args.mask:
        m = _read(args.mask, "L").resize((shape[1], shape[0]), Image.Resampling.NEAREST)
        return np.asarray(m) > 0
    return None


def _edited_input(args, model):
    """``(original PIL, edited PIL)`` in the input's own mode (palette kept for label maps)."""
    from PIL import Image

    from instyle.inference.editing import label_map_to_array, paint_labels, paste_region, transplant_labels

    is_labels = model.input_spec.label_nc > 1
    original = _read(args.input, None if is_labels else ("L" if model.input_nc == 1 else "RGB"))
    if args.labels_from or args.set_label is not None:
        if not is_labels:
            raise ValueError("--labels-from / --set-label edit label maps; this model takes images (use --region-from)")
        labels = label_map_to_array(original, model.input_spec.label_nc)
        if args.labels_from:
            if not args.classes:
                raise ValueError("--labels-from needs --classes (the class ids whose region to take)")
            other = _read(args.labels_from, None)
            if other.size != original.size:
                other = other.resize(original.size, Image.Resampling.NEAREST)
            classes = [int(c) for c in args.classes.split(",")]
            edited = transplant_labels(labels, label_map_to_array(other, model.input_spec.label_nc), classes)
        else:
            region = _region(args, labels.shape)
            if region is None:
                raise ValueError("--set-label needs a --box or --mask region")
            edited = paint_labels(labels, region, args.set_label)
        img = Image.fromarray(edited.astype(np.uint8), mode="L")
        if original.mode == "P":
            img = img.convert("P")
            img.putpalette(original.getpalette())
        return original, img
    if args.region_from:
        other = _read(args.region_from, original.mode)
        if other.size != original.size:
            other = other.resize(original.size, Image.Resampling.BILINEAR)
        region = _region(args, (original.size[1], original.size[0]))
        if region is None:
            raise ValueError("--region-from needs a --box or --mask region")
        arr = paste_region(np.asarray(original), np.asarray(other), region)
        return original, Image.fromarray(arr, mode=original.mode)
    raise ValueError("say what to edit: --labels-from + --classes, --set-label + --box/--mask, or --region-from + --box/--mask")


def run_local(args: argparse.Namespace) -> int:
    from instyle.inference.io import ImageLoadError, make_grid, save_image, tensor_to_pil
    from instyle.inference.preprocess import prepare_input
    from instyle.inference.sources import preview, render_images

    loaded = load_model(args)
    if loaded is None:
        return 2
    model, device = loaded
    try:
        original, edited = _edited_input(args, model)
        x = torch.stack([prepare_input(original, model.config), prepare_input(edited, model.config)]).to(device)
    except (ImageLoadError, ValueError, OSError) as e:
        error(str(e))
        return 1
    from instyle.inference.encoding import encode

    with torch.inference_mode():
        enc = encode(model, x)
    before, after = render_images(model, enc, args.full_resolution, 2)
    out = Path(args.out)
    name = Path(args.input).stem
    save_image(edited, out / f"{name}_edited_input.png")
    save_image(before, out / f"{name}_output.{args.format}")
    save_image(after, out / f"{name}_edited_output.{args.format}")
    diff = (x[0] != x[1]).any(0).float()[None] * 2 - 1
    row = [preview(x[0], model.config), preview(x[1], model.config), tensor_to_pil(diff), before, after]
    save_image(make_grid([row], cell=min(256, before.size[1])), out / "grid.png")
    changed = float((diff > 0).float().mean()) * 100
    print(f"edited {changed:.1f}% of the input of {name} and re-encoded it; outputs in {out}")
    return 0
