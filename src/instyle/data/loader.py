"""DataLoader construction shared by training and validation."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from instyle.data.dataset import collate_pairs

__all__ = ["make_loader"]


def _worker_init(_worker_id: int) -> None:
    # Decoding is single-threaded per worker; avoid oversubscribing the cores.
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, batch_sampler: Sampler, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A loader over ``batch_sampler``'s ``(index, seed)`` batches.

    It owns a private ``torch.Generator``, so creating it never consumes the global
    RNG (whose state is part of a run's resumable state); all sample randomness comes
    from the per-sample seeds.
    """
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=collate_pairs,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(0),
    )
