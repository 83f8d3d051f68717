"""One pivotal tuning (PTI) run over all the frames of a clip, as STIT tunes its generator.

The pivots (each frame's W+ code) stay fixed; the synthesis weights of one copy of the
generator are tuned so that every pivot renders its frame: a *pass* visits the frames in
batches of ``batch_size`` (in order, or reshuffled each pass) with one Adam step each, and
``steps`` passes are made (STIT: 300 passes of one frame per step in order, lr 3e-5, MSE
weighted 10 and LPIPS 1, the locality regulariser off); with ``unit="step"`` ``steps`` counts
Adam steps instead (stylegan3-editing's ``run_pti_video.py``: 350 steps on shuffled batches
of 4, lr 3e-4, LPIPS 1 + L2 1). A family's published clip settings come from its record
(``Family.refine_defaults["video_pti"]``, :func:`clip_tune_config`). The loss, the locality
regulariser and the delta files are those of :mod:`instyle.inference.refine`'s per-image PTI.

Resumable: after every ``checkpoint_every`` units (passes or steps) the tuned weights, Adam's state and the
random generator's state are written atomically, so a killed run continues from the last
checkpoint and ends with the same weights an uninterrupted run would (given no time budget).
"""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from instyle.errors import InputError
from instyle.inference.offsets import uses_offsets
from instyle.inference.refine import RefineConfig, _locality_codes, _recon_loss, _render, _tunable
from instyle.models.family import family_of
from instyle.utils.atomic import atomic_write_bytes
from instyle.utils.progress import Progress

__all__ = ["TUNE_UNITS", "ClipTuneConfig", "clip_tune_config", "tune_clip"]

#: What ``ClipTuneConfig.steps`` counts: passes over all frames (STIT) or Adam steps (stylegan3-editing).
TUNE_UNITS = ("pass", "step")


@dataclass(frozen=True)
class ClipTuneConfig:
    """Settings of :func:`tune_clip` (STIT's defaults).

    Attributes:
        steps: passes over all frames (``unit="pass"``) or Adam steps (``unit="step"``).
        lr: Adam's learning rate.
        batch_size: frames per Adam step (the last batch of a pass may be smaller).
        shuffle: each pass visits the frames in a new seeded random order (else in order).
        unit: what ``steps`` counts (:data:`TUNE_UNITS`).
        l2_weight, lpips_weight: loss weights (LPIPS needs its weights; 0 without them).
        locality_weight: weight of PTI's locality regulariser (0: off, as in STIT).
        time_budget: seconds after which no further unit starts; each run makes at least one,
            and a rerun continues from the checkpoint (None: no limit; with a budget the
            number of passes depends on the machine's speed).
        checkpoint_every: units between checkpoints.
        seed: seed of the regulariser's random codes and of the shuffled frame orders.
    """

    steps: int = 300
    lr: float = 3e-5
    l2_weight: float = 10.0
    lpips_weight: float = 1.0
    locality_weight: float = 0.0
    time_budget: float | None = None
    checkpoint_every: int = 1
    seed: int = 0
    batch_size: int = 1
    shuffle: bool = False
    unit: str = "pass"

    def __post_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or not 1 <= self.steps <= 100_000:
            raise InputError(f"pti steps={self.steps!r} must be an integer in [1, 100000]")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise InputError(f"checkpoint_every={self.checkpoint_every!r} must be an integer >= 1")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or not 1 <= self.batch_size <= 256:
            raise InputError(f"pti batch_size={self.batch_size!r} must be an integer in [1, 256]")
        if self.unit not in TUNE_UNITS:
            raise InputError(f"pti unit={self.unit!r} is not one of: {', '.join(TUNE_UNITS)}")
        if not self.lr > 0:
            raise InputError(f"pti lr={self.lr!r} must be > 0")
        if self.time_budget is not None and not self.time_budget > 0:
            raise InputError(f"pti time_budget={self.time_budget!r} must be > 0 seconds (or None)")

    def refine_config(self) -> RefineConfig:
        """The per-image settings whose loss and regulariser this run shares."""
        return RefineConfig(
            steps=self.steps, lr=self.lr, l2_weight=self.l2_weight, lpips_weight=self.lpips_weight,
            locality_weight=self.locality_weight, seed=self.seed,
        )


def clip_tune_config(model, **overrides) -> ClipTuneConfig:
    """The :class:`ClipTuneConfig` for ``model``: its family's published clip PTI settings
    (``Family.refine_defaults["video_pti"]``; STIT's, the class defaults, otherwise) under
    ``overrides`` (None values are ignored)."""
    defaults = dict(family_of(model).refine_defaults.get("video_pti", {})) if model is not None else {}
    return ClipTuneConfig(**{**defaults, **{k: v for k, v in overrides.items() if v is not None}})


def _order(n: int, config: ClipTuneConfig, epoch: int) -> torch.Tensor:
    """The frame order of pass ``epoch``: seeded per pass (a resumed run redoes the same order)."""
    if not config.shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))


