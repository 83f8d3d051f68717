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
from dataclasses import dataclass, field, replace

import torch
from PIL import Image

from instyle.demo.actions import _prepare
from instyle.demo.inputs import DemoInputError
from instyle.inference.encoding import Encoding
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
    """``before``/``after`` images (``after``: a captioned strip for an edit with several values),
    the edited ``latent`` (``[n_styles, D]``, or ``[values, n_styles, D]`` for a strip), ``name``:
    what the edit did as a file stem (``older+2``), ``cached``: the encoding was re-used,
    ``refine_seconds``: time of the refinement run by this call (0 when none ran)."""

    before: Image.Image
    after: Image.Image
    latent: torch.Tensor
    name: str = "unedited"
    cached: bool = False
    refine_seconds: float = 0.0
    #: what the latent file must say about itself: a PTI code belongs to a tuned generator
    #: the download does not carry, so ``instyle`` commands refuse it rather than misrender it
    meta: dict | None = None
    #: the edited code(s) with whatever the family re-renders them with (the download)
    encoding: Encoding | None = None
    #: one image per edited code (a strip's values; one image otherwise)
    frames: list = field(default_factory=list)


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
    from instyle.inference.encoding import as_encoding, render

    enc = as_encoding(model, w)  # the plain generator pass of any family
    times = []
    with torch.no_grad():
        render(model, enc, resize=True)
        for _ in range(3):  # the fastest of three: a busy moment at start-up should not scare visitors off
            t0 = time.perf_counter()
            render(model, enc, resize=True)
            times.append(time.perf_counter() - t0)
    return 3 * min(times)


#: Most values one typed strip edit (``age=-3..3:7``) may ask for in the demo.
MAX_STRIP_VALUES = 12


def _plan(edits: Mapping, sliders: Mapping[str, float], extra: str, max_values: int) -> list[tuple]:
    """``[(edit, EditSpec)]``: the non-zero sliders, then the typed edits, in order. One typed
    edit may take several values (a strip, as ``instyle edit --edit age=-3..3:7``)."""
    from instyle.inference.editing import EditSpec, parse_edit, resolve_edit

    plan = [(edits[n], EditSpec(n, None, (float(v),))) for n, v in sliders.items() if float(v) != 0]
    for part in (p.strip() for p in re.split(r"[;\n]", extra or "")):
        if part:
            spec = parse_edit(part)
            plan.append((resolve_edit(spec.name, edits), spec))
    strips = [spec for _, spec in plan if len(spec.strengths) > 1]
    if len(strips) > 1:
        raise ValueError(f"one edit may take several values (a strip, e.g. {strips[0].name}=-3..3:7); "
                         f"give {', '.join(s.name for s in strips[1:])} one value each")
    if strips and len(strips[0].strengths) > max_values:
        raise ValueError(f"edit {strips[0].name!r} asks for {len(strips[0].strengths)} values; this demo renders at most {max_values}")
    return plan


def _steps(plan: list[tuple]) -> list[list[tuple]]:
    """One chain of single-valued edits per output image (one per value of the strip)."""
    values = next((spec.strengths for _, spec in plan if len(spec.strengths) > 1), (None,))
    return [[(e, sp if len(sp.strengths) == 1 else replace(sp, strengths=(v,))) for e, sp in plan] for v in values]


def _name(plan: list[tuple]) -> str:
    parts = []
    for _, spec in plan:
        s = spec.strengths
        parts.append(f"{spec.slug}{s[0]:+.3g}" if len(s) == 1 else f"{spec.slug}{s[0]:+.3g}..{s[-1]:+.3g}x{len(s)}")
    name = "_".join(parts) or "unedited"
    return "".join(c if c.isalnum() or c in "-_+." else "_" for c in name)[:96]


def _caption_strip(plan: list[tuple], images: list[Image.Image]) -> Image.Image:
    """The strip's images side by side, each captioned with its value (as ``instyle edit``'s strips)."""
    from instyle.inference.io import caption, make_grid

    spec = next(sp for _, sp in plan if len(sp.strengths) > 1)
    return make_grid([[caption(im, spec.label(v)) for v, im in zip(spec.strengths, images)]], cell=images[0].size[1])


def edit_photo(
    model, image: Image.Image, edits: Mapping, sliders: Mapping[str, float], extra: str = "",
    refine: str = "none", steps: int = 50, seed: int = 0, cache: EncodingCache | None = None,
    on_step: Callable[[int, float], None] | None = None, max_values: int = MAX_STRIP_VALUES,
) -> EditResult:
    """Encode (and optionally refine) one photo, apply the slider and typed edits in order,
    and render the reconstruction and the edited image (``resize_to`` px). A typed edit with
    several values (``age=-3..3:7``) gives a captioned strip, one image per value.

    The model's family edits its own way (:func:`instyle.inference.encoding.edit_encoding`):
    StyleFeatureEditor through its feature editor with the original's degrees, the others by
    moving the W+ code.

    ``cache``: re-use the encoding (and refinement) of the same image and settings;
    ``on_step(step, loss)``: called after each refinement step (the page's progress).

    Raises:
        DemoInputError: a bad edit, an edit that does not fit the model, or a refusal.
    """
    from instyle.inference.encoding import edit_encoding, encode, render
    from instyle.inference.refine import default_refine_config, tuned_model
    from instyle.inference.refine import refine as run_refine
    from instyle.models.family import family_of

    family = family_of(model)
    if refine != "none" and not family.editable_latents:
        raise DemoInputError(f"{family.title} models edit their own detail-rich inversion: choose 'none' under "
                             "'Refine first' (optimize / pti tune a W+ code alone)")
    key = EncodingCache.key(model, image, refine, steps, seed)
    hit = cache.get(key) if cache is not None else None
    seconds = 0.0
    try:
        plan = _plan(edits, sliders, extra, max_values)
        if hit is None:
            x = _prepare(model, image)
            with torch.no_grad():
                enc = encode(model, x)  # the latent and the family's extra (HyperStyle: offsets)
            w = enc.latents[0].float()
            delta = None
            if refine != "none":
                # the family's published settings (StyleGAN3: stylegan3-editing's PTI) under the demo's
                # few steps and MSE-only fit (no LPIPS weights are needed on a server)
                config = default_refine_config(model, refine, steps=int(steps), lpips_weight=0.0, seed=int(seed),
                                               on_step=on_step)
                res = run_refine(model, x, w, refine, config)
                w, delta, seconds = res.latent, res.generator_delta, res.seconds
                enc = enc.with_latents(w[None].to(enc.latents))
            if cache is not None:
                cache.put(key, (w, delta, enc))
        else:
            w, delta, enc = hit
        with torch.no_grad():
            edited = edit_encoding(model, enc, _steps(plan))
    except ValueError as e:  # parse errors, shape mismatches, RefineError
        raise DemoInputError(str(e)) from None
    shown_by = model if delta is None else tuned_model(model, delta)  # PTI: the generator tuned for this image
    with torch.no_grad():  # with the encoding's own extra (HyperStyle: offsets; StyleGAN3: its transform)
        before = render(shown_by, enc, resize=True)
        after = render(shown_by, edited, resize=True)
    frames = [tensor_to_pil(t) for t in after]
    shown = frames[0] if len(frames) == 1 else _caption_strip(plan, frames)
    meta = {"method": "pti", "steps": int(steps), "note": "tuned generator not included (web demo)"} if delta is not None else None
    latent = edited.latents.float().cpu()
    return EditResult(tensor_to_pil(before[0]), shown, latent[0] if len(latent) == 1 else latent, _name(plan), hit is not None,
                      seconds, meta, edited.to("cpu"), frames)
