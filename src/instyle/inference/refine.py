"""Refinement: improve one image's reconstruction beyond a single encoder pass.

Starting from the encoder's W+ code, a *refiner* fits the image better (the target is the
network input itself, so this applies to inversion models):

* ``optimize``: latent optimisation in the StyleGAN2-projector style -- Adam on the W+ code
  (and, with ``optimize_noise``, on the noise maps, with the projector's regulariser
  keeping them Gaussian), loss ``lpips_weight · LPIPS + l2_weight · MSE``.
* ``pti``: pivotal tuning (Roich et al., 2021) -- the encoder's code stays fixed as the
  pivot and the synthesis weights are tuned for this image with the same loss plus the
  locality regulariser: codes ``w_r = w_p + α (w_z - w_p) / ‖w_z - w_p‖`` towards random
  (truncated) codes must render as the untuned generator renders them. The result
  carries the tuned weights as a delta against the base generator
  (:func:`save_generator_delta` / :func:`apply_generator_delta`), so the edits of
  :mod:`instyle.inference.editing` apply to the tuned generator too.
* ``restyle``: a ReStyle model's own iterative loop, ``steps`` iterations (refused for
  other models).
* ``hyperstyle``: a HyperStyle model's generator offsets, ``steps`` iterations (refused for
  other models); the offsets are saved with the latent.

Deterministic for a given ``seed`` on a given device; a step count and an optional time
budget bound the work per image::

    result = refine(model, x, w, "pti", RefineConfig(steps=100), lpips=LPIPSLoss())
    result.image, result.latent, result.generator_delta
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from instyle.errors import InputError
from instyle.inference.align_files import read_alignment_index
from instyle.inference.io import make_grid, save_image, tensor_to_pil
from instyle.inference.latents import save_latent
from instyle.inference.offsets import sample_offsets, uses_offsets
from instyle.inference.pasteback import ALIGNED_DIR, INDEX_NAME, PASTED_DIR, face_record, paste_result
from instyle.inference.preprocess import input_preview
from instyle.models.family import family_of, get_family
from instyle.utils.atomic import atomic_write_bytes
from instyle.utils.progress import Progress, say

__all__ = [
    "tuned_model",
    "REFINERS",
    "RefineConfig",
    "RefineError",
    "RefineInput",
    "RefineResult",
    "apply_generator_delta",
    "blend_generator_deltas",
    "check_refiner_fits",
    "default_refine_config",
    "load_generator_delta",
    "refine",
    "delta_reference",
    "generator_delta_applied",
    "refine_files",
    "refine_outputs",
    "referenced_delta",
    "register_refiner",
    "save_generator_delta",
]


class RefineError(InputError):
    """A refinement that cannot run: unknown method, a model it does not fit, a bad setting."""


@dataclass
class RefineConfig:
    """Settings of one refinement (per image).

    Attributes:
        steps: optimiser steps (the budget; ``time_budget`` may stop earlier).
        lr: Adam learning rate; None = the method's default (optimize 0.02, pti 3e-4 as PTI).
        lpips_weight, l2_weight: weights of LPIPS and MSE in the reconstruction loss.
        optimize_noise: optimize: also fit the noise maps.
        noise_regularize: optimize: weight of the projector's noise regulariser.
        locality_weight: pti: weight of the locality regulariser's MSE and LPIPS terms (PTI: 0.1).
        locality_alpha: pti: distance of the regulariser's codes from the pivot (PTI: 30 for 512-D).
        locality_truncation: pti: truncation of the regulariser's random codes (PTI: 0.5).
        locality_interval: pti: apply the regulariser every this many steps (PTI: 1).
        lpips_threshold: optimize / pti: stop once the LPIPS term of the reconstruction falls
            below this (None: never; stylegan3-editing's PTI for images stops at 0.06).
        time_budget: seconds per image after which the refinement stops (None = no limit).
        seed: seed of everything random (the regulariser's codes).
        progress: show the steps and the loss (:class:`instyle.utils.progress.Progress`).
        progress_label: what the progress names (e.g. the image), after the method.
        on_step: called as ``on_step(steps done, loss)`` after each step (e.g. a web page's
            progress bar).
    """

    steps: int = 200
    lr: float | None = None
    lpips_weight: float = 1.0
    l2_weight: float = 1.0
    optimize_noise: bool = False
    noise_regularize: float = 1e5
    locality_weight: float = 0.1
    locality_alpha: float = 30.0
    locality_truncation: float = 0.5
    locality_interval: int = 1
    lpips_threshold: float | None = None
    time_budget: float | None = None
    seed: int = 0
    progress: bool = False
    progress_label: str | None = None
    on_step: Callable[[int, float], None] | None = None

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 1:
            raise RefineError(f"steps={self.steps!r} must be an integer >= 1")
        if self.lr is not None and not self.lr > 0:
            raise RefineError(f"lr={self.lr!r} must be > 0 (or None for the method's default)")
        for name in ("lpips_weight", "l2_weight", "noise_regularize", "locality_weight", "locality_alpha"):
            if not getattr(self, name) >= 0:
                raise RefineError(f"{name}={getattr(self, name)!r} must be >= 0")
        if not isinstance(self.locality_interval, int) or self.locality_interval < 1:
            raise RefineError(f"locality_interval={self.locality_interval!r} must be an integer >= 1")
        if self.lpips_weight == 0 and self.l2_weight == 0:
            raise RefineError("lpips_weight and l2_weight are both 0: nothing to fit")
        if self.lpips_threshold is not None and not self.lpips_threshold > 0:
            raise RefineError(f"lpips_threshold={self.lpips_threshold!r} must be > 0 (or None: no early stop)")
        if self.lpips_threshold is not None and self.lpips_weight == 0:
            raise RefineError("lpips_threshold stops on the LPIPS term; it needs lpips_weight > 0")
        if self.time_budget is not None and not self.time_budget > 0:
            raise RefineError(f"time_budget={self.time_budget!r} must be > 0 seconds (or None)")


@dataclass
class RefineInput:
    """What :func:`refine_files`' ``prepare`` may return instead of the network input alone:
    the encoder's input ``x [C, S, S]``, the image to fit (``target``, None: ``x``), the
    encoding's ``extra`` it renders with and the ``meta`` its latent file keeps (an unaligned
    StyleGAN3 encoding: the aligned crop, the unaligned crop, and the landmark transform)."""

    x: torch.Tensor
    target: torch.Tensor | None = None
    extra: Any = None
    meta: dict = field(default_factory=dict)


@dataclass
class RefineResult:
    """A refined reconstruction: ``image [3, H, W]`` in [-1, 1] (at ``resize_to``), its code
    ``latent [n_styles, D]``, fitted ``noise`` maps (optimize with noise) and the tuned
    weights as ``generator_delta`` (pti; ``{name: tuned - base}``)."""

    image: torch.Tensor
    latent: torch.Tensor
    method: str
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    noise: list[torch.Tensor] | None = None
    generator_delta: dict[str, torch.Tensor] | None = None
    weights_deltas: list[torch.Tensor | None] | None = None


#: name -> ``fn(model, target [1, 3, S, S], w [n_styles, D], config, lpips) -> RefineResult``;
#: a refiner that renders under the encoding's extra (a StyleGAN3 transform) also takes ``extra=``.
REFINERS: dict[str, Callable] = {}
#: the refiners that fit a loss (LPIPS + MSE); ``restyle`` and ``hyperstyle`` run the model's own iterations.
LOSS_REFINERS = ("optimize", "pti")


def register_refiner(name: str, fn: Callable | None = None, *, replace: bool = False):
    """Register a refiner under ``name`` (usable as a decorator)."""

    def add(f: Callable) -> Callable:
        if name in REFINERS and not replace:
            raise RefineError(f"a refiner called {name!r} exists; pass replace=True to override it")
        REFINERS[name] = f
        return f

    return add(fn) if fn is not None else add


def default_refine_config(model, method: str, **overrides) -> RefineConfig:
    """The :class:`RefineConfig` of ``method`` for ``model`` (a model, its family's name, or None):
    the family's published defaults (``Family.refine_defaults``, e.g. stylegan3-editing's PTI
    settings for encoders over StyleGAN3) under ``overrides`` (None values are ignored)."""
    if model is None:
        defaults = {}
    else:
        defaults = dict((get_family(model) if isinstance(model, str) else family_of(model)).refine_defaults.get(method, {}))
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("lpips_weight") == 0 and "lpips_threshold" not in given:
        defaults.pop("lpips_threshold", None)  # an MSE-only fit has no LPIPS to stop on
    return RefineConfig(**{**defaults, **given})


def refine(model, target: torch.Tensor, w_init: torch.Tensor, method: str, config: RefineConfig | None = None, lpips=None,
           extra=None) -> RefineResult:
    """Refine one image's reconstruction.

    Args:
        model: an inversion :class:`~instyle.models.psp.PSP` (photo in, photo out).
        target: the image ``[3, S, S]`` or ``[1, 3, S, S]`` in [-1, 1] (the network input).
        w_init: the encoder's code ``[n_styles, D]`` (or ``[1, n_styles, D]``).
        method: a name in :data:`REFINERS` (``optimize``, ``pti``, ``restyle``).
        config: :class:`RefineConfig` (None: :func:`default_refine_config`, the family's defaults).
        lpips: an LPIPS module (``instyle.losses.lpips.LPIPSLoss``); needed when
            ``config.lpips_weight > 0``.
        extra: the encoding's extra the image renders with (an unaligned StyleGAN3 encoding's
            ``[3, 3]`` transform: ``target`` is then the unaligned crop), rendered through
            ``model.synthesize``; only ``optimize`` and ``pti`` take one.
    """
    if method not in REFINERS:
        raise RefineError(f"unknown refinement {method!r}; choose one of {', '.join(sorted(REFINERS))}")
    config = config or default_refine_config(model, method)
    if extra is not None and method not in LOSS_REFINERS:
        raise RefineError(f"'{method}' refinement runs the model's own iterations on the image; it takes no "
                          f"rendering transform / extra (use {' or '.join(LOSS_REFINERS)})")
    if method in LOSS_REFINERS and config.lpips_weight > 0 and lpips is None:
        raise RefineError("lpips_weight > 0 needs an LPIPS module (give LPIPS weights, or set lpips_weight=0)")
    if getattr(model, "input_nc", 3) != 3:
        raise RefineError(f"refinement fits the input photo; this model takes {model.input_nc}-channel inputs")
    target = target[None] if target.ndim == 3 else target
    w_init = w_init[None] if w_init.ndim == 2 else w_init
    if target.shape[0] != 1 or w_init.shape[0] != 1:
        raise RefineError(f"refine takes one image and one code, got {tuple(target.shape)} and {tuple(w_init.shape)}")
    device = next(model.parameters()).device
    kw = {} if extra is None else {"extra": extra.to(device) if isinstance(extra, torch.Tensor) else extra}
    return REFINERS[method](model, target.detach().to(device).float(), w_init.detach().clone().to(device).float(), config, lpips, **kw)


#: refiners that run a model's own loop, and the family each needs
FAMILY_REFINERS = {"restyle": "restyle", "hyperstyle": "hyperstyle"}


def check_refiner_fits(method: str, family: str | None) -> None:
    """Refuse ``method`` for a model of ``family`` (None: unknown yet, nothing refused).

    Raises:
        RefineError: ``restyle`` needs a ReStyle model, ``hyperstyle`` a HyperStyle one.
    """
    need = FAMILY_REFINERS.get(method)
    if need is None or family is None or family == need:
        return
    what = "a ReStyle checkpoint (an iterative encoder)" if need == "restyle" else "a HyperStyle checkpoint (W-encoder + hypernetwork)"
    raise RefineError(f"'{method}' refinement needs {what}; this is a {family} model. Use 'optimize' or 'pti'.")


# --------------------------------------------------------------------------- shared pieces


def _render(model, generator, w: torch.Tensor, noise=None, extra=None) -> torch.Tensor:
    """``w [1, n, D]`` -> image at ``resize_to`` through ``generator`` (the model's or a tuned
    copy); with the encoding's ``extra`` (a rendering transform) through the model's
    ``synthesize``, the one rendering every family offers."""
    if extra is None:
        images, _ = generator([w], input_is_latent=True, noise=noise, randomize_noise=False)
        return model.face_pool(images)
    if noise is not None:
        raise RefineError("noise maps and a rendering transform cannot be fitted together")
    with _generator_swapped(model, generator):
        return model.synthesize(w, extra, resize=True)


@contextmanager
def _generator_swapped(model, generator):
    """``model`` rendering through ``generator`` inside the block."""
    base = model.decoder
    model.decoder = generator
    try:
        yield model
    finally:
        model.decoder = base


def _recon_loss(pred: torch.Tensor, target: torch.Tensor, config: RefineConfig, lpips, parts: dict | None = None) -> torch.Tensor:
    """``l2_weight · MSE + lpips_weight · LPIPS``; ``parts`` receives the LPIPS term (a float)."""
    if pred.shape[-1] != target.shape[-1]:
        pred = F.interpolate(pred, size=target.shape[-2:], mode="area")
    loss = config.l2_weight * F.mse_loss(pred, target)
    if config.lpips_weight > 0:
        term = lpips(pred, target)
        loss = loss + config.lpips_weight * term
        if parts is not None:
            parts["lpips"] = float(term.detach())
    return loss


def _converged(config: RefineConfig, parts: dict) -> bool:
    """The LPIPS term fell below ``config.lpips_threshold`` (stylegan3-editing's early stop)."""
    return config.lpips_threshold is not None and parts.get("lpips", float("inf")) < config.lpips_threshold


@contextmanager
def _frozen(module: torch.nn.Module):
    """No gradients for ``module``'s parameters inside the block (restored after)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


class _Budget:
    """Step loop with an optional wall-clock limit; with ``config.progress`` it shows the steps
    and the last loss (a bar on a terminal, a line every quarter of the steps in a log).
    The refiner appends each step's loss to ``losses``."""

    def __init__(self, config: RefineConfig, desc: str):
        self.config, self.start = config, time.perf_counter()
        self.losses: list[float] = []
        label = f"{desc} {config.progress_label}" if config.progress_label else desc
        self.bar = Progress(config.steps, label, "step", every=max(1, config.steps // 4), leave=False, enabled=config.progress)

    def __iter__(self):
        try:
            for step in range(self.config.steps):
                if self.config.time_budget is not None and time.perf_counter() - self.start > self.config.time_budget:
                    break
                yield step
                self.bar.update(1, **({"loss": self.losses[-1]} if self.losses else {}))
                if self.config.on_step is not None:
                    self.config.on_step(step + 1, self.losses[-1] if self.losses else float("nan"))
        finally:
            self.bar.close()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def _lr_at(base: float, t: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """The StyleGAN2 projector's schedule: short ramp-up, cosine ramp-down over the last quarter."""
    ramp = min(1.0, (1 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return base * ramp * min(1.0, t / rampup) if rampup > 0 and t < rampup else base * ramp


def _noise_regularizer(noises: list[torch.Tensor]) -> torch.Tensor:
    """The projector's penalty on spatial autocorrelation of each noise map, at every scale down to 8x8."""
    loss = noises[0].new_zeros(())
    for noise in noises:
        n = noise
        while True:
            loss = loss + (n * torch.roll(n, 1, dims=3)).mean() ** 2 + (n * torch.roll(n, 1, dims=2)).mean() ** 2
            if n.shape[-1] <= 8:
                break
            n = F.avg_pool2d(n, 2)
    return loss


# --------------------------------------------------------------------------- optimize


@register_refiner("optimize")
def _optimize(model, target, w_init, config: RefineConfig, lpips, extra=None) -> RefineResult:
    gen = model.decoder
    base_lr = config.lr or 0.02
    w = w_init.clone().requires_grad_(True)
    if config.optimize_noise and not callable(getattr(gen, "fixed_noise", None)):
        raise RefineError(f"this {type(gen).__name__} has no noise inputs to fit; drop optimize_noise (--refine-noise)")
    noises = [n.detach().clone().requires_grad_(True) for n in gen.fixed_noise()] if config.optimize_noise else None
    opt = torch.optim.Adam([w, *(noises or [])], lr=base_lr, betas=(0.9, 0.999))
    budget, done = _Budget(config, "optimize"), 0
    losses = budget.losses
    with _frozen(gen), torch.enable_grad():
        for step in budget:
            for group in opt.param_groups:
                group["lr"] = _lr_at(base_lr, step / config.steps)
            parts: dict = {}
            loss = _recon_loss(_render(model, gen, w, noises, extra), target, config, lpips, parts)
            if _converged(config, parts):
                break
            if noises is not None:
                loss = loss + config.noise_regularize * _noise_regularizer(noises)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if noises is not None:
                with torch.no_grad():
                    for n in noises:
                        n.sub_(n.mean()).div_(n.std())
            losses.append(float(loss.detach()))
            done = step + 1
        with torch.no_grad():
            image = _render(model, gen, w, noises, extra)[0]
    noise_out = [n.detach() for n in noises] if noises is not None else None
    return RefineResult(image, w.detach()[0], "optimize", done, budget.seconds, losses, noise=noise_out)


# --------------------------------------------------------------------------- pti


def _tunable(generator) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters PTI tunes: all but the generator's ``frozen_in_tuning`` prefixes (the
    mapping network, which rendering a code never runs; StyleGAN3 also its Fourier input)."""
    frozen = generator.frozen_in_tuning
    return [(n, p) for n, p in generator.named_parameters() if not n.startswith(frozen)]


def _locality_codes(base, pivot: torch.Tensor, config: RefineConfig, gen: torch.Generator) -> torch.Tensor:
    """``w_p + α (w_z - w_p) / ‖w_z - w_p‖`` for one random truncated code ``w_z``."""
    z = torch.randn(1, base.style_dim, generator=gen).to(pivot.device)
    w_z = base.get_latent(z)
    avg = base.latent_avg.to(pivot) if base.latent_avg is not None else w_z
    w_z = avg + config.locality_truncation * (w_z - avg)
    direction = w_z[:, None] - pivot
    return pivot + config.locality_alpha * direction / direction.norm()


@register_refiner("pti")
def _pti(model, target, pivot, config: RefineConfig, lpips, extra=None) -> RefineResult:
    base = model.decoder
    tuned = copy.deepcopy(base)
    params = _tunable(tuned)
    tuned.requires_grad_(False)
    for _, p in params:
        p.requires_grad_(True)  # whatever the base's flags, the copy's tuned weights train (and only they)
    opt = torch.optim.Adam([p for _, p in params], lr=config.lr or 3e-4)
    rng = torch.Generator().manual_seed(config.seed)
    budget, done = _Budget(config, "pti"), 0
    losses = budget.losses
    with _frozen(base), torch.enable_grad():
        tuned.style.requires_grad_(False)
        for step in budget:
            parts: dict = {}
            loss = _recon_loss(_render(model, tuned, pivot, extra=extra), target, config, lpips, parts)
            if _converged(config, parts):  # as stylegan3-editing: checked before the step
                break
            if config.locality_weight > 0 and step % config.locality_interval == 0:
                w_r = _locality_codes(base, pivot, config, rng)
                with torch.no_grad():
                    before = _render(model, base, w_r)
                after = _render(model, tuned, w_r)
                reg = F.mse_loss(after, before) + (lpips(after, before) if lpips is not None else 0)
                loss = loss + config.locality_weight * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            done = step + 1
    with torch.no_grad():
        image = _render(model, tuned, pivot, extra=extra)[0]
        base_params = dict(base.named_parameters())
        delta = {n: (p - base_params[n]).detach().cpu() for n, p in params}
    return RefineResult(image, pivot[0], "pti", done, budget.seconds, losses, generator_delta=delta)


# --------------------------------------------------------------------------- restyle hook


@register_refiner("restyle")
def _restyle(model, target, w_init, config: RefineConfig, lpips) -> RefineResult:
    """ReStyle's own loop, ``config.steps`` iterations from the average image (the original's
    ``inference_iterative.py``; ``w_init`` is not used: ReStyle never starts from a code)."""
    family = family_of(model)
    if not (family.iterative and family.encoding == "latent"):  # ReStyle: refines the latent alone
        kind = getattr(getattr(model, "config", None), "encoder", None)
        raise RefineError(
            f"'restyle' refinement needs a ReStyle checkpoint (an iterative encoder); this model's encoder is "
            f"{getattr(kind, 'type', type(model).__name__)!r}. Use 'optimize' or 'pti'."
        )
    t0 = time.perf_counter()
    with torch.no_grad():
        w = model.encode(target, iterations=config.steps)
        image = model.decode(w, resize=True)[0]
    return RefineResult(image, w[0], "restyle", config.steps, time.perf_counter() - t0)


@register_refiner("hyperstyle")
def _hyperstyle(model, target, w_init, config: RefineConfig, lpips) -> RefineResult:
    """HyperStyle's own loop, ``config.steps`` iterations of generator offsets on top of its
    W-encoder's code (the original's ``run_inversion``; ``w_init`` is not used)."""
    if not uses_offsets(model):
        raise RefineError(
            f"'hyperstyle' refinement needs a HyperStyle checkpoint (W-encoder + hypernetwork); this is a "
            f"{family_of(model).title} model. Use 'optimize' or 'pti'."
        )
    t0 = time.perf_counter()
    with torch.no_grad():
        w, deltas = model.encode(target, iterations=config.steps)
        image = model.decode(w, weights_deltas=deltas, resize=True)[0]
    return RefineResult(image, w[0], "hyperstyle", config.steps, time.perf_counter() - t0, weights_deltas=deltas)


# --------------------------------------------------------------------------- generator deltas


def _fingerprint(generator) -> str:
    """A short hash of the tuned parameters of ``generator`` (to refuse a delta on another base)."""
    h = hashlib.sha256()
    # every non-mapping parameter of a StyleGAN2 generator (what PTI tuned when deltas were
    # first written), not _tunable's set, so the fingerprint of a saved delta never moves
    for name, p in ((n, p) for n, p in generator.named_parameters() if not n.startswith("style.")):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_generator_delta(path: str | Path, delta: dict[str, torch.Tensor], base, half: bool = True) -> Path:
    """Write PTI's tuned weights as ``tuned - base`` (float16 by default: half the size of
    the changed tensors, and nothing for the unchanged mapping network) to a
    ``.safetensors`` file, atomically, with the base generator's fingerprint."""
    from safetensors.torch import save


    path = Path(path)
    tensors = {n: (d.half() if half else d.float()).contiguous() for n, d in delta.items()}
    atomic_write_bytes(path, save(tensors, metadata={"kind": "instyle-generator-delta", "base": _fingerprint(base)}))
    return path


def load_generator_delta(path: str | Path, base) -> dict[str, torch.Tensor]:
    """Read a delta written by :func:`save_generator_delta`, checked against ``base``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        delta = {k: v.float() for k, v in load_file(str(path)).items()}
    except Exception as e:  # safetensors raises several types for a bad file
        raise RefineError(f"{path}: not a generator delta file ({type(e).__name__}: {e})") from None
    if meta.get("kind") != "instyle-generator-delta":
        raise RefineError(f"{path}: not an instyle generator delta (metadata {meta})")
    if meta.get("base") != _fingerprint(base):
        raise RefineError(f"{path}: the delta was tuned from another generator (fingerprint {meta.get('base')})")
    return delta


def apply_generator_delta(base, delta: dict[str, torch.Tensor]):
    """A copy of ``base`` with ``delta`` added to its parameters (the tuned generator)."""
    tuned = copy.deepcopy(base)
    params = dict(tuned.named_parameters())
    unknown = sorted(set(delta) - set(params))
    if unknown:
        raise RefineError(f"the delta names parameters this generator lacks, e.g. {unknown[:3]}")
    with torch.no_grad():
        for name, d in delta.items():
            if d.shape != params[name].shape:
                raise RefineError(f"delta {name} has shape {tuple(d.shape)}, the generator {tuple(params[name].shape)}")
            params[name].add_(d.to(params[name]))
    return tuned


def tuned_model(model, delta: dict[str, torch.Tensor]):
    """A shallow copy of the inversion ``model`` whose generator carries PTI's tuned weights
    (``delta`` added to ``model.decoder``); ``model`` itself is unchanged. Render it with
    :func:`instyle.inference.encoding.render` as any model of its family."""
    out = copy.copy(model)
    out._modules = dict(model._modules)
    out.decoder = apply_generator_delta(model.decoder, delta)
    return out


# --------------------------------------------------------------------------- tuned generators of saved latents

#: keys of a refined latent file's ``meta`` that point to its PTI generator delta (relative to
#: the latent file) and pin its content
DELTA_REF, DELTA_SHA = "generator_delta", "generator_delta_sha256"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def delta_reference(latent_path: str | Path, delta_path: str | Path) -> dict[str, str]:
    """The ``meta`` entries by which a latent file names its tuned generator (see :func:`referenced_delta`)."""
    import os

    rel = os.path.relpath(Path(delta_path), Path(latent_path).parent)
    return {DELTA_REF: Path(rel).as_posix(), DELTA_SHA: _sha256(Path(delta_path))}


def referenced_delta(latent_path: str | Path, meta: dict, base) -> dict[str, torch.Tensor] | None:
    """The PTI generator delta a latent file references (None when it references none), read
    only when its sha256 matches and checked against ``base`` (the model's generator).

    Raises:
        RefineError: the delta file is missing, changed since it was referenced, or was
            tuned from another generator, or a PTI code references none -- a latent of a
            tuned generator is never rendered on the untuned one.
    """
    ref = meta.get(DELTA_REF)
    latent_path = Path(latent_path)
    if ref is None and meta.get("method") == "pti":
        raise RefineError(
            f"{latent_path}: a PTI code whose tuned generator is not referenced (no {DELTA_REF!r} in its meta); "
            "on the untuned generator it would show another face. Use the latents/ and pti/ folders of "
            "`instyle encode --refine pti`"
        )
    if ref is None:
        return None
    if not isinstance(ref, str) or Path(ref).is_absolute() or not isinstance(meta.get(DELTA_SHA), str):
        raise RefineError(f"{latent_path}: bad tuned-generator reference {ref!r} in its meta")
    path = latent_path.parent / ref
    if not path.is_file():
        raise RefineError(
            f"{latent_path}: its tuned generator {path} is missing (keep the pti/ folder beside latents/); "
            "refusing to render this PTI code on the untuned generator"
        )
    if _sha256(path) != meta[DELTA_SHA]:
        raise RefineError(f"{latent_path}: its tuned generator {path} changed since it was written (sha256 differs)")
    return load_generator_delta(path, base)


def blend_generator_deltas(deltas: list[dict[str, torch.Tensor] | None], weights: list[float]) -> dict[str, torch.Tensor] | None:
    """``sum_i weights[i] * deltas[i]`` (None counts as the untuned generator, a zero delta);
    None when no delta is given: an interpolation between PTI codes moves their tuned
    generators along the same path as the codes."""
    out: dict[str, torch.Tensor] = {}
    for delta, wt in zip(deltas, weights):
        for name, d in (delta or {}).items():
            out[name] = out[name] + wt * d if name in out else wt * d
    return out or None


@contextmanager
def generator_delta_applied(model, delta: dict[str, torch.Tensor] | None):
    """``model`` rendering on its generator tuned by ``delta`` inside the block (no change for None)."""
    if delta is None:
        yield model
        return
    base = model.decoder
    model.decoder = apply_generator_delta(base, delta)
    try:
        yield model
    finally:
        model.decoder = base


# --------------------------------------------------------------------------- folders


def refine_outputs(
    name: str, method: str, fmt: str = "png", save_latents: bool = False, align: bool = False, paste_back: bool = False
) -> list[str]:
    """Files written for the input named ``name`` (relative to the output folder), as
    ``encode`` lists them: the image, the latent (always for pti: the tuned generator is
    useless without its pivot code), pti's generator delta, and with ``align`` the aligned
    crop (``paste_back``: the result pasted into the photo)."""
    files = [f"{name}.{fmt}"]
    if save_latents or method == "pti":
        files.append(f"latents/{name}.npz")
    if method == "pti":
        files.append(f"pti/{name}.safetensors")
    if align:
        files.append(f"{ALIGNED_DIR}/{name}.png")
    if align and paste_back:
        files.append(f"{PASTED_DIR}/{name}.{fmt}")
    return files


def _done(out: Path, name: str, fmt: str, method: str, save_latents: bool = False) -> bool:
    """An image counts as done when its output (written last) and the other files exist."""
    return all((out / f).is_file() for f in refine_outputs(name, method, fmt, save_latents))


def refine_files(
    model,
    items: list[tuple[Path, str]],
    out_dir: str | Path,
    method: str,
    config: RefineConfig,
    prepare: Callable[[Path], torch.Tensor | RefineInput],
    lpips=None,
    fmt: str = "png",
    save_latents: bool = False,
    log: Callable[[str], None] = print,
    grid: bool = False,
    faces: dict | None = None,
    paste_back: bool = False,
    blend: str = "feather",
) -> dict:
    """Encode + refine each ``(path, output name)`` and write, per image and atomically,
    :func:`refine_outputs`: ``pti/<name>.safetensors`` (pti's generator delta),
    ``latents/<name>.npz`` (code, noise maps, meta; for pti it references the delta by path
    and sha256) and ``<name>.<fmt>`` (last, so it marks the image done); with ``grid`` also
    ``grid.png`` (input | output, first 16), as ``encode`` does.

    ``prepare`` gives the network input, or a :class:`RefineInput` (the unaligned encode's:
    the image to fit and the transform it renders with, kept in the latent's meta).

    ``faces``: the dict an aligning ``prepare`` fills (:func:`~instyle.inference.pipeline.input_preparer`):
    each image's aligned crop and its record in ``aligned/alignment.json`` are kept, as
    ``encode --align`` keeps them, and with ``paste_back`` the result is pasted into its photo.

    Images already done are skipped (a stopped run resumes); a bad input is logged and
    counted, never stops the run. Every image uses ``config.seed``, so a resumed run gives
    the results an uninterrupted one would. Returns a summary dict with ``files``: one
    ``{"input", "outputs", "status", "error", "steps", "seconds", "loss"}`` per item.
    """
    import dataclasses

    out = Path(out_dir)
    summary = {"method": method, "refined": 0, "resumed": 0, "failed": 0, "seconds": [], "steps": [], "files": []}
    device = next(model.parameters()).device
    grid_rows: list[list] = []
    alignment: dict = {}
    bar = Progress(len(items), method, "img", every=1, enabled=config.progress)
    for path, name in items:
        record = {"input": str(path), "outputs": [], "status": "failed", "error": None}
        summary["files"].append(record)
        outputs = refine_outputs(name, method, fmt, save_latents, faces is not None, paste_back)
        if _done(out, name, fmt, method, save_latents):
            summary["resumed"] += 1
            record.update(outputs=outputs, status="resumed")
            bar.update(1)
            continue
        try:
            item = prepare(path)
            item = item if isinstance(item, RefineInput) else RefineInput(item)
            x = item.x[None].to(device)
            target = x if item.target is None else item.target[None].to(device)
        except ValueError as e:
            log(f"instyle: skipped {e}")
            summary["failed"] += 1
            record["error"] = str(e)
            bar.update(1)
            continue
        with torch.no_grad():
            w = model.encode_for_render(x)[0].float()
        result = refine(model, target, w, method, dataclasses.replace(config, progress_label=name), lpips, extra=item.extra)
        try:
            meta = {**item.meta, "method": method, "steps": result.steps, "source": str(path)}
            latent = out / "latents" / f"{name}.npz"
            if result.generator_delta is not None:
                delta = save_generator_delta(out / "pti" / f"{name}.safetensors", result.generator_delta, model.decoder)
                meta.update(delta_reference(latent, delta))
            if f"latents/{name}.npz" in outputs:
                save_latent(latent, result.latent.cpu(), result.noise, meta, weights_deltas=sample_offsets(result.weights_deltas, 0))
            recon = tensor_to_pil(result.image)
            face = faces.pop(path, None) if faces is not None else None
            if face is not None:
                save_image(face.image, out / ALIGNED_DIR / f"{name}.png")
                alignment[f"{name}.png"] = face_record(face, path)
                if paste_back:
                    save_image(paste_result(alignment[f"{name}.png"], recon, blend=blend), out / PASTED_DIR / f"{name}.{fmt}")
            save_image(recon, out / f"{name}.{fmt}")
        except OSError as e:
            log(f"instyle: could not write the outputs of {path}: {e}")
            summary["failed"] += 1
            record["error"] = f"could not write output: {e}"
            bar.update(1)
            continue
        loss = round(result.losses[-1], 6) if result.losses else None
        record.update(outputs=outputs, status="refined", steps=result.steps, seconds=round(result.seconds, 3), loss=loss)
        if grid and len(grid_rows) < 16:
            grid_rows.append([input_preview(target[0], model.config), recon])
        summary["refined"] += 1
        summary["seconds"].append(round(result.seconds, 3))
        summary["steps"].append(result.steps)
        if config.progress:
            say(f"{method} {name}: {result.steps} steps in {result.seconds:.1f}s" + (f", loss {loss:.4g}" if loss is not None else ""))
        bar.update(1)
    bar.close()
    if alignment:  # the records of images an earlier run did are kept
        index = out / ALIGNED_DIR / INDEX_NAME
        try:
            merged = {**read_alignment_index(index, log), **alignment}
            atomic_write_bytes(index, (json.dumps(merged, indent=1) + "\n").encode())
        except OSError as e:
            log(f"instyle: could not write {index}: {e}")
    if grid_rows:
        try:
            rows = [sum(grid_rows[i : i + 4], []) for i in range(0, len(grid_rows), 4)]
            save_image(make_grid(rows, cell=256), out / "grid.png")
        except OSError as e:
            log(f"instyle: could not write {out / 'grid.png'}: {e}")
    return summary
