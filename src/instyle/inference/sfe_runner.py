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
from instyle.inference.pasteback import ALIGNED_DIR, INDEX_NAME, PASTED_DIR, face_record, find_alignment, paste_result
from instyle.inference.preprocess import align_input, align_input_face
from instyle.inference.sfe_editing import edit_fn
from instyle.models.sfe import SFE, SFEEncoding, save_encoding
from instyle.utils.atomic import atomic_path
from instyle.utils.image import pil_to_tensor, tensor_to_pil
from instyle.utils.image_file import load_image

__all__ = ["Alignments", "prepare_sfe_input", "load_sfe_source", "render", "encode_sfe_files", "edit_sfe_sources", "SFESource"]

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
    """One input: its path, output name and encoding (batch 1); ``preview`` the image (or None);
    ``face`` the aligned face (crop and quad) when the photo was aligned here."""

    path: Path
    name: str
    encoding: SFEEncoding
    preview: torch.Tensor | None
    face: object = None


def load_sfe_source(model: SFE, path: Path, name: str, align: bool = False) -> list[SFESource]:
    """An image (encoded now; with ``align`` its largest face FFHQ-aligned at the generator's
    size first, as the original's ``run_alignment``) or a saved encoding file (one source per
    code in it)."""
    if path.suffix.lower() == ENCODING_SUFFIX:
        enc = load_encoding(path)
        model._check(enc)
        device = model.latent_avg.device
        enc = SFEEncoding(*(None if t is None else t.to(device) for t in enc._fields()))
        return [SFESource(path, name if len(enc) == 1 else f"{name}/{k}", enc[k], None) for k in range(len(enc))]
    size = model.config.generator.size
    face = align_input_face(path, size=size) if align else None
    x = pil_to_tensor(face.image if face is not None else load_image(path), size)[None].to(model.latent_avg.device)
    return [SFESource(path, name, model.encode(x), x[0], face)]


def render(model: SFE, enc: SFEEncoding, full_resolution: bool = False, size: int = 256):
    """PIL images of an encoding (area-pooled to ``size`` unless ``full_resolution``)."""
    return _images(model, enc, full_resolution, size)[0]


def _images(model: SFE, enc: SFEEncoding, full_resolution: bool = False, size: int = 256):
    """``(images as written, full-size images)`` of an encoding: paste-back uses the full size."""
    y = model.decode(enc)
    full = [tensor_to_pil(t) for t in y]
    if full_resolution or y.shape[-1] == size:
        return full, full
    return [tensor_to_pil(t) for t in F.adaptive_avg_pool2d(y, (size, size))], full


class Alignments:
    """The aligned crops of one job: kept as ``OUT/aligned/<name>.png`` with their records in
    ``OUT/aligned/alignment.json`` (what ``instyle encode --align`` writes for every family), and
    the record of each source name, for pasting results back into the photos."""

    def __init__(self, out: Path, blend: str = "feather"):
        self.out = Path(out)
        self.blend = blend
        self.records: dict[str, dict] = {}
        self.index: dict[str, dict] = {}

    def keep(self, src: SFESource) -> None:
        """Write ``src``'s aligned crop and remember its record (a source aligned here)."""
        if src.face is None:
            return
        save_image(src.face.image, self.out / ALIGNED_DIR / f"{src.name}.png")
        record = face_record(src.face, src.path)
        self.index[f"{src.name}.png"] = record
        self.records[src.name] = {**record, "index": str(self.out / ALIGNED_DIR / INDEX_NAME)}

    def find(self, src: SFESource) -> dict:
        """The record of an input that is itself an aligned crop or the encoding of one.

        Raises:
            PasteBackError: none found.
        """
        if src.name not in self.records:
            self.records[src.name] = find_alignment(src.path)
        return self.records[src.name]

    def paste(self, src: SFESource, image, path: Path) -> None:
        """``image`` (a result of ``src``'s crop, any size) pasted into its photo, written to ``path``."""
        save_image(paste_result(self.records[src.name], image, blend=self.blend), path)

    def close(self) -> None:
        """Write ``alignment.json`` of the crops aligned here (atomically)."""
        if self.index:
            with atomic_path(self.out / ALIGNED_DIR / INDEX_NAME) as tmp:
                tmp.write_text(json.dumps(self.index, indent=1) + "\n")


