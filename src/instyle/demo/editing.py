"""The demo's "Edit" tab without Gradio: sliders for loaded directions, named edits, refinement.

The server loads the edit files given with ``instyle serve --direction [NAME=]FILE`` once at
start (weights-only; visitors never name files). InterFaceGAN-style directions get a slider
each; GANSpace and SeFa files are used through named edits typed in a box
(``ganspace:54,7,8=20; sefa:0=3``). The photo can be refined first (``optimize`` or ``pti``,
MSE loss, a bounded number of steps) so edits start from a sharper reconstruction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from instyle.demo.actions import _prepare
from instyle.demo.inputs import DemoInputError
from instyle.inference.io import tensor_to_pil

__all__ = ["EditResult", "edit_photo", "load_edits", "slider_names"]


def load_edits(specs: Sequence[str]) -> dict:
    """``[NAME=]FILE`` strings -> ``{name: edit}`` (see :func:`instyle.inference.editing.load_edit`).

    Raises:
        ValueError: an unreadable file or two files of one name.
    """
    from instyle.inference.editing import load_edit, named_file

    edits: dict = {}
    for spec in specs:
        name, path = named_file(spec)
        if name in edits:
            raise ValueError(f"two directions are called {name!r}; name them with --direction NAME=FILE")
        edits[name] = load_edit(path)
    return edits


def slider_names(edits: Mapping) -> list[str]:
    """The edits that take one strength and nothing else (a slider each)."""
    return [n for n, e in edits.items() if e.kind == "interfacegan"]


@dataclass
class EditResult:
    before: Image.Image
    after: Image.Image
    latent: torch.Tensor


def _codes(w: torch.Tensor, edits: Mapping, sliders: Mapping[str, float], extra: str) -> torch.Tensor:
    from instyle.inference.editing import EditSpec, edit_codes, parse_edit, resolve_edit

    plan = [(edits[n], EditSpec(n, None, (float(v),))) for n, v in sliders.items() if float(v) != 0]
    for part in (p.strip() for p in re.split(r"[;\n]", extra or "")):
        if part:
            spec = parse_edit(part)
            if len(spec.strengths) != 1:
                raise ValueError(f"edit {part!r}: give one value here, e.g. {spec.name}=2")
            plan.append((resolve_edit(spec.name, edits), spec))
    for edit, spec in plan:
        edit.check_fits(w.shape[0], w.shape[1])
        w = edit_codes(w, edit, spec)[0]
    return w


def edit_photo(
    model, image: Image.Image, edits: Mapping, sliders: Mapping[str, float], extra: str = "",
    refine: str = "none", steps: int = 50, seed: int = 0,
) -> EditResult:
    """Encode (and optionally refine) one photo, apply the slider and typed edits in order,
    and render the reconstruction and the edited image (``resize_to`` px).

    Raises:
        DemoInputError: a bad edit, an edit that does not fit the model, or a refusal.
    """
    from instyle.inference.encoding import encode, render
    from instyle.inference.refine import RefineConfig, apply_generator_delta
    from instyle.inference.refine import refine as run_refine

    x = _prepare(model, image)
    with torch.no_grad():
        enc = encode(model, x)
    w = enc.latents[0].float()
    generator = model.decoder
    try:
        if refine != "none":
            res = run_refine(model, x, w, refine, RefineConfig(steps=int(steps), lpips_weight=0.0, seed=int(seed)))
            w = res.latent
            if res.generator_delta is not None:
                generator = apply_generator_delta(model.decoder, res.generator_delta)
        edited = _codes(w, edits, sliders, extra)
    except ValueError as e:  # parse errors, shape mismatches, RefineError
        raise DemoInputError(str(e)) from None
    with torch.no_grad():
        if generator is model.decoder:  # with the image's own extra (HyperStyle: its tuned generator)
            images = render(model, enc.with_latents(torch.stack([w, edited])), resize=True)
        else:  # PTI: the generator tuned for this image
            images, _ = generator([torch.stack([w, edited])], input_is_latent=True, randomize_noise=False)
            images = model.face_pool(images)
    return EditResult(tensor_to_pil(images[0]), tensor_to_pil(images[1]), edited.cpu())
