"""One registry of the checkpoints the model families' authors publish (timm-style tagged
entries): what each file is, what else it needs and where its authors publish it.

Each family's interop module registers its own files (``register_published(...)``); the
loader's not-found hints (:func:`instyle.interop.loading.resolve_path`),
:func:`instyle.interop.loading.published_info` and ``instyle models`` read them here. The
entries are informational: a file's architecture is always read from the file, and no sha256
is checked (the authors do not document one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from instyle.interop.readers import official_readers

__all__ = ["Published", "list_published", "published", "published_hint", "register_published"]


@dataclass(frozen=True)
class Published:
    """One published checkpoint file.

    Attributes:
        name: the file name the authors publish it under.
        family: the model family (:mod:`instyle.models.family`) it loads as.
        task: the instyle task preset it was trained for.
        domain: what it was trained on, for people (``"faces (FFHQ)"``).
        output_size: the generator's side in pixels.
        url: the authors' download page.
        companions: the other files it needs, by ``instyle.load`` keyword
            (``{"w_encoder": "faces_w_encoder.pt"}``).
        input_nc: input image channels.
        dataset_type: the original's ``opts['dataset_type']``, when documented.
        config: the registered instyle architecture it matches (``instyle.models.get_config``), if any.
        note: anything else people should know (a variant, "inverter only", ...).
    """

    name: str
    family: str
    task: str
    domain: str
    output_size: int
    url: str
    companions: dict[str, str] = field(default_factory=dict)
    input_nc: int = 3
    dataset_type: str | None = None
    config: str | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_PUBLISHED: dict[str, Published] = {}


def register_published(*entries: Published) -> None:
    """Add entries (a family's interop module calls this once for its files)."""
    for e in entries:
        if e.name in _PUBLISHED and _PUBLISHED[e.name] != e:
            raise ValueError(f"published checkpoint {e.name!r} is already registered")
        _PUBLISHED[e.name] = e


def _ensure_loaded() -> None:
    official_readers()  # imports every family's interop module, which registers its files


def published(name: str) -> Published | None:
    """The entry of a published file name (a bare name, no folder), or None."""
    _ensure_loaded()
    return _PUBLISHED.get(name)


def list_published(family: str | None = None, task: str | None = None) -> list[Published]:
    """Every entry (optionally of one family and/or task), in registration order."""
    _ensure_loaded()
    return [e for e in _PUBLISHED.values() if (family is None or e.family == family) and (task is None or e.task == task)]


def published_hint(name: str, cache: str) -> str:
    """The sentence the loader adds when a published file is not found ("" for other names)."""
    e = published(name)
    if e is None:
        return ""
    needs = ""
    if e.companions:
        needs = " It needs " + " and ".join(f"{f} ({k}=)" for k, f in e.companions.items()) + " too."
    return (
        f" It is a published {e.family} checkpoint ({e.domain}, {e.output_size}px); download it from {e.url} "
        f"and put it there or in {cache} (set INSTYLE_CACHE to change); task {e.task}.{needs}"
    )
