"""Deterministic, resumable, rank-sharded batch order.

Every epoch is a permutation seeded by ``(seed, epoch)``; global batch ``i`` of the
run is ``batch_size * world_size`` consecutive entries of it, and rank ``r`` takes
its ``r``-th slice. Each entry carries a per-sample seed derived from ``(seed,
epoch, position)`` that drives that sample's random augmentations. So the data a
run sees depends only on the seed and the batch counter: a resumed run, a run with
a different number of workers, and a 2-process run (vs. one process on the
combined batch) all see exactly the same samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from instyle.utils.config import ConfigError

__all__ = ["derive_seed", "TrainBatchSampler", "EvalBatchSampler"]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing integers (stable across processes and Python versions)."""
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class TrainBatchSampler(Sampler):
    """Endless shuffled batches of ``(index, sample_seed)``, starting at global batch
    ``start_batch`` (the number of optimizer steps already taken).

    Incomplete final batches of an epoch are dropped (as the original's ``drop_last``).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, start_batch: int = 0):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler setup: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.global_batch = batch_size * world_size
        if n < self.global_batch:
            raise ConfigError(
                f"the training set has {n} image(s), fewer than one batch of {batch_size} x {world_size} process(es)"
            )
        self.batches_per_epoch = n // self.global_batch

    def position(self, batch: int) -> tuple[int, int]:
        """``(epoch, batch within epoch)`` of global batch number ``batch``."""
        return divmod(batch, self.batches_per_epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch, -1)))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, within = self.position(self.start_batch)
        while True:
            perm = self._permutation(epoch).tolist()
            for b in range(within, self.batches_per_epoch):
                start = b * self.global_batch + self.rank * self.batch_size
                yield [(perm[p], derive_seed(self.seed, epoch, p)) for p in range(start, start + self.batch_size)]
            epoch, within = epoch + 1, 0


class EvalBatchSampler(Sampler):
    """One ordered pass of ``(index, sample_seed)`` batches, sharded over ranks.

    With several processes only complete global batches are used (every rank must see
    the same number of batches); a single process also gets the final partial batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, max_batches: int | None = None):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        global_batch = batch_size * world_size
        count = n // global_batch if world_size > 1 else -(-n // batch_size)
        self.count = count if max_batches is None else min(count, max_batches)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        global_batch = self.batch_size * self.world_size
        for b in range(self.count):
            start = b * global_batch + self.rank * self.batch_size
            stop = min(start + self.batch_size, self.n)
            yield [(i, derive_seed(self.seed, -1, i)) for i in range(start, stop)]
