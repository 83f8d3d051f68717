"""Single-process and ``torchrun`` multi-process training through the same code path.

Launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the process group is
initialised (NCCL on CUDA, gloo on CPU), each rank drives one device, gradients are
all-reduced by ``DistributedDataParallel`` and only rank 0 logs and writes files.
Alone, every collective here is a no-op.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from instyle.utils.config import ConfigError
from instyle.utils.device import resolve_device

__all__ = ["DistContext", "init_distributed", "wrap_model", "all_mean", "average_gradients", "gather_objects",
           "broadcast_object"]


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self, succeeded: bool = True) -> None:
        """Tear the process group down after a run.

        After a successful run every rank first meets at a barrier, so that no rank closes
        its connections while a peer is still finishing the last collective (a CI run once
        saw a gloo rank abort at teardown: "terminate called without an active exception"), and
        whatever still holds the group (a ``DistributedDataParallel`` wrapper kept alive by
        a reference cycle) is collected. After a failed run the group is destroyed at once:
        a peer may never reach the barrier.
        """
        if not (self.enabled and dist.is_initialized()):
            return
        if succeeded:
            dist.barrier()
            gc.collect()
        dist.destroy_process_group()


def init_distributed(device: str = "auto") -> DistContext:
    """Set up this process from the ``torchrun`` environment (or alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return DistContext(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"multi-process training supports CUDA and CPU devices, not {dev.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def wrap_model(model: nn.Module, ctx: DistContext, sync_batchnorm: bool = False) -> nn.Module:
    """``model`` itself alone, else ``DistributedDataParallel(model)``.

    ``sync_batchnorm`` converts BatchNorm layers to ``SyncBatchNorm`` (CUDA only: PyTorch
    cannot synchronise BatchNorm statistics on the CPU). Parameter names are unchanged.
    """
    if sync_batchnorm:
        if ctx.device.type != "cuda":
            raise ConfigError("sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm is GPU-only); set sync_batchnorm=false")
        if ctx.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not ctx.enabled:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_mean(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average a dict of floats over ranks (every rank must pass the same keys)."""
    if not ctx.enabled or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist())}


def average_gradients(module: nn.Module, world_size: int) -> None:
    """Replace the gradients of ``module``'s parameters by their mean over the processes (what
    DDP does during backward), for a module trained outside the DDP-wrapped model (SFE's
    discriminator); every process must call it with the same parameters holding gradients.
    A no-op alone."""
    if world_size <= 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` alone)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
