"""The models a demo server offers: loaded once at start, chosen by name, never by path.

Visitors pick a model from the names the server was started with; a name that is not in
the store is refused, so no visitor-typed path ever reaches the loader.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from instyle.inference.editing import named_file
from instyle.models.family import InversionModel, family_of
from instyle.utils.device import resolve_device

__all__ = ["QUICKSTART_NAME", "ModelEntry", "ModelStore", "split_named"]

#: Name of the random-weight model used when the server is started without checkpoints.
QUICKSTART_NAME = "quickstart (random weights)"


@dataclass(frozen=True)
class ModelEntry:
    """One loaded model.

    Attributes:
        name: the label visitors choose (``NAME`` of ``NAME=PATH``, else the file or folder
            name, made unique).
        model: the model (:class:`~instyle.models.family.InversionModel`), in eval mode on the server's device.
        source: where it was loaded from (``None`` for the built-in random-weight model).
        random_weights: True for an untrained model (the quickstart model, or a checkpoint whose
            files say so): its outputs are textures, not faces.
    """

    name: str
    model: InversionModel
    source: str | None = None
    random_weights: bool = False

    @property
    def task(self) -> str:
        return self.model.input_spec.task

    def describe(self) -> dict:
        """JSON-able summary (shown on the page and by ``/healthz``)."""
        m = self.model
        return {
            "name": self.name,
            "task": m.input_spec.task,
            "input_channels": m.input_nc,
            "input_size": m.input_size,
            "output_size": m.pooled_size,
            "n_styles": m.n_styles,
            "family": self.family,
            "iterations": self.iterations,
            "random_weights": self.random_weights,
        }

    @property
    def family(self) -> str:
        return family_of(self.model).name

    @property
    def iterations(self) -> int:
        """The encoding steps a request runs: an iterative family's model's, else 1."""
        return family_of(self.model).iterations(None, self.model)


def split_named(spec: str | os.PathLike) -> tuple[str | None, Path]:
    """``"NAME=PATH"`` -> ``(NAME, PATH)``; a plain path (even an existing one with ``=`` in
    its name) -> ``(None, path)``."""
    name, path = named_file(str(spec))
    return (name.strip() or None, Path(path)) if path != str(spec) else (None, Path(spec))


def _unique_names(named: Sequence[tuple[str | None, Path]]) -> list[str]:
    """The given names (each must be unique), the others from the file or folder name,
    numbered ``name (2)`` where they repeat."""
    given = [n for n, _ in named if n]
    repeated = sorted({n for n in given if given.count(n) > 1})
    if repeated:
        raise ValueError(f"model names must be unique; given more than once: {', '.join(repeated)}")
    names, used = [], set(given)
    for name, p in named:
        if name is None:
            base = p.name.rstrip("/") or str(p)
            name, k = base, 1
            while name in used:
                k += 1
                name = f"{base} ({k})"
            used.add(name)
        names.append(name)
    return names


class ModelStore:
    """Named models, each loaded exactly once.

    Args:
        entries: the models; the first is the default choice.
    """

    def __init__(self, entries: Sequence[ModelEntry]):
        if not entries:
            raise ValueError("a ModelStore needs at least one model")
        self._entries = {e.name: e for e in entries}
        if len(self._entries) != len(entries):
            raise ValueError(f"model names must be unique, got {[e.name for e in entries]}")
        self.device = next(entries[0].model.parameters()).device

    def set_iterations(self, n: int) -> None:
        """Refinement steps for every model of an iterative family here (the others take one step)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"iterations={n!r} must be a positive integer")
        for entry in self._entries.values():
            if family_of(entry.model).iterative:
                entry.model.default_iterations = n

    @classmethod
    def from_checkpoints(
        cls, checkpoints: Sequence[str | os.PathLike], device: str | torch.device = "auto", w_encoder: str | os.PathLike | None = None,
        e4e: str | os.PathLike | None = None, generator: str | os.PathLike | None = None,
    ) -> ModelStore:
        """Load every checkpoint (official ``.pt`` or instyle folder) once; none -> :meth:`quickstart`.

        Each is a path (named after its file or folder) or ``"NAME=PATH"`` (named ``NAME``).
        Companion files go to the official checkpoints whose family takes them
        (``Family.companions``; instyle folders carry their own): ``w_encoder`` the W-encoder of
        HyperStyle files, ``e4e`` and ``generator`` the e4e and StyleGAN2 files of
        StyleFeatureEditor files, ``generator`` the replacement generator of an encoder over StyleGAN3.

        Raises:
            instyle.CheckpointError: a checkpoint cannot be loaded (the message names it).
            ValueError: a companion file none of the checkpoints takes.
        """
        if not checkpoints:
            return cls.quickstart(device)
        from instyle.interop import load_psp
        from instyle.interop.loading import peek_family, resolve_path
        from instyle.models.family import get_family
        from instyle.models.own_format import is_own_format

        dev = resolve_device(device)
        named = [split_named(c) for c in checkpoints]
        given = {k: v for k, v in (("w_encoder", w_encoder), ("e4e", e4e), ("generator", generator)) if v is not None}
        needs = []
        for _, p in named:
            found = peek_family(p) if given and not is_own_format(resolve_path(p)) else None
            takes = get_family(found).companions if found is not None else {}
            needs.append({k: v for k, v in given.items() if k in takes})
        for k, v in given.items():
            if not any(k in n for n in needs):
                raise ValueError(f"--{k.replace('_', '-')} {v}: none of the checkpoints is an official file that needs it")
        entries = []
        for name, (_, p), need in zip(_unique_names(named), named, needs):
            model = load_psp(p, device=dev, **need).eval()
            entries.append(ModelEntry(name, model, source=str(p), random_weights=bool(model.random_weights)))
        return cls(entries)

    @classmethod
    def quickstart(cls, device: str | torch.device = "auto", config: str = "quickstart", seed: int = 0) -> ModelStore:
        """The store of ``instyle serve`` without checkpoints: one random-weight model."""
        from instyle.models import get_config
        from instyle.models.init import random_psp

        model = random_psp(get_config(config), seed=seed).to(resolve_device(device)).eval()
        return cls([ModelEntry(QUICKSTART_NAME, model, source=None, random_weights=True)])

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    @property
    def default(self) -> str:
        return self.names[0]

    def names_for(self, task: str | None = None) -> list[str]:
        """Names of the models trained for ``task`` (all models when ``None``)."""
        return [n for n, e in self._entries.items() if task is None or e.task == task]

    @property
    def tasks(self) -> list[str]:
        """Distinct tasks of the stored models, in store order."""
        return list(dict.fromkeys(e.task for e in self._entries.values()))

    @property
    def any_random(self) -> bool:
        return any(e.random_weights for e in self._entries.values())

    def get(self, name: str | None) -> ModelEntry:
        """The entry called ``name`` (``None`` or empty: the default).

        Raises:
            DemoInputError: unknown name (lists the available ones).
        """
        from instyle.demo.inputs import DemoInputError

        if not name:
            name = self.default
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise DemoInputError(f"unknown model {name!r}; this server offers: {', '.join(self.names)}") from None

    def describe(self) -> list[dict]:
        return [e.describe() for e in self._entries.values()]