def _save_state(path: Path, done: int, tuned, opt, rng: torch.Generator, losses: list[float]) -> None:
    state = {
        "done": done,
        "params": {n: p.detach().cpu().clone() for n, p in _tunable(tuned)},
        "opt": opt.state_dict(),
        "rng": rng.get_state(),
        "losses": torch.tensor(losses, dtype=torch.float64),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def tune_clip(
    model,
    targets: torch.Tensor,
    pivots: torch.Tensor,
    config: ClipTuneConfig,
    state_path: str | Path,
    lpips=None,
    on_step: Callable[[int], None] | None = None,
    progress: bool = False,
    extras: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Tune ``model.decoder`` on all frames; returns ``(delta {name: tuned - base}, summary)``.

    Args:
        targets: ``[N, 3, S, S]`` uint8 frames' aligned crops (S = the model's ``resize_to``).
        pivots: ``[N, n_styles, D]`` their codes.
        state_path: checkpoint file (read when present: the run resumes from it).
        on_step: called with the number of units (passes or steps) done after each one.
        extras: ``[N, 3, 3]`` each frame's rendering transform (StyleGAN3: the frames are the
            fixed crops, fitted under their landmark transforms as stylegan3-editing's
            ``run_pti_video.py``); None: none.
    """
    if uses_offsets(model):
        raise InputError("--pti tunes one generator for the clip; a HyperStyle model already tunes one per frame")
    if len(targets) != len(pivots) or (extras is not None and len(extras) != len(pivots)):
        raise InputError(f"{len(targets)} frames but {len(pivots)} pivots")
    cfg = config.refine_config()
    if cfg.lpips_weight > 0 and lpips is None:
        raise InputError("pti lpips_weight > 0 needs LPIPS weights (or set lpips_weight=0)")
    device = next(model.parameters()).device
    base = model.decoder
    tuned = copy.deepcopy(base)
    params = _tunable(tuned)
    tuned.requires_grad_(False)
    for _, p in params:
        p.requires_grad_(True)
    tuned.style.requires_grad_(False)
    opt = torch.optim.Adam([p for _, p in params], lr=config.lr, betas=(0.9, 0.999))
    rng = torch.Generator().manual_seed(config.seed)
    state_path = Path(state_path)
    done, losses = 0, []
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        with torch.no_grad():
            own = dict(params)
            for n, v in state["params"].items():
                own[n].copy_(v.to(own[n]))
        opt.load_state_dict(state["opt"])
        rng.set_state(state["rng"])
        done, losses = int(state["done"]), state["losses"].tolist()
    start = time.perf_counter()
    stopped_by_budget, passes_here = False, 0
    base_flags = [p.requires_grad for p in base.parameters()]
    base.requires_grad_(False)
    bar = Progress(config.steps, "pti", config.unit, enabled=progress, initial=done)
    n, b = len(targets), config.batch_size
    per_pass = -(-n // b)  # batches in one pass over the frames

    def batches(unit: int) -> list[torch.Tensor]:
        """The frame-index batches of unit ``unit`` (a whole pass, or one step of a pass)."""
        epoch, first = (unit, 0) if config.unit == "pass" else divmod(unit, per_pass)
        order = _order(n, config, epoch)
        chunks = [order[i : i + b] for i in range(0, n, b)]
        return chunks if config.unit == "pass" else [chunks[first]]

    try:
        with torch.enable_grad():
            while done < config.steps:
                if passes_here and config.time_budget is not None and time.perf_counter() - start > config.time_budget:
                    stopped_by_budget = True  # checked between units: every run makes at least one
                    break
                passes_here += 1
                total, chunks = 0.0, batches(done)
                for idx in chunks:
                    target = targets[idx].to(device).float() / 127.5 - 1.0
                    pivot = pivots[idx].to(device).float()
                    extra = None if extras is None else extras[idx].to(device)
                    loss = _recon_loss(_render(model, tuned, pivot, extra=extra), target, cfg, lpips)
                    if cfg.locality_weight > 0:
                        w_r = torch.cat([_locality_codes(base, pivot[i : i + 1], cfg, rng) for i in range(len(pivot))])
                        with torch.no_grad():
                            before = _render(model, base, w_r)
                        after = _render(model, tuned, w_r)
                        reg = torch.nn.functional.mse_loss(after, before) + (lpips(after, before) if lpips is not None else 0)
                        loss = loss + cfg.locality_weight * reg
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach())
                done += 1
                losses.append(total / len(chunks))
                bar.update(1)
                if done % config.checkpoint_every == 0 or done == config.steps:
                    _save_state(state_path, done, tuned, opt, rng, losses)
                if on_step is not None:
                    on_step(done)
    finally:
        bar.close()
        for p, f in zip(base.parameters(), base_flags):
            p.requires_grad_(f)
    if stopped_by_budget:
        _save_state(state_path, done, tuned, opt, rng, losses)
    base_params = dict(base.named_parameters())
    delta = {n: (p.detach() - base_params[n].detach()).cpu() for n, p in params}
    summary = {
        "passes": done,  # units done: passes, or Adam steps with unit "step"
        "passes_asked": config.steps,
        "unit": config.unit,
        "batch_size": config.batch_size,
        "shuffle": config.shuffle,
        "stopped_by_time_budget": stopped_by_budget,
        "seconds_this_run": round(time.perf_counter() - start, 3),
        "loss_first": round(losses[0], 6) if losses else None,
        "loss_last": round(losses[-1], 6) if losses else None,
        "lr": config.lr,
        "l2_weight": config.l2_weight,
        "lpips_weight": config.lpips_weight,
        "locality_weight": config.locality_weight,
    }
    return delta, summary
