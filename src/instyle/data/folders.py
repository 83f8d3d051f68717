"""Finding image files and pairing source and target folders by file name."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from instyle.errors import InputError

__all__ = ["IMAGE_EXTENSIONS", "LayoutError", "list_images", "Pairs", "data_layout", "pair_folders"]

log = logging.getLogger("instyle.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")

#: The one layout of paired data: what ``instyle prepare`` writes, ``train --train DIR`` and
#: ``evaluate --data DIR`` read. ``targets/`` + ``inputs/`` is the older evaluate spelling.
LAYOUTS = (("target", "source"), ("targets", "inputs"))


class LayoutError(InputError):
    """A data folder that fits no accepted layout."""


def data_layout(folder: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(target folder, source folder or None)`` of a data folder.

    ``DIR/target/`` (+ ``DIR/source/``, paired by file name) as ``instyle prepare`` writes
    it; else ``DIR`` itself is a folder of photos, each its own input.

    Raises:
        LayoutError: a ``source/`` (or ``inputs/``) folder without its ``target/``.
    """
    d = Path(folder)
    for target, source in LAYOUTS:
        if (d / target).is_dir():
            return d / target, (d / source if (d / source).is_dir() else None)
    for target, source in LAYOUTS:
        if (d / source).is_dir():
            raise LayoutError(
                f"{d}: has {source}/ but no {target}/; expected the layout `instyle prepare` writes: "
                f"{d}/target/ (+ source/, paired by file name), or a folder of photos"
            )
    return d, None


def list_images(root: str | os.PathLike) -> dict[str, Path]:
    """Images under ``root`` (recursively, sorted), keyed by their path relative to
    ``root`` without the extension (``"sub/00001"``). Hidden files are skipped; when
    two files share a key (``a.png`` and ``a.jpg``) the first in sorted order wins."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such image folder")
    found: dict[str, Path] = {}
    dupes = 0
    for path in sorted(root.rglob("*")):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        key = path.relative_to(root).with_suffix("").as_posix()
        if key in found:
            dupes += 1
            continue
        found[key] = path
    if dupes:
        log.warning("%s: %d image(s) share a name with another extension; using the first of each", root, dupes)
    return found


@dataclass
class Pairs:
    """Matched ``(source or None, target)`` paths and what could not be matched."""

    items: list[tuple[Path | None, Path]]
    unmatched_sources: list[str] = field(default_factory=list)
    unmatched_targets: list[str] = field(default_factory=list)


def pair_folders(target_dir: str | os.PathLike, source_dir: str | os.PathLike | None = None) -> Pairs:
    """Pair ``source_dir/K.*`` with ``target_dir/K.*`` by relative stem ``K``.

    Without ``source_dir`` every target is its own source (inversion-style tasks).

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: no pair at all (the message shows examples of both sides).
    """
    targets = list_images(target_dir)
    if source_dir is None:
        pairs = Pairs([(None, p) for p in targets.values()])
    else:
        sources = list_images(source_dir)
        keys = [k for k in targets if k in sources]
        pairs = Pairs(
            [(sources[k], targets[k]) for k in keys],
            unmatched_sources=sorted(set(sources) - set(targets)),
            unmatched_targets=sorted(set(targets) - set(sources)),
        )
        if pairs.unmatched_sources or pairs.unmatched_targets:
            log.warning(
                "pairing %s with %s by file name: %d source(s) without target (e.g. %s), %d target(s) without "
                "source (e.g. %s); they are not used",
                source_dir, target_dir, len(pairs.unmatched_sources), pairs.unmatched_sources[:3],
                len(pairs.unmatched_targets), pairs.unmatched_targets[:3],
            )
    if not pairs.items:
        hint = ""
        if source_dir is not None:
            hint = f" (sources e.g. {sorted(sources)[:3]}, targets e.g. {sorted(targets)[:3]}; names must match)"
        raise InputError(f"no training pairs found in {target_dir}" + (f" and {source_dir}" if source_dir else "") + hint)
    return pairs
