"""Streaming helpers for batch jobs over many files.

* :func:`prefetch_batches` reads and preprocesses the next batches in worker threads
  while the model runs (PIL decoding and resizing release the GIL), keeping at most
  ``prefetch`` batches in memory.
* :class:`BackgroundWriter` writes outputs in a thread with a bounded queue, so the
  model never waits for the disk and memory stays flat over thousands of images.
* :func:`shard` splits work across ``torchrun`` processes (``RANK``/``WORLD_SIZE``).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image

from instyle.errors import InputError, InstyleError
from instyle.inference.encoding import encode, render, save_encoding
from instyle.inference.io import (
    InputFile,
    load_image,
    make_grid,
    output_names,
    save_image,
    tensor_to_pil,
)
from instyle.inference.offsets import uses_offsets
from instyle.inference.pasteback import ALIGNED_DIR, BLENDS, INDEX_NAME, PASTED_DIR, face_record, paste_result
from instyle.inference.preprocess import align_input_face, input_preview, prepare_input
from instyle.models.family import family_of
from instyle.models.runtime import model_precision
from instyle.utils.atomic import atomic_write_bytes
from instyle.utils.config import ConfigError
from instyle.utils.progress import Progress

T = TypeVar("T")

__all__ = [
    "Batch",
    "BackgroundWriter",
    "EncodeOptions",
    "OutputFolderError",
    "check_output_folder",
    "encode_files",
    "prefetch_batches",
    "prepare_output_folder",
    "shard",
    "world",
]


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


# --------------------------------------------------------------------------- batch jobs

#: errno values after which no further file can be written (full disk, quota, read-only).
FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class OutputFolderError(InputError):
    """The output folder cannot be used: it is an input folder, would overwrite an input, or
    cannot be created. ``str(e)`` is one line naming the folder or file."""


def prepare_output_folder(out: str | os.PathLike, files: Sequence[InputFile], planned: Sequence[Path] = ()) -> Path:
    """Create ``out`` after checking that no planned output path is an input file.

    Raises:
        OutputFolderError: ``out`` is one of the input folders (its photos would be
            overwritten), a planned output is an input file, or ``out`` cannot be created.
    """
    out = Path(out)
    if out.resolve() in {f.root.resolve() for f in files}:
        raise OutputFolderError(
            f"--out {out} is an input folder: its files would be overwritten; choose another folder (e.g. {out / 'out'})"
        )
    inputs = {f.path.resolve() for f in files}
    for p in planned:
        if Path(p).resolve() in inputs:
            raise OutputFolderError(f"{p}: this output would overwrite an input file; choose another --out folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".instyle-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise OutputFolderError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    return out


def check_output_folder(out: str | os.PathLike) -> None:
    """Fail fast, before any model loads, when ``out`` can neither be used nor created
    (a file in the way, no permission); creates nothing (see :func:`prepare_output_folder`).

    Raises:
        OutputFolderError: one line naming the folder.
    """
    p = Path(out).absolute()
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputFolderError(f"--out {out}: cannot write there ({probe} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputFolderError(f"--out {out}: cannot write there (no permission in {probe})")


@dataclass
class EncodeOptions:
    """Settings of :func:`encode_files` (validated on creation)."""

    batch_size: int = 4
    save_latents: bool = False
    full_resolution: bool = False
    side_by_side: bool = False
    grid: bool = False
    align: bool = False
    format: str = "png"
    #: ReStyle / HyperStyle refinement steps (None: the model's default; pSp and e4e: one pass)
    iterations: int | None = None
    #: latent file type: ``npy`` (the W+ code) or ``npz`` (with HyperStyle's generator offsets)
    latent_format: str = "npy"
    #: super-resolution models: down-sample each full photo by this factor first (the original's
    #: ``--resize_factors``); with ``side_by_side`` the row is source | down-sampled | output
    resize_factor: int | None = None
    #: encode only the first N inputs (the original's ``--n_images``)
    limit: int | None = None
    #: with ``align``: also paste each reconstruction back into its photo (``pasted/<name>.<format>``)
    paste_back: bool = False
    #: how a pasted result meets its photo: ``feather`` or ``poisson`` (:mod:`~instyle.inference.pasteback`)
    blend: str = "feather"

    def __post_init__(self) -> None:

        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r} must be an integer >= 1")
        if self.format not in ("png", "jpg"):
            raise ConfigError(f"format={self.format!r} is not one of: png, jpg")
        if self.paste_back and not self.align:
            raise ConfigError("paste_back needs align (--paste-back --align): only aligned faces know where they came from")
        if self.blend not in BLENDS:
            raise ConfigError(f"blend={self.blend!r} is not one of: {', '.join(BLENDS)}")
        for name in ("resize_factor", "limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name}={value!r} must be an integer >= 1")

    def outputs(self, name: str) -> list[str]:
        """Paths (relative to the output folder) written for the input named ``name``."""
        return (
            [f"{name}.{self.format}"]
            + ([f"latents/{name}.{self.latent_format}"] if self.save_latents else [])
            + ([f"{ALIGNED_DIR}/{name}.png"] if self.align else [])
            + ([f"{PASTED_DIR}/{name}.{self.format}"] if self.paste_back else [])
        )


def is_fatal_write_error(e: BaseException) -> bool:
    """A write error that stops the job (disk full, read-only file system, ...)."""
    return isinstance(e, OSError) and e.errno in FATAL_WRITE_ERRNOS


def _iterations(model, asked: int | None) -> int:
    """The refinement steps an encode ran (an iterative family's default: the model's)."""
    return family_of(model).iterations(asked, model)


def encode_files(
    model,
    files: Sequence[InputFile],
    out: str | os.PathLike,
    options: EncodeOptions,
    *,
    log: Callable[[str], None],
    progress: bool = False,
    meta: dict | None = None,
    skipped: Sequence[str] = (),
) -> dict:
    """Encode ``files`` with a pSp ``model`` and write reconstructions (and latents) under ``out``.

    Output names keep each file's path relative to its input root (:func:`output_names`); bad
    inputs are reported through ``log`` (one line each) and skipped; a full disk stops the job.
    Under ``torchrun`` this process takes its :func:`shard` of the files.

    ``meta`` (e.g. the checkpoint's name) is copied into the summary; ``skipped`` lists inputs
    already refused while collecting them (counted as failed, by process 0).

    Returns:
        The summary (also written atomically to ``out/summary[_rankN].json``): counts, timing
        and ``files``: one ``{"input", "outputs", "status", "error"}`` record per file.

    Raises:
        OutputFolderError: before any work, when ``out`` is unusable (see :func:`prepare_output_folder`).
    """

    if uses_offsets(model):  # each latent carries its image's generator offsets
        options = dataclasses.replace(options, latent_format="npz")
    if options.limit is not None:
        files = list(files)[: options.limit]
    rank, world_size = world()
    suffix = "" if world_size == 1 else f"_rank{rank}"
    reserved = [f"grid{suffix}.png", f"summary{suffix}.json", f"{ALIGNED_DIR}/{INDEX_NAME}"]
    try:
        names = output_names(files, options.outputs, reserved)
    except ValueError as e:
        raise OutputFolderError(str(e)) from None
    out = prepare_output_folder(out, files, [Path(out) / o for n in names for o in options.outputs(n)])
    # Names are fixed over the whole input list, so every torchrun process agrees on them.
    records = [{"input": str(f.path), "outputs": options.outputs(n), "status": "pending", "error": None} for f, n in zip(files, names)]
    items = shard(list(enumerate(names)))
    t0 = time.perf_counter()
    grid_rows, stopped = _encode_items(model, files, items, records, out, options, log, progress)
    elapsed = time.perf_counter() - t0
    if grid_rows and not stopped:
        _write_or_log(log, lambda: save_image(_pair_grid(grid_rows), out / reserved[0]), out / reserved[0])
    mine = [records[i] for i, _ in items]
    done = sum(r["status"] == "encoded" for r in mine)
    summary = {
        **(meta or {}),
        "device": str(next(model.parameters()).device),
        "encoded": done,
        "failed": sum(r["status"] == "failed" for r in mine) + (len(skipped) if rank == 0 else 0),
        "not_done": sum(r["status"] == "pending" for r in mine),
        "seconds": round(elapsed, 3),
        "images_per_second": round(done / elapsed, 3) if elapsed > 0 else None,
        "output_size": model.output_size if options.full_resolution else model.pooled_size,
        "precision": model_precision(model),
        "iterations": _iterations(model, options.iterations),
        "rank": rank,
        "world_size": world_size,
        "files": mine,
        "skipped": list(skipped) if rank == 0 else [],
    }
    if options.grid:  # the grid holds the first 16 images: say so where it may surprise
        summary["grid"] = {"file": reserved[0], "images": len(grid_rows) if not stopped else 0}
    for r in mine:
        if r["status"] != "encoded":
            r["outputs"] = []
    summary["summary_written"] = _write_or_log(
        log, lambda: atomic_write_bytes(out / reserved[1], (json.dumps(summary, indent=2) + "\n").encode()), out / reserved[1]
    )
    return summary


def _write_or_log(log: Callable[[str], None], write: Callable[[], Any], path: Path) -> bool:
    try:
        write()
        return True
    except OSError as e:
        log(f"could not write {path}: {e.strerror or e}")
        return False


def input_preparer(model, align: bool, resize_factor: int | None = None, faces: dict | None = None) -> Callable[[Path], torch.Tensor]:
    """``path -> network input``; with ``align`` and a ``faces`` dict, each aligned face is
    kept there by path (its crop and quad: what paste-back needs)."""

    def prepare(path: Path) -> torch.Tensor:
        try:
            if align:
                face = align_input_face(path, model.input_size)
                if faces is not None:
                    faces[path] = face
                return prepare_input(face.image, model.config, resize_factor)
            return prepare_input(path, model.config, resize_factor)
        except (InstyleError, OSError) as e:  # a bad file; a bug elsewhere is not "a skipped file"
            raise InputError(str(e) if str(path) in str(e) else f"{path}: {e}") from None

    return prepare


def _encode_items(model, files, items, records, out: Path, options: EncodeOptions, log, progress: bool):
    """The encode loop of :func:`encode_files`: ``(grid rows, whether a full disk stopped it)``."""
    device = next(model.parameters()).device
    faces: dict = {}
    prepare = input_preparer(model, options.align, options.resize_factor, faces)
    alignment: dict = {}
    grid_rows: list[list] = []
    stopped = False
    bar = Progress(len(items), "encode", "img", enabled=progress)
    batches = prefetch_batches(items, lambda item: prepare(files[item[0]].path), options.batch_size, errors=(InputError,))
    with BackgroundWriter() as writer:
        for batch in batches:
            for (i, _), msg in batch.failures:
                records[i].update(status="failed", error=msg)
                log(f"skipped {msg}")
            if batch.tensors is not None:
                x = batch.tensors.to(device)
                with torch.inference_mode():
                    enc = encode(model, x, options.iterations)
                    y = render(model, enc, resize=not options.full_resolution)
                for k, ((i, name), xi, yi) in enumerate(zip(batch.items, x, y)):
                    recon = tensor_to_pil(yi)
                    want_grid = options.grid and len(grid_rows) < 16
                    preview = input_preview(xi, model.config) if options.side_by_side or want_grid else None
                    row = [preview, recon]
                    if options.side_by_side and options.resize_factor:  # source | down-sampled | output
                        row.insert(0, load_image(files[i].path, mode="RGB").resize(recon.size, Image.Resampling.BILINEAR))
                    image = make_grid([row], cell=recon.size[1], pad=0) if options.side_by_side else recon
                    records[i]["status"] = "encoded"
                    writer.submit(save_image, image, out / f"{name}.{options.format}", tag=i)
                    if options.save_latents:
                        latent = out / "latents" / f"{name}.{options.latent_format}"
                        writer.submit(save_encoding, latent, enc[k].to("cpu"), tag=i)
                    if options.align:
                        face = faces.pop(files[i].path)
                        writer.submit(save_image, face.image, out / ALIGNED_DIR / f"{name}.png", tag=i)
                        alignment[f"{name}.png"] = face_record(face, files[i].path)
                        if options.paste_back:
                            writer.submit(_paste_and_save, alignment[f"{name}.png"], recon,
                                          out / PASTED_DIR / f"{name}.{options.format}", options.blend, tag=i)
                    if want_grid:
                        grid_rows.append([preview, recon])
            bar.update(len(batch.items) + len(batch.failures))
            if any(is_fatal_write_error(e) for _, e in writer.errors):
                stopped = True
                break
    batches.close()
    bar.close()
    _record_write_errors(writer.errors, records, files, log)
    if alignment:
        index = out / ALIGNED_DIR / INDEX_NAME
        _write_or_log(log, lambda: atomic_write_bytes(index, (json.dumps(alignment, indent=1) + "\n").encode()), index)
    return grid_rows, stopped


def _paste_and_save(record: dict, recon, path: Path, blend: str = "feather") -> None:
    save_image(paste_result(record, recon, blend=blend), path)


def _record_write_errors(errors, records, files, log) -> None:
    """Mark files whose outputs failed to write; a full disk is reported once, not per file."""
    fatal_logged = False
    for i, e in errors:
        records[i].update(status="failed", error=f"could not write output: {e.strerror if isinstance(e, OSError) else e}")
        if is_fatal_write_error(e):
            if not fatal_logged:
                log(f"could not write output for {files[i].path}: {e.strerror or e}; stopped (outputs written so far are complete)")
            fatal_logged = True
        else:
            log(f"could not write output for {files[i].path}: {e}")


def _pair_grid(pairs: list[list]):
    """Input|output pairs laid out four pairs per row."""
    rows = [sum(pairs[i : i + 4], []) for i in range(0, len(pairs), 4)]
    return make_grid(rows, cell=256)
