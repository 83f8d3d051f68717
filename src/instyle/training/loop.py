"""The training run: set-up, the step loop, validation, checkpoints and resume.

Step numbering: ``step`` counts completed optimizer steps (1 ... ``max_steps``);
scalars are logged when ``step % board_interval == 0``, image grids at step 1 and
every ``image_interval``, validation every ``val_interval`` and at the end (the best
model by validation ``loss`` goes to ``checkpoints/best``), and ``checkpoints/latest``
with the full training state every ``save_interval`` and at the end.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from instyle.data import (
    BadFileLog,
    EvalBatchSampler,
    InputTransform,
    PairedImageDataset,
    TrainBatchSampler,
    make_loader,
    validation_transform,
)
from instyle.data.folders import data_layout
from instyle.data.sampler import derive_seed
from instyle.losses.objective import Objective, build_objective
from instyle.models.family import InversionModel
from instyle.tasks import Task, get_task
from instyle.training.config import TrainConfig
from instyle.training.distributed import DistContext, all_mean, gather_objects, init_distributed, wrap_model
from instyle.training.hooks import FamilyTrainingState, training_hooks
from instyle.training.logger import RunLogger
from instyle.training.model import build_model, channels_last_module, prepare_for_training
from instyle.training.optim import build_optimizer
from instyle.training.presets import get_preset
from instyle.training.state import RunFolder, capture_rng, read_latest_state, restore_rng, write_checkpoint
from instyle.training.step import Precision, family_forward_loss, train_step
from instyle.utils.config import ConfigError

__all__ = ["TrainResult", "train", "validate"]

log = logging.getLogger("instyle.training")


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    step: int
    last_terms: dict[str, float] = field(default_factory=dict)
    best_val_loss: float | None = None
    best_step: int | None = None
    bad_files: int = 0


@dataclass
class Session:
    """The objects one run works with (built by :func:`_setup`)."""

    cfg: TrainConfig
    ctx: DistContext
    run: RunFolder
    model: InversionModel
    net: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    precision: Precision
    scaler: torch.amp.GradScaler | None
    step: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    extra: FamilyTrainingState | None = None


# ----------------------------------------------------------------------------- data


def resolve_data_layout(cfg: TrainConfig) -> TrainConfig:
    """``--train DIR`` / ``--val DIR`` given a folder that ``instyle prepare`` wrote (``target/`` +
    ``source/``): its two halves as target and source folders (see
    :func:`instyle.data.folders.data_layout`); an explicit ``--train-source`` is kept."""
    changes = {}
    for split in ("train", "val"):
        target, source = getattr(cfg, f"{split}_target"), getattr(cfg, f"{split}_source")
        if target and source is None:
            t, s = data_layout(target)
            if t != Path(target):
                changes[f"{split}_target"] = str(t)
                changes[f"{split}_source"] = None if s is None else str(s)
    return cfg.replace(**changes) if changes else cfg


def _dataset(cfg: TrainConfig, target: str, source: str | None, train: bool, transform) -> PairedImageDataset:
    return PairedImageDataset.from_folders(
        target,
        source,
        image_size=cfg.image_size,
        source_mode=cfg.source_mode,
        label_nc=cfg.label_nc,
        flip=cfg.flip and train,
        input_transform=transform,
    )


def _to_device(batch: dict, s: Session) -> tuple[torch.Tensor, torch.Tensor]:
    fmt = torch.channels_last if s.cfg.channels_last else torch.contiguous_format
    dev = s.ctx.device
    x = batch["x"].to(dev, non_blocking=True).float().contiguous(memory_format=fmt)
    y = batch["y"].to(dev, non_blocking=True).float()
    return x, y


# ----------------------------------------------------------------------------- set-up


def _setup(cfg: TrainConfig, run: RunFolder, resume: bool, ctx: DistContext) -> tuple[Session, dict | None]:
    state = None
    if resume:
        found = read_latest_state(run)
        if found is None:
            raise ConfigError(f"{run.root}: nothing to resume (no checkpoints/latest with a training state)")
        _, model, state = found
        model.train()  # loaded tensors have their own storage: a resume is bit-exact
    else:
        if run.resumable() is not None:
            raise ConfigError(f"{run.root} already holds a training run; resume it (--resume) or choose another --out")
        model = build_model(cfg)
    if ctx.is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        cfg.save(run.config)
    params = prepare_for_training(model, cfg)
    model.to(ctx.device)
    if cfg.channels_last:  # the encoder's convs (the generator's modulated convs reshape their weights anyway)
        channels_last_module(model).to(memory_format=torch.channels_last)
    net = wrap_model(model, ctx, cfg.sync_batchnorm)
    precision = Precision(cfg.precision, ctx.device.type)
    objective = build_objective(cfg.objective, ctx.device)
    extra = None  # a family's extra training state (e4e's, SFE's discriminator), saved with the run's state
    extras = training_hooks(cfg.family).extras
    if extras is not None:
        extra, objective = extras(cfg, model, objective, ctx.device, ctx.world_size)
    session = Session(
        cfg=cfg,
        ctx=ctx,
        run=run,
        model=model,
        net=net,
        extra=extra,
        objective=objective,
        optimizer=build_optimizer(params, cfg.optim_name, cfg.learning_rate),
        precision=precision,
        scaler=precision.make_scaler(),
    )
    if state is not None:
        _restore(session, state)
    return session, state


def _restore(s: Session, state: dict) -> None:
    s.optimizer.load_state_dict(state["optimizer"])
    if s.scaler is not None and state.get("scaler"):
        s.scaler.load_state_dict(state["scaler"])
    s.step = int(state["step"])
    if s.extra is not None:
        s.extra.load_state_dict(state.get(s.extra.key))
    s.best_val_loss = state.get("best_val_loss")
    s.best_step = state.get("best_step")
    same = {"world_size": s.ctx.world_size, "batch_size": s.cfg.batch_size, "seed": s.cfg.seed}
    changed = [f"{k} {state.get(k)} -> {v}" for k, v in same.items() if state.get(k) != v]
    if changed:
        log.warning("resuming with %s: the data order will differ from an uninterrupted run", ", ".join(changed))


def _seed_loop(s: Session, state: dict | None) -> None:
    """RNG for the step loop: restored on resume, else derived from (seed, rank)."""
    rngs = state.get("rng") if state else None
    if rngs and len(rngs) == s.ctx.world_size:
        restore_rng(rngs[s.ctx.rank])
        return
    seed = derive_seed(s.cfg.seed, s.ctx.rank, 1) if state is None else derive_seed(s.cfg.seed, s.ctx.rank, s.step)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(s: Session, loader, bad: BadFileLog, logger: RunLogger) -> dict[str, float] | None:
    """Mean over validation batches of the loss terms (eval mode), averaged over ranks."""
    s.model.eval()
    sums: dict[str, float] = {}
    batches = 0
    for i, batch in enumerate(loader):
        bad.record(batch["bad"])
        x, y = _to_device(batch, s)
        out = family_forward_loss(s.model, s.objective, s.model.latent_avg, x, y, s.cfg.n_iters_per_batch,
                                  s.cfg.randomize_noise, s.precision, train=False)
        for k, v in out.objective.terms.items():
            sums[k] = sums.get(k, 0.0) + v
        batches += 1
        if i == 0:
            logger.images("images/val", s.step, x, y, out.y_hat)
    s.model.train()
    if batches == 0:
        log.warning("the validation set yields no complete batch; skipping validation")
        return None
    return all_mean({k: v / batches for k, v in sums.items()}, s.ctx)


# ----------------------------------------------------------------------------- checkpoints


def _metadata(s: Session, terms: dict[str, float] | None) -> dict:
    return {"step": s.step, "loss_dict": terms or {}, "train_config": s.cfg.to_dict()}


def _save_latest(s: Session, terms: dict[str, float] | None, bad: BadFileLog, dataset_size: int) -> None:
    rng = gather_objects(capture_rng(), s.ctx)  # every rank takes part
    if not s.ctx.is_main:
        return
    state = {
        "step": s.step,
        "best_val_loss": s.best_val_loss,
        "best_step": s.best_step,
        "optimizer": s.optimizer.state_dict(),
        "scaler": s.scaler.state_dict() if s.scaler is not None else None,
        "rng": rng,
        "world_size": s.ctx.world_size,
        "batch_size": s.cfg.batch_size,
        "seed": s.cfg.seed,
        "dataset_size": dataset_size,
        "bad_files": sorted(bad.seen),
    }
    if s.extra is not None:
        state[s.extra.key] = s.extra.state_dict()
    write_checkpoint(s.run, "latest", s.model, _metadata(s, terms), state)


# ----------------------------------------------------------------------------- the run


def train(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    input_transform: InputTransform | None = None,
) -> TrainResult:
    """Train (or resume training of) a pSp model; see the module docstring.

    Args:
        config: the full configuration (for a resume: the run's, possibly with changes
            such as a larger ``max_steps``).
        run_dir: the run folder (created; for a resume: the existing run).
        resume: continue from ``run_dir/checkpoints/latest`` (model, optimizer,
            step, RNG states, data position, best validation loss).
        input_transform: makes encoder inputs from sources; default: the one of the
            preset named by ``config.task`` (if that preset is registered).

    Works alone or under ``torchrun`` (one process per device, same code).
    """
    ctx = init_distributed(config.device)
    succeeded = False
    try:
        result = _train(config, RunFolder(run_dir), resume, input_transform, ctx)
        succeeded = True
        return result
    finally:
        ctx.close(succeeded)


def _task_of(cfg: TrainConfig) -> Task | None:
    try:
        return get_task(cfg.task)
    except ConfigError:
        return None  # a task name without a registered preset


def _default_transform(cfg: TrainConfig) -> InputTransform | None:
    try:
        return get_preset(cfg.task).make_input_transform(cfg)
    except ConfigError:
        return None


def _train(cfg: TrainConfig, run: RunFolder, resume: bool, transform, ctx: DistContext) -> TrainResult:
    if not cfg.train_target:
        raise ConfigError("no training images: give --train DIR (config key train_target)")
    cfg = resolve_data_layout(cfg)
    transform = transform if transform is not None else _default_transform(cfg)
    train_set = _dataset(cfg, cfg.train_target, cfg.train_source, True, transform)
    val_set = (
        _dataset(cfg, cfg.val_target, cfg.val_source, False, validation_transform(transform)) if cfg.val_target else None
    )
    s, state = _setup(cfg, run, resume, ctx)
    if state is not None:
        log.info("resuming %s at step %d", run.root, s.step)
    if state is not None and state.get("dataset_size") not in (None, len(train_set)):
        log.warning("the training set changed size since the checkpoint (%s -> %d)", state["dataset_size"], len(train_set))
    pin = ctx.device.type == "cuda"
    sampler = TrainBatchSampler(len(train_set), cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size, start_batch=s.step)
    train_loader = make_loader(train_set, sampler, cfg.workers, pin)
    val_loader = None
    if val_set is not None:
        val_sampler = EvalBatchSampler(len(val_set), cfg.test_batch_size, cfg.seed, ctx.rank, ctx.world_size, cfg.val_max_batches)
        val_loader = make_loader(val_set, val_sampler, cfg.test_workers, pin)
    bad = BadFileLog()
    bad.seen.update(state.get("bad_files", []) if state else [])
    logger = RunLogger(run.root, ctx.is_main, cfg.max_steps, s.step, cfg.progress, task=_task_of(cfg))
    _seed_loop(s, state)
    terms: dict[str, float] = {}
    try:
        batches = iter(train_loader)
        while s.step < cfg.max_steps:
            batch = next(batches)
            bad.record(batch["bad"])
            x, y = _to_device(batch, s)
            d_terms = s.extra.before_step(s.model, x, s.step) if s.extra is not None else {}
            out = train_step(
                s.net, s.objective, s.optimizer, s.model.latent_avg, x, y, cfg.randomize_noise, s.precision, s.scaler,
                cfg.freeze_batchnorm, cfg.n_iters_per_batch,
            )
            if s.extra is not None:
                d_terms = {**d_terms, **s.extra.after_step(s.model, x, s.step)}
            s.step += 1
            terms = {**d_terms, **out.objective.terms}
            logger.advance(terms["loss"])
            last = s.step == cfg.max_steps
            if s.step % cfg.board_interval == 0 or last or s.step == 1:
                logger.scalars("train", s.step, {**all_mean(terms, ctx), "lr": s.optimizer.param_groups[0]["lr"]})
            if s.step % cfg.image_interval == 0 or s.step == 1:
                logger.images("images/train", s.step, x, y, out.y_hat)
            val_terms = None
            if val_loader is not None and (s.step % cfg.val_interval == 0 or last):
                val_terms = validate(s, val_loader, bad, logger)
                if val_terms is not None:
                    logger.scalars("val", s.step, val_terms)
                    if s.best_val_loss is None or val_terms["loss"] < s.best_val_loss:
                        s.best_val_loss, s.best_step = val_terms["loss"], s.step
                        if ctx.is_main:
                            write_checkpoint(run, "best", s.model, _metadata(s, val_terms))
            if s.step % cfg.effective_save_interval == 0 or last:
                _save_latest(s, val_terms or terms, bad, len(train_set))
    finally:
        logger.close()
    n_bad = len(set().union(*gather_objects(bad.seen, ctx)))
    if ctx.is_main:
        best = f", best val loss {s.best_val_loss:.4f} at step {s.best_step}" if s.best_val_loss is not None else ""
        log.info("finished %d steps%s; run folder %s", s.step, best, run.root)
        if n_bad:
            log.warning("%d unreadable image file(s) were skipped (listed above)", n_bad)
    return TrainResult(run.root, s.step, dict(terms), s.best_val_loss, s.best_step, n_bad)
