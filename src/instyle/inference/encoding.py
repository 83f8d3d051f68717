"""One encoding type for every family: W+ latents plus whatever the family needs to re-render
them (HyperStyle's per-image generator offsets, StyleFeatureEditor's feature maps, a StyleGAN3
rendering transform), and one ``render``.

Mixing, interpolation, editing and the demo slice, join, blend and move :class:`Encoding`\\ s
without looking inside: the family's :class:`~instyle.models.family.ExtraOps` does that for its
extra. The model turns images into ``(latents, extra)`` (``model.encode_for_render``) and back
(``model.synthesize``)::

    enc = encode(model, x)                 # Encoding: enc.latents [B, n_styles, D], enc.extra
    images = render(model, enc[1:3])       # the 2nd and 3rd images
    edited = enc[0].with_latents(w_edit)   # an edit re-renders on image 0's own extra
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instyle.errors import CheckpointError, InputError
from instyle.inference.editing import edit_codes
from instyle.inference.latents import read_latent_file, save_latent
from instyle.inference.numpy_files import read_numpy_file
from instyle.inference.offsets import check_offsets
from instyle.models.family import family_of, get_family
from instyle.models.sfe import ENCODING_KIND, ENCODING_VERSION, SFEEncoding
from instyle.models.sfe import save_encoding as save_sfe_encoding

__all__ = ["Encoding", "as_encoding", "edit_encoding", "encode", "encode_steps", "load_encoding", "load_sfe_encoding", "render", "render_batches", "save_encoding"]


@dataclass
class Encoding:
    """``latents [B, n_styles, D]`` of a ``family``'s model and its ``extra`` (None: nothing
    else is needed; a batch-1 extra is shared by every latent)."""

    family: str
    latents: torch.Tensor
    extra: Any = None
    #: What the file it was read from says besides (``instyle encode``'s provenance, a PTI
    #: code's tuned-generator reference); kept by ``to``, not carried through slicing or blending.
    meta: dict = field(default_factory=dict, repr=False, compare=False)

    def _ops(self):
        return get_family(self.family).extra_ops

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: int | slice) -> Encoding:
        sl = slice(index, index + 1) if isinstance(index, int) else index
        extra = None if self.extra is None else self._ops().take(self.extra, sl)
        return Encoding(self.family, self.latents[sl], extra)

    def with_latents(self, latents: torch.Tensor) -> Encoding:
        """Other latents (e.g. edits of this image) rendered with this encoding's extra."""
        return Encoding(self.family, latents, self.extra)

    def with_extra(self, extra: Any) -> Encoding:
        """These latents with another extra (e.g. recomputed from the images)."""
        return Encoding(self.family, self.latents, extra)

    def file_suffix(self, meta: dict | None = None) -> str:
        """The suffix :func:`save_encoding` writes this encoding under: ``.npy`` for W+ alone,
        ``.npz`` when the file holds more (the family's extra, a ``meta``)."""
        more = self.extra is not None or bool(meta) or get_family(self.family).encoding == "features"
        return ".npz" if more else ".npy"

    def to(self, device: Any) -> Encoding:
        extra = None if self.extra is None else self._ops().to(self.extra, device)
        return Encoding(self.family, self.latents.to(device), extra, self.meta)

    @staticmethod
    def cat(parts: Sequence[Encoding]) -> Encoding:
        """One encoding of several (one family; all with an extra or none)."""
        family = _one_family(parts)
        extras = [p.extra for p in parts]
        if any(e is None for e in extras) and not all(e is None for e in extras):
            raise ValueError(f"some {family} encodings carry their extra and some do not; give all as images or all as files")
        extra = None if extras[0] is None else get_family(family).extra_ops.cat(extras)
        return Encoding(family, torch.cat([p.latents for p in parts]), extra)

    @staticmethod
    def blend(parts: Sequence[Encoding], weights: torch.Tensor) -> Encoding:
        """``weights [F, n]`` sums of ``n`` one-image encodings: ``F`` encodings (interpolation
        frames), latents and extras alike."""
        family = _one_family(parts)
        if weights.ndim != 2 or weights.shape[1] != len(parts) or any(len(p) != 1 for p in parts):
            raise ValueError(f"blend needs weights [frames, {len(parts)}] and encodings of one image each")
        stack = torch.cat([p.latents for p in parts])
        latents = torch.einsum("fn,n...->f...", weights.to(stack), stack)
        extras = [p.extra for p in parts]
        if any(e is None for e in extras) and not all(e is None for e in extras):
            raise ValueError("some inputs carry their extra (e.g. HyperStyle offsets) and some do not; give all as images or all as files")
        extra = None if extras[0] is None else get_family(family).extra_ops.blend(extras, weights)
        return Encoding(family, latents, extra)


