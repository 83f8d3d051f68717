"""How an official (foreign-format) checkpoint of each model family is recognised and read:
one table keyed by family, filled from each family's own interop module.

The family records themselves live in :mod:`instyle.models.family`; a record names the module
that registers its reader here (``Family.reader``), which this module imports the first time
the table is asked, so ``interop/loading.py`` never names a family.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from instyle.models.family import get_family, list_families

__all__ = ["OfficialReader", "official_readers", "reader_for", "register_reader"]


@dataclass(frozen=True)
class OfficialReader:
    """One family's official-file reader.

    Attributes:
        family: the family record's name (its ``companions`` are the keywords ``read`` takes).
        format: the name :func:`instyle.interop.loading.detect_format` gives such a file.
        recognise: ``(loaded object) -> bool``.
        read: ``(checkpoint, path, resolve=..., expected=..., **companions) -> model`` (CPU).
        generator: ``(checkpoint, path) -> (generator state dict, latent_avg or None)``: the
            StyleGAN2 generator inside such a file (None: it holds none to extract).
        own: ``(folder, **companions) -> model``: how the family's own-format folders load when
            its companions also apply to them (a replacement generator); None: folders take none.
        peek: ``(loaded object) -> family name`` when one reader serves several families
            (pSp, e4e, ReStyle); None: ``family``.
        priority: readers are asked highest first (a more specific layout before a generic one).
    """

    family: str
    format: str
    recognise: Callable[[Any], bool]
    read: Callable[..., Any]
    generator: Callable[..., Any] | None = None
    own: Callable[..., Any] | None = None
    peek: Callable[[Any], str | None] | None = None
    priority: int = 0


_READERS: dict[str, OfficialReader] = {}


def register_reader(reader: OfficialReader) -> OfficialReader:
    """Add ``reader`` to the table (the family's interop module calls this once)."""
    _READERS[reader.family] = reader
    return reader


def official_readers() -> list[OfficialReader]:
    """Every registered reader, most specific first."""
    for name in list_families():
        module = get_family(name).reader
        if module:
            importlib.import_module(module)
    return sorted(_READERS.values(), key=lambda r: -r.priority)


def reader_for(obj: Any) -> OfficialReader | None:
    """The reader that recognises a loaded checkpoint object, or None."""
    if not isinstance(obj, Mapping):
        return None
    return next((r for r in official_readers() if r.recognise(obj)), None)
