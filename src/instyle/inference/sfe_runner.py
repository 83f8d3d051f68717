"""File-level StyleFeatureEditor jobs (what ``instyle encode`` / ``instyle edit direction`` run
for SFE models): images or saved encodings in, images and encodings out.

SFE's code is W+ plus a feature map, so its "latent file" is an encoding ``.npz``
(:func:`instyle.models.sfe.save_encoding`, read back with :func:`instyle.inference.encoding.load_sfe_encoding`); ``edit`` re-renders from it without the image.
Inputs are read as the original's test transform does: RGB, resized to the generator's size
(bilinear; identity for aligned 1024 px photos), scaled to [-1, 1]. One image at a time;
a bad input is reported and skipped, the others are still processed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from instyle.errors import InstyleError
from instyle.inference.encoding import load_sfe_encoding as load_encoding
from instyle.inference.io import caption, make_grid, save_image
from instyle.inference.preprocess import align_input
from instyle.inference.sfe_editing import edit_fn
from instyle.models.sfe import SFE, SFEEncoding, save_encoding
from instyle.utils.atomic import atomic_path
from instyle.utils.image import pil_to_tensor, tensor_to_pil
from instyle.utils.image_file import load_image

__all__ = ["prepare_sfe_input", "load_sfe_source", "render", "encode_sfe_files", "edit_sfe_sources", "SFESource"]

ENCODING_SUFFIX = ".npz"


def prepare_sfe_input(path: str | Path, model: SFE, align: bool = False) -> torch.Tensor:
    """An image file -> ``[3, S, S]`` in [-1, 1] (``S`` the generator's size; with ``align``
    FFHQ-aligned first)."""
    size = model.config.generator.size
    if align:
        return pil_to_tensor(align_input(path, size=size), size)
    return pil_to_tensor(load_image(path), size)


@dataclass
class SFESource:
    """One input: its path, output name and encoding (batch 1); ``preview`` the image (or None)."""

    path: Path
    name: str
    encoding: SFEEncoding
    preview: torch.Tensor | None


def load_sfe_source(model: SFE, path: Path, name: str, align: bool = False) -> list[SFESource]:
    """An image (encoded now) or a saved encoding file (one source per code in it)."""
    if path.suffix.lower() == ENCODING_SUFFIX:
        enc = load_encoding(path)
        model._check(enc)
        device = model.latent_avg.device
        enc = SFEEncoding(*(None if t is None else t.to(device) for t in enc._fields()))
        return [SFESource(path, name if len(enc) == 1 else f"{name}/{k}", enc[k], None) for k in range(len(enc))]
    x = prepare_sfe_input(path, model, align)[None].to(model.latent_avg.device)
    return [SFESource(path, name, model.encode(x), x[0])]


def render(model: SFE, enc: SFEEncoding, full_resolution: bool = False, size: int = 256):
    """PIL images of an encoding (area-pooled to ``size`` unless ``full_resolution``)."""
    y = model.decode(enc)
    if not full_resolution and y.shape[-1] != size:
        y = F.adaptive_avg_pool2d(y, (size, size))
    return [tensor_to_pil(t) for t in y]


def encode_sfe_files(
    model: SFE,
    items: Sequence[tuple[Path, str]],
    out: str | Path,
    *,
    save_latents: bool = False,
    full_resolution: bool = False,
    fmt: str = "png",
    align: bool = False,
    log: Callable[[str], None] = print,
    meta: dict | None = None,
) -> dict:
    """Encode ``(path, output name)`` items: ``OUT/<name>.<fmt>`` (and with ``save_latents``
    ``OUT/latents/<name>.npz``), ``OUT/summary.json``. Returns the summary."""
    out = Path(out)
    t0 = time.perf_counter()
    records, encoded, failed = [], 0, 0
    for path, name in items:
        rec = {"input": str(path)}
        try:
            src = load_sfe_source(model, path, name, align)[0]
            (image,) = render(model, src.encoding, full_resolution)
            rec["output"] = str(save_image(image, out / f"{name}.{fmt}"))
            if save_latents:
                rec["latents"] = str(save_encoding(out / "latents" / f"{name}{ENCODING_SUFFIX}", src.encoding))
            encoded += 1
        except (InstyleError, OSError, ValueError) as e:
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            log(f"skipped {msg}")
            rec["error"] = msg
            failed += 1
        records.append(rec)
    summary = {"family": "sfe", **(meta or {}), "encoded": encoded, "failed": failed,
               "seconds": round(time.perf_counter() - t0, 3), "files": records}
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def edit_sfe_sources(
    model: SFE,
    sources: Sequence[SFESource],
    edits: Sequence[tuple[object, object]],
    out: str | Path,
    *,
    full_resolution: bool = False,
    fmt: str = "png",
) -> list[list]:
    """Each source with each ``(edit, EditSpec)`` at every strength, SFE's way (the strength is
    the original's degree: InterFaceGAN moves by degree / 2, GANSpace sets the coordinate).
    Writes ``<name>_<edit>.<fmt>`` strips, ``<name>/<edit>/strength_*.<fmt>`` and the edited
    encodings ``latents/<name>/<edit>.npz``. Returns the strips' rows (for a grid)."""
    out = Path(out)
    rows = []
    for src in sources:
        for edit, spec in edits:
            encs = [model.edit(src.encoding, edit_fn(edit, s, spec.component)) for s in spec.strengths]
            images = [render(model, e, full_resolution)[0] for e in encs]
            for s, im in zip(spec.strengths, images):
                save_image(im, out / src.name / spec.slug / f"strength_{s:+.3f}.{fmt}")
            save_encoding(out / "latents" / src.name / f"{spec.slug}{ENCODING_SUFFIX}", SFEEncoding.cat(encs))
            first = [] if src.preview is None else [tensor_to_pil(F.adaptive_avg_pool2d(src.preview[None], images[0].size[1])[0])]
            row = first + [caption(im, spec.label(s)) for s, im in zip(spec.strengths, images)]
            save_image(make_grid([row], cell=images[0].size[1]), out / f"{src.name}_{spec.slug}.{fmt}")
            rows.append(row)
    return rows
