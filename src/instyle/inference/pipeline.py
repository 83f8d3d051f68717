"""Streaming helpers for batch jobs over many files.

* :func:`prefetch_batches` reads and preprocesses the next batches in worker threads
  while the model runs (PIL decoding and resizing release the GIL), keeping at most
  ``prefetch`` batches in memory.
* :class:`BackgroundWriter` writes outputs in a thread with a bounded queue, so the
  model never waits for the disk and memory stays flat over thousands of images.
* :func:`shard` splits work across ``torchrun`` processes (``RANK``/``WORLD_SIZE``).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

T = TypeVar("T")

__all__ = ["Batch", "BackgroundWriter", "prefetch_batches", "shard", "world"]


@dataclass
class Batch:
    """A prepared batch: items that loaded, their tensors, and ``(item, message)`` failures."""

    items: list[Any] = field(default_factory=list)
    tensors: torch.Tensor | None = None
    failures: list[tuple[Any, str]] = field(default_factory=list)


def _prepare_batch(items: Sequence[Any], prepare: Callable[[Any], torch.Tensor], errors: tuple[type, ...]) -> Batch:
    batch = Batch()
    tensors = []
    for item in items:
        try:
            tensors.append(prepare(item))
            batch.items.append(item)
        except errors as e:
            batch.failures.append((item, str(e)))
    if tensors:
        batch.tensors = torch.stack(tensors)
    return batch


def prefetch_batches(
    items: Sequence[Any],
    prepare: Callable[[Any], torch.Tensor],
    batch_size: int,
    errors: tuple[type, ...] = (ValueError, OSError),
    prefetch: int = 2,
    workers: int = 2,
) -> Iterator[Batch]:
    """Yield :class:`Batch` es of ``items`` prepared in background threads, in order.

    ``prepare(item) -> tensor`` may raise one of ``errors``; such items are reported in
    ``Batch.failures`` and the rest of the batch still comes through.
    """
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: list[Future] = []
        next_chunk = 0
        while next_chunk < len(chunks) and len(pending) < prefetch + 1:
            pending.append(pool.submit(_prepare_batch, chunks[next_chunk], prepare, errors))
            next_chunk += 1
        while pending:
            batch = pending.pop(0).result()
            if next_chunk < len(chunks):
                pending.append(pool.submit(_prepare_batch, chunks[next_chunk], prepare, errors))
                next_chunk += 1
            yield batch


class BackgroundWriter:
    """Run write jobs in one background thread; at most ``max_pending`` jobs are queued
    (``submit`` blocks beyond that). Errors are collected, never lost::

        with BackgroundWriter() as writer:
            writer.submit(save_image, img, path, tag=path)
        writer.errors   # [(tag, exception), ...]
    """

    def __init__(self, max_pending: int = 16):
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.errors: list[tuple[Any, BaseException]] = []
        self.done = 0
        self._thread = threading.Thread(target=self._run, name="instyle-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                self._queue.task_done()
                return
            fn, args, kwargs, tag = job
            try:
                fn(*args, **kwargs)
                self.done += 1
            except Exception as e:  # reported by the caller, the job stream goes on
                self.errors.append((tag, e))
            finally:
                self._queue.task_done()

    def submit(self, fn: Callable[..., Any], *args, tag: Any = None, **kwargs) -> None:
        self._queue.put((fn, args, kwargs, tag))

    def close(self) -> None:
        """Wait for every queued job, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` from the ``torchrun`` environment (``(0, 1)`` otherwise)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard(items: Sequence[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    """This process's share of ``items`` (every ``world_size``-th, starting at ``rank``)."""
    r, w = world()
    rank = r if rank is None else rank
    world_size = w if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return list(items[rank::world_size])
