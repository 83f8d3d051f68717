"""StyleFeatureEditor's edits, as its original defines them (``editings/latent_editor.py``).

An SFE edit is a function from a W+ batch to its edited W+ batch; :meth:`SFE.edit
<instyle.models.sfe.SFE.edit>` applies it to both the inverter's and the e4e latents.

* InterFaceGAN (``age.pt``, ``smile.pt``, any direction file): ``w + degree / 2 * direction``
  (the original halves the degree).
* GANSpace (``ffhq_pca.pt``): the degree **replaces** the preset's strength and is the target
  coordinate along the component (measured on style 0), set on the preset's styles; degree 0
  is not "no edit".

Named edits: an InterFaceGAN name is looked up as ``NAME.pt`` in an edits folder; a GANSpace
preset name (:data:`GANSPACE_PRESETS`) uses the folder's ``ffhq_pca.pt`` (``cars_pca.pt``
for :data:`CARS_GANSPACE_PRESETS`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from instyle.errors import InputError
from instyle.inference.editing import GANSpacePCA, LatentDirection, load_edit
from instyle.inference.encoding import Encoding
from instyle.models.sfe import SFEEncoding
from instyle.utils.image_file import load_image

__all__ = [
    "GANSPACE_PRESETS",
    "CARS_GANSPACE_PRESETS",
    "interfacegan_fn",
    "ganspace_fn",
    "edit_fn",
    "named_edit_fn",
    "preset_spec",
    "edit_encoding",
    "read_mask",
    "MAX_MASK_SIDE",
]

EditFn = Callable[[torch.Tensor], torch.Tensor]

#: The original's face GANSpace presets: name -> (component, first style, end style). Their
#: preset strengths are not used: the degree replaces them.
GANSPACE_PRESETS: dict[str, tuple[int, int, int]] = {
    "eye_openness": (54, 7, 8),
    "trimmed_beard": (58, 7, 9),
    "lipstick": (34, 10, 11),
    "face_roundness": (37, 0, 5),
    "nose_length": (51, 4, 5),
    "eyebrow_thickness": (37, 8, 9),
    "head_angle_up": (11, 1, 4),
    "displeased": (36, 4, 7),
}
#: The original's cars presets (``cars_pca.pt``).
CARS_GANSPACE_PRESETS: dict[str, tuple[int, int, int]] = {
    "pose_1": (0, 0, 5), "pose_2": (0, 0, 5), "cube": (16, 3, 6), "color": (22, 9, 11), "grass": (41, 9, 11),
}


def interfacegan_fn(direction: torch.Tensor, degree: float) -> EditFn:
    """``w + degree / 2 * direction`` (``direction [D]``, ``[1, D]`` or ``[n_styles, D]``)."""
    d = torch.as_tensor(direction, dtype=torch.float32)
    if d.ndim == 1:
        d = d[None]

    def fn(w: torch.Tensor) -> torch.Tensor:
        return w + degree / 2 * d.to(w)

    return fn


def ganspace_fn(pca: GANSpacePCA, component: tuple[int, int, int], degree: float) -> EditFn:
    """Set coordinate ``component[0]`` (measured on style 0) to ``degree`` on styles
    ``component[1] .. component[2] - 1`` of each code in the batch."""

    def fn(w: torch.Tensor) -> torch.Tensor:
        return torch.stack([pca.edit(code, [degree], component)[0] for code in w])

    return fn


def edit_fn(edit, degree: float, component: tuple[int, ...] | None = None) -> EditFn:
    """The SFE edit function of a loaded edit (:func:`instyle.inference.editing.load_edit`)."""
    if isinstance(edit, LatentDirection):
        if component:
            raise ValueError(f"{edit.source}: an InterFaceGAN direction takes no component, got {component}")
        return interfacegan_fn(edit.vector, degree)
    if isinstance(edit, GANSpacePCA):
        if component is None or len(component) != 3:
            raise ValueError(f"{edit.source}: a GANSpace edit needs idx,start,end (e.g. 37,0,5), got {component}")
        return ganspace_fn(edit, tuple(int(c) for c in component), degree)
    raise ValueError(f"{getattr(edit, 'source', edit)}: SFE edits take InterFaceGAN directions or GANSpace PCA files, not {type(edit).__name__}")


def preset_spec(spec: str) -> str:
    """``face_roundness=12`` (a GANSpace preset of the original) -> ``ganspace:37,0,5=12``;
    any other edit spec unchanged."""
    name, sep, values = spec.partition("=")
    presets = {**CARS_GANSPACE_PRESETS, **GANSPACE_PRESETS}
    if sep and name.strip() in presets:
        return f"ganspace:{','.join(map(str, presets[name.strip()]))}={values}"
    return spec


def named_edit_fn(name: str, degree: float, edits_dir: str | os.PathLike) -> EditFn:
    """An edit of the original's vocabulary by name: ``NAME.pt`` in ``edits_dir`` (InterFaceGAN)
    or a GANSpace preset (:data:`GANSPACE_PRESETS` with ``ffhq_pca.pt``, cars presets with
    ``cars_pca.pt``)."""
    folder = Path(edits_dir)
    direction = folder / f"{name}.pt"
    if direction.is_file():
        return edit_fn(load_edit(direction), degree)
    for presets, file in ((GANSPACE_PRESETS, "ffhq_pca.pt"), (CARS_GANSPACE_PRESETS, "cars_pca.pt")):
        if name in presets:
            pca = load_edit(folder / file)
            return edit_fn(pca, degree, presets[name])
    raise ValueError(
        f"SFE edit {name!r}: no {direction.name} in {folder} and not a GANSpace preset "
        f"({', '.join(sorted(GANSPACE_PRESETS))})"
    )


def _chain(fns: list[EditFn]) -> EditFn:
    def fn(w: torch.Tensor) -> torch.Tensor:
        for f in fns:
            w = f(w)
        return w

    return fn


def edit_encoding(model, enc, steps, mask: torch.Tensor | None = None):
    """StyleFeatureEditor's own editing behind :func:`instyle.inference.encoding.edit_encoding`:
    one :meth:`SFE.edit <instyle.models.sfe.SFE.edit>` of the image's inversion per entry of
    ``steps`` (its ``(edit, EditSpec)`` pairs composed in order, each strength the original's
    degree), with the optional ``mask`` (1 = keep unedited). Returns one ``Encoding`` whose
    extra is the edited :class:`~instyle.models.sfe.SFEEncoding` of every step."""
    device = model.latent_avg.device
    source = enc.to(device).extra
    if mask is not None:
        mask = mask.to(device)
    edited = [model.edit(source, _chain([edit_fn(e, sp.strengths[0], sp.component) for e, sp in chain]), mask=mask)
              for chain in steps]
    out = SFEEncoding.cat(edited)
    return Encoding(enc.family, out.latents, out)


#: Largest side of a user mask in pixels (the original's masks are the 1024 px aligned face's).
MAX_MASK_SIDE = 4096


def read_mask(path: str | os.PathLike) -> torch.Tensor:
    """A user mask file -> ``[1, 1, S, S]`` in [0, 1] (white = keep unedited), read as the
    original reads ``mask_path``: RGB, first channel, scaled to [0, 1]. The image is sized from
    its header before it is decoded.

    Raises:
        InputError: not a readable image, not square, or larger than :data:`MAX_MASK_SIDE`.
    """
    try:
        image = load_image(path, mode="RGB", max_pixels=MAX_MASK_SIDE * MAX_MASK_SIDE)
    except (OSError, ValueError) as e:
        raise InputError(f"--mask {path}: {e}") from None
    w, h = image.size
    if w != h:
        raise InputError(f"--mask {path}: the mask must be square like the aligned face it covers, got {w}x{h} px")
    red = np.asarray(image, dtype=np.float32)[..., 0] / 255.0
    return torch.from_numpy(red.copy())[None, None]