def _one_family(parts: Sequence[Encoding]) -> str:
    families = {p.family for p in parts}
    if len(families) != 1:
        raise ValueError(f"encodings of different families cannot be joined: {sorted(families)}")
    return families.pop()


def encode(model, x: torch.Tensor, iterations: int | None = None) -> Encoding:
    """Images ``[B, C, H, W]`` in [-1, 1] -> their :class:`Encoding` (``iterations``: refinement
    steps of an iterative family, default the model's)."""
    latents, extra = model.encode_for_render(x, iterations=iterations)
    return Encoding(family_of(model).name, latents, extra)


def encode_steps(model, x: torch.Tensor, iterations: int | None = None) -> list[Encoding]:
    """Every refinement step's :class:`Encoding` of images ``x`` (one for a single-pass family),
    the last being :func:`encode`'s."""
    latents, extras = model.encode_for_render(x, iterations=iterations, return_all=True)
    name = family_of(model).name
    return [Encoding(name, w, e) for w, e in zip(latents, extras)]


def render_batches(model, enc: Encoding, resize: bool = False, batch_size: int | None = None) -> Iterator[torch.Tensor]:
    """:func:`render`, one ``[b, 3, H, W]`` batch at a time (for long jobs)."""
    device = model.latent_avg.device
    step = batch_size or max(len(enc), 1)
    for start in range(0, len(enc), step):
        part = enc[start : start + step].to(device)
        yield model.synthesize(part.latents, part.extra, resize=resize)


def render(model, enc: Encoding, resize: bool = False, batch_size: int | None = None) -> torch.Tensor:
    """An :class:`Encoding` -> images ``[B, 3, H, W]`` (raw generator output), ``batch_size``
    at a time (None: all at once); ``resize`` pools to the model's ``resize_to`` (256)."""
    out = list(render_batches(model, enc, resize, batch_size))
    return torch.cat(out) if len(out) != 1 else out[0]


def as_encoding(model, latents: torch.Tensor, extra: Any = None) -> Encoding:
    """``latents`` (and ``extra``) of ``model``'s family as an :class:`Encoding`."""
    return Encoding(family_of(model).name, latents, extra)


def edit_encoding(model, enc: Encoding, steps: Sequence[Sequence[tuple[Any, Any]]], mask: torch.Tensor | None = None) -> Encoding:
    """One image's encoding edited once per entry of ``steps``: each entry is a list of
    ``(edit, EditSpec)`` with one strength each (:mod:`instyle.inference.editing`), applied in
    order. A family with its own editing (``Family.editing``: StyleFeatureEditor's feature
    editor, with the original's strengths) edits there; the others move the W+ code with the
    shared latent edits and re-render it on the image's own extra. Returns ``len(steps)``
    encodings as one (render it for the images, save it for the files).

    ``mask`` (``[1, 1, H, W]`` in [0, 1], 1 = keep unedited): only a family with its own
    editing takes one.

    Raises:
        ValueError: an edit that does not fit the model, or a mask the family cannot use.
    """
    family = get_family(enc.family)
    if len(enc) != 1:
        raise ValueError(f"edit_encoding edits one image's encoding, got {len(enc)}")
    for chain in steps:
        for edit, spec in chain:
            edit.check_fits(model.n_styles, enc.latents.shape[-1])
            if len(spec.strengths) != 1:
                raise ValueError(f"edit {spec.name!r}: one strength per step, got {len(spec.strengths)}")
    if family.editing:
        return importlib.import_module(family.editing).edit_encoding(model, enc, steps, mask=mask)
    if mask is not None:
        raise ValueError(f"a mask keeps regions unedited in a family with its own editing; {family.title} models "
                         "edit the W+ code only (use `instyle edit local --mask` to edit a region of the input)")
    codes = []
    for chain in steps:
        w = enc.latents[0]
        for edit, spec in chain:
            w = edit_codes(w, edit, spec)[0]
        codes.append(w)
    return enc.with_latents(torch.stack(codes))


# --------------------------------------------------------------------------- files
# One save / load for every encoding, by what the family's encodings hold (``Family.encoding``):
# W+ alone or with a transform in the meta -> .npy / .npz latent files; with offsets -> .npz
# latent files with the offsets; with feature maps -> StyleFeatureEditor's .npz encoding files.
# Every file is read through the bounded reader (instyle.inference.numpy_files).