def encode_sfe_files(
    model: SFE,
    items: Sequence[tuple[Path, str]],
    out: str | Path,
    *,
    save_latents: bool = False,
    full_resolution: bool = False,
    fmt: str = "png",
    align: bool = False,
    paste_back: bool = False,
    log: Callable[[str], None] = print,
    meta: dict | None = None,
    blend: str = "feather",
) -> dict:
    """Encode ``(path, output name)`` items: ``OUT/<name>.<fmt>`` (and with ``save_latents``
    ``OUT/latents/<name>.npz``), ``OUT/summary.json``. With ``align`` the crops are kept in
    ``OUT/aligned/`` with their ``alignment.json``; ``paste_back`` also pastes each (full-size)
    reconstruction into its photo, ``OUT/pasted/<name>.<fmt>`` (``blend``: see
    :mod:`~instyle.inference.pasteback`). Returns the summary."""
    out = Path(out)
    t0 = time.perf_counter()
    records, encoded, failed = [], 0, 0
    aligned = Alignments(out, blend=blend)
    for path, name in items:
        rec = {"input": str(path)}
        try:
            src = load_sfe_source(model, path, name, align)[0]
            (image,), (full,) = _images(model, src.encoding, full_resolution)
            rec["output"] = str(save_image(image, out / f"{name}.{fmt}"))
            if save_latents:
                rec["latents"] = str(save_encoding(out / "latents" / f"{name}{ENCODING_SUFFIX}", src.encoding))
            aligned.keep(src)
            if paste_back and src.face is not None:
                aligned.paste(src, full, out / PASTED_DIR / f"{name}.{fmt}")
                rec["pasted"] = str(out / PASTED_DIR / f"{name}.{fmt}")
            encoded += 1
        except (InstyleError, OSError, ValueError) as e:
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            log(f"skipped {msg}")
            rec["error"] = msg
            failed += 1
        records.append(rec)
    aligned.close()
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
    mask: torch.Tensor | None = None,
    alignments: Alignments | None = None,
) -> list[list]:
    """Each source with each ``(edit, EditSpec)`` at every strength, SFE's way (the strength is
    the original's degree: InterFaceGAN moves by degree / 2, GANSpace sets the coordinate).
    Writes ``<name>_<edit>.<fmt>`` strips, ``<name>/<edit>/strength_*.<fmt>`` and the edited
    encodings ``latents/<name>/<edit>.npz``. Returns the strips' rows (for a grid).

    ``mask`` (``[1, 1, H, W]`` in [0, 1], 1 = keep unedited): the original's ``mask_path``
    (:meth:`SFE.edit <instyle.models.sfe.SFE.edit>`). ``alignments``: sources with a record
    there also get each edited image pasted into their photo, ``pasted/<name>/<edit>/strength_*``."""
    out = Path(out)
    rows = []
    for src in sources:
        paste = alignments is not None and src.name in alignments.records
        for edit, spec in edits:
            encs = [model.edit(src.encoding, edit_fn(edit, s, spec.component), mask=mask) for s in spec.strengths]
            shown = [_images(model, e, full_resolution) for e in encs]
            images = [written[0] for written, _ in shown]
            for s, im, (_, (full,)) in zip(spec.strengths, images, shown):
                rel = Path(src.name) / spec.slug / f"strength_{s:+.3f}.{fmt}"
                save_image(im, out / rel)
                if paste:
                    alignments.paste(src, full, out / PASTED_DIR / rel)
            save_encoding(out / "latents" / src.name / f"{spec.slug}{ENCODING_SUFFIX}", SFEEncoding.cat(encs))
            first = [] if src.preview is None else [tensor_to_pil(F.adaptive_avg_pool2d(src.preview[None], images[0].size[1])[0])]
            row = first + [caption(im, spec.label(s)) for s, im in zip(spec.strengths, images)]
            save_image(make_grid([row], cell=images[0].size[1]), out / f"{src.name}_{spec.slug}.{fmt}")
            rows.append(row)
    return rows
