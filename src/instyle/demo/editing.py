"""The demo's "Edit" tab without Gradio: sliders for loaded directions, named edits, refinement.

The server loads the edit files given with ``instyle serve --direction [NAME=]FILE`` once at
start (weights-only; visitors never name files). InterFaceGAN-style directions get a slider
each; GANSpace and SeFa files are used through named edits typed in a box
(``ganspace:54,7,8=20; sefa:0=3``). The photo can be refined first (``optimize`` or ``pti``,
MSE loss, a bounded number of steps) so edits start from a sharper reconstruction.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from instyle.demo.actions import _prepare
from instyle.demo.inputs import DemoInputError
from instyle.inference.io import tensor_to_pil

__all__ = ["EditResult", "EncodingCache", "edit_photo", "estimate_step_seconds", "load_edits", "slider_names"]


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
    """``before``/``after`` images, the edited ``latent``, ``name``: what the edit did as a file
    stem (``older+2.000``), ``cached``: the encoding was re-used, ``refine_seconds``: time of the
    refinement run by this call (0 when none ran)."""

    before: Image.Image
    after: Image.Image
    latent: torch.Tensor
    name: str = "unedited"
    cached: bool = False
    refine_seconds: float = 0.0
    #: what the latent file must say about itself: a PTI code belongs to a tuned generator
    #: the download does not carry, so ``instyle`` commands refuse it rather than misrender it
    meta: dict | None = None


class EncodingCache:
    """The last ``size`` encodings of the Edit tab, by model, image content and refinement: the
    next click on the same upload (another slider value) re-uses the code -- and PTI's tuned
    weights -- instead of encoding (and refining) again. Thread-safe."""

    def __init__(self, size: int = 4):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(model, image: Image.Image, refine: str, steps: int, seed: int) -> tuple:
        digest = hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
        return id(model), digest, refine, int(steps) if refine != "none" else 0, int(seed)

    def get(self, key: tuple):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: tuple, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def estimate_step_seconds(model) -> float:
    """About how long one refinement step takes here: a step renders, back-propagates and
    updates, about three generator passes; a pass is timed now (after a first, untimed one)."""
    w = model.latent_avg[None].float() if model.latent_avg is not None else None
    if w is None:
        return float("nan")
    w = w.expand(1, model.n_styles, -1) if w.ndim == 2 else w
    times = []
    with torch.no_grad():
        model.decode(w, resize=True)
        for _ in range(3):  # the fastest of three: a busy moment at start-up should not scare visitors off
            t0 = time.perf_counter()
            model.decode(w, resize=True)
            times.append(time.perf_counter() - t0)
    return 3 * min(times)


def _codes(w: torch.Tensor, edits: Mapping, sliders: Mapping[str, float], extra: str) -> tuple[torch.Tensor, str]:
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
    name = "_".join(f"{spec.slug}{spec.strengths[0]:+.3g}" for _, spec in plan) or "unedited"
    return w, "".join(c if c.isalnum() or c in "-_+." else "_" for c in name)[:96]


def edit_photo(
    model, image: Image.Image, edits: Mapping, sliders: Mapping[str, float], extra: str = "",
    refine: str = "none", steps: int = 50, seed: int = 0, cache: EncodingCache | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> EditResult:
    """Encode (and optionally refine) one photo, apply the slider and typed edits in order,
    and render the reconstruction and the edited image (``resize_to`` px).

    ``cache``: re-use the encoding (and refinement) of the same image and settings;
    ``on_step(step, loss)``: called after each refinement step (the page's progress).

    Raises:
        DemoInputError: a bad edit, an edit that does not fit the model, or a refusal.
    """
    from instyle.inference.encoding import encode, render
    from instyle.inference.refine import RefineConfig, apply_generator_delta
    from instyle.inference.refine import refine as run_refine

    key = EncodingCache.key(model, image, refine, steps, seed)
    hit = cache.get(key) if cache is not None else None
    seconds = 0.0
    try:
        if hit is None:
            x = _prepare(model, image)
            with torch.no_grad():
                enc = encode(model, x)  # the latent and the family's extra (HyperStyle: offsets)
            w = enc.latents[0].float()
            delta = None
            if refine != "none":
                config = RefineConfig(steps=int(steps), lpips_weight=0.0, seed=int(seed), on_step=on_step)
                res = run_refine(model, x, w, refine, config)
                w, delta, seconds = res.latent, res.generator_delta, res.seconds
            if cache is not None:
                cache.put(key, (w, delta, enc))
        else:
            w, delta, enc = hit
        edited, name = _codes(w, edits, sliders, extra)
    except ValueError as e:  # parse errors, shape mismatches, RefineError
        raise DemoInputError(str(e)) from None
    generator = apply_generator_delta(model.decoder, delta) if delta is not None else model.decoder
    with torch.no_grad():
        if delta is None:  # with the image's own extra (HyperStyle: its tuned generator)
            images = render(model, enc.with_latents(torch.stack([w, edited])), resize=True)
        else:  # PTI: the generator tuned for this image
            images, _ = generator([torch.stack([w, edited])], input_is_latent=True, randomize_noise=False)
            images = model.face_pool(images)
    meta = {"method": "pti", "steps": int(steps), "note": "tuned generator not included (web demo)"} if delta is not None else None
    return EditResult(tensor_to_pil(images[0]), tensor_to_pil(images[1]), edited.cpu(), name, hit is not None, seconds, meta)
