"""The inputs of the latent-space commands (``mix``, ``interpolate``, ``edit``): images
(encoded) and latent files (read), each one :class:`Source` holding its
:class:`~instyle.inference.encoding.Encoding`, and their rendering to pictures."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from instyle.errors import InputError, InstyleError
from instyle.inference.encoding import Encoding, encode, load_encoding, render_batches
from instyle.inference.io import InputFile, collect_input_files, output_names, tensor_to_pil
from instyle.inference.pipeline import OutputFolderError, prepare_output_folder
from instyle.inference.preprocess import input_preview, prepare_input
from instyle.inference.refine import generator_delta_applied, referenced_delta
from instyle.utils.progress import Progress

__all__ = ["Source", "load_sources", "plan_sources", "preview", "render_images"]


@dataclass
class Source:
    """One loaded input: its path, a unique output name, its one-image :class:`Encoding`
    (``latents [1, n_styles, D]`` and the family's extra) and a preview of the network input
    (None for latent files)."""

    path: Path
    name: str
    encoding: Encoding
    preview: object | None = None
    generator_delta: dict | None = None  # PTI: the tuned generator its latent file references

    @property
    def w(self) -> torch.Tensor:
        """The W+ code ``[n_styles, D]``."""
        return self.encoding.latents[0]


def _stderr(msg: str) -> None:
    print(f"instyle: {msg}", file=sys.stderr)


def plan_sources(inputs: list[str], expand: bool = True, out=None, outputs=None, reserved=()):
    """``(files, output names, problems)`` for ``inputs``; with ``out`` the output folder is
    excluded from folder scans and checked (it must not be an input folder nor overwrite an input).

    Raises:
        instyle.inference.pipeline.OutputFolderError: one line naming the folder or files.
    """
    if expand:
        files, problems = collect_input_files(inputs, exclude=[out] if out is not None else [], latents=True)
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


def load_sources(
    model, device, inputs: list[str], batch_size: int = 4, expand: bool = True, plan=None,
    log: Callable[[str], None] = _stderr,
) -> tuple[list[Source], int]:
    """Encode images / read latent files. Bad inputs are reported through ``log`` ("skipped
    ...") and counted.

    ``plan`` is a :func:`plan_sources` result (default: planned here without an output folder).

    Returns:
        ``(sources in input order, number of failures)``.
    """
    files, names, problems = plan if plan is not None else plan_sources(inputs, expand)
    for msg in problems:
        log(f"skipped {msg}")
    failed = len(problems)
    shape = (model.n_styles, model.config.generator.style_dim)
    loaded: list[Source | None] = []
    pending: list[tuple[int, Path, str, torch.Tensor]] = []
    for path, name in zip((f.path for f in files), names):
        try:
            if path.suffix.lower() in (".npy", ".npz"):
                enc = load_encoding(path, model)
                if tuple(enc.latents.shape[1:]) != shape:
                    raise InputError(
                        f"latent of shape {tuple(enc.latents.shape)} does not fit this model: it takes [{shape[0]}, {shape[1]}] "
                        f"codes (a file may hold [B, {shape[0]}, {shape[1]}])"
                    )
                enc = enc.to(device)
                delta = referenced_delta(path, enc.meta, model.decoder)  # a PTI code renders on its tuned generator
                # a file of several codes (e.g. mix --save-latents) is one source per code: NAME/0, NAME/1, ...
                for k in range(len(enc)):
                    loaded.append(Source(path, name if len(enc) == 1 else f"{name}/{k}", enc[k], None, delta))
            else:
                pending.append((len(loaded), path, name, prepare_input(path, model.config)))
                loaded.append(None)
        except (InstyleError, OSError) as e:
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            log(f"skipped {msg}")
            failed += 1
    with Progress(len(pending), "encode", "img", enabled=bool(pending)) as bar:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            x = torch.stack([t for *_, t in chunk]).to(device)
            with torch.inference_mode():
                enc = encode(model, x)
            enc = enc.with_latents(enc.latents.float())
            for j, (i, path, name, t) in enumerate(chunk):
                loaded[i] = Source(path, name, enc[j], preview(t, model.config))
            bar.update(len(chunk))
    return [s for s in loaded if s is not None], failed


def preview(x: torch.Tensor, config):
    """A viewable picture of a network input (photo, sketch or label map)."""
    return input_preview(x, config)


def render_images(model, enc: Encoding, full_resolution: bool, batch_size: int, generator_delta=None) -> list:
    """An :class:`Encoding` -> PIL images, ``batch_size`` at a time (256 px unless
    ``full_resolution``); ``generator_delta``: PTI's tuned weights (a :class:`Source`'s),
    rendered on the tuned generator."""
    out = []
    with torch.inference_mode(), generator_delta_applied(model, generator_delta):
        for y in render_batches(model, enc, resize=not full_resolution, batch_size=batch_size):
            out.extend(tensor_to_pil(t) for t in y)
    return out