def save_encoding(path: str | os.PathLike, enc: Encoding, meta: dict | None = None) -> Path:
    """Write ``enc`` atomically (the suffix chooses ``.npy`` / ``.npz`` for latent files; an
    encoding with an extra needs ``.npz``). One image's latent file holds ``[n_styles, D]``."""
    kind = get_family(enc.family).encoding
    if kind == "features":
        return save_sfe_encoding(path, enc.extra)
    w = enc.latents.detach().float().cpu()
    w = w[0] if len(enc) == 1 else w
    if enc.extra is None:
        return save_latent(path, w, meta=meta)
    if kind == "offsets":
        return save_latent(path, w, meta=meta, weights_deltas=enc.extra)
    t = enc.extra.detach().float().cpu()  # a transform: kept in the meta, as encode --unaligned writes it
    return save_latent(path, w, meta={**(meta or {}), "transform": t.tolist()})


def load_encoding(path: str | os.PathLike, model) -> Encoding:
    """Read a file :func:`save_encoding` (or ``instyle encode --save-latents``) wrote, for ``model``'s family.

    Raises:
        InputError / CheckpointError: an unreadable or forged file, or one whose extra does not
            fit the model (offsets of another generator, a malformed transform).
    """
    family = family_of(model)
    if family.encoding == "features":
        enc = load_sfe_encoding(path)
        return Encoding(family.name, enc.latents, enc)
    latent = read_latent_file(path)
    extra = latent.deltas
    if extra is not None:
        if family.encoding != "offsets":
            raise InputError("this latent file carries HyperStyle generator offsets; use its HyperStyle model")
        check_offsets(model, extra)
    transform = (latent.meta or {}).get("transform")
    if family.transform and transform is not None:  # encode --unaligned keeps each latent's rendering transform
        extra = torch.as_tensor(transform, dtype=torch.float32)
        if extra.shape != (3, 3) or not bool(torch.isfinite(extra).all()):
            raise InputError(f"the latent's saved transform must be a finite [3, 3] matrix, got shape {tuple(extra.shape)}")
    return Encoding(family.name, latent.w_plus, extra, latent.meta or {})


#: Bounds on an SFE encoding file's arrays (a crafted file must not make us allocate gigabytes).
MAX_ENCODING_ELEMENTS = 1 << 28


def load_sfe_encoding(path: str | os.PathLike) -> SFEEncoding:
    """Read a StyleFeatureEditor encoding file (``instyle.models.sfe.save_encoding``), every
    member sized by the bounded reader before anything is decompressed or allocated.

    Raises:
        CheckpointError: not such a file, a newer version, missing or inconsistent arrays.
    """
    try:
        data = read_numpy_file(path, "SFE encoding file", text=("kind",))
    except InputError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(data, dict) or "kind" not in data or str(data["kind"]) != ENCODING_KIND:
        raise CheckpointError(f"{path}: not an SFE encoding file (no kind={ENCODING_KIND!r})")
    version = data.get("version")
    if version is None or version.size != 1 or version.dtype.kind not in "iu":
        raise CheckpointError(f"{path}: SFE encoding without an integer 'version'")
    if int(version) > ENCODING_VERSION:
        raise CheckpointError(f"{path}: SFE encoding version {int(version)} is newer than {ENCODING_VERSION}; upgrade instyle")
    out = {}
    for k in ("w_recon", "w_e4e", "fused_feat", "w_edit", "edited_feat"):
        if k not in data:
            if k in ("w_e4e", "w_edit", "edited_feat"):
                continue
            raise CheckpointError(f"{path}: SFE encoding lacks {k!r}")
        a = data[k]
        if a.size > MAX_ENCODING_ELEMENTS or a.dtype not in (np.float32, np.float16):
            raise CheckpointError(f"{path}: {k} is {a.dtype} with {a.size} values; expected float32/float16, at most {MAX_ENCODING_ELEMENTS}")
        if not np.isfinite(a).all():
            raise CheckpointError(f"{path}: {k} holds NaN or Inf values")
        out[k] = torch.from_numpy(a.astype(np.float32)).clone()  # own, aligned storage
    enc = SFEEncoding(out["w_recon"], out.get("w_e4e"), out["fused_feat"], out.get("w_edit"), out.get("edited_feat"))
    e4e_ok = enc.w_e4e is None or enc.w_e4e.shape == enc.w_recon.shape
    w_ok = enc.w_edit is None or enc.w_edit.shape == enc.w_recon.shape
    f_ok = enc.edited_feat is None or enc.edited_feat.shape == enc.fused_feat.shape
    if not (enc.w_recon.ndim == 3 and e4e_ok and enc.fused_feat.ndim == 4
            and enc.fused_feat.shape[0] == enc.w_recon.shape[0] and w_ok and f_ok
            and (enc.w_edit is None) == (enc.edited_feat is None)):
        raise CheckpointError(
            f"{path}: inconsistent SFE encoding shapes w_recon {tuple(enc.w_recon.shape)}, w_e4e "
            f"{None if enc.w_e4e is None else tuple(enc.w_e4e.shape)}, fused_feat {tuple(enc.fused_feat.shape)}"
        )
    return enc
