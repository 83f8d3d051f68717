"""instyle's own model format: a directory with ``config.json`` + ``model.safetensors``.

``config.json``::

    {"format": "instyle", "kind": "generator" | "stylegan3" | a model family's kind, "version": 1,
     "config": {...architecture...}, "metadata": {...free-form provenance...},
     "random_weights": false}

``random_weights`` (true for an untrained, randomly initialised model) is read back onto the
model; files written before it existed load as ``false``.

Safetensors holds only tensors (no code can run on load). Both files are written
to temporary names and renamed into place, so a crash never leaves a half-written
model behind.

The models own their format: :meth:`PSP.save_pretrained` / :meth:`PSP.from_pretrained` (and
the generator's) use the helpers here and need nothing from :mod:`instyle.interop`, which
reads the foreign formats on top of the models.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from instyle.errors import CheckpointError
from instyle.models.family import family_for_kind, model_kinds
from instyle.utils.atomic import atomic_path
from instyle.utils.files import open_regular_file, read_json_file

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "adopt_state",
    "build_empty",
    "check_finite",
    "is_own_format",
    "load_state_checked",
    "read_config",
    "read_pretrained",
    "write_pretrained",
]

FORMAT_VERSION = 1
#: The model kinds a directory may hold (``config.json``'s ``kind``).
#: The generator kinds a directory may hold; the model kinds come from the family registry
#: (:func:`model_kinds`): ``config.json``'s ``kind`` is one of :func:`kinds`.
GENERATOR_KINDS = ("generator", "stylegan3")


def kinds() -> tuple[str, ...]:
    """Every ``kind`` an own-format directory may hold."""
    return (*GENERATOR_KINDS, *model_kinds())
CONFIG_NAME = "config.json"
#: Largest ``config.json`` read (real ones are a few KB).
MAX_CONFIG_BYTES = 1 << 20
WEIGHTS_NAME = "model.safetensors"


def is_own_format(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file()


def write_pretrained(
    directory: str | Path,
    kind: str,
    config: dict,
    tensors: Mapping[str, torch.Tensor],
    metadata: dict | None = None,
    random_weights: bool = False,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` of a model of ``kind`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        mode = os.stat(tmp).st_mode  # what the atomic writer gave it (0666 minus the umask)
        save_file(tensors, str(tmp), metadata={"format": "instyle", "kind": kind})
        os.chmod(tmp, stat.S_IMODE(mode))  # safetensors replaces the file (as 0600): restore it
    doc = {"format": "instyle", "kind": kind, "version": FORMAT_VERSION, "config": config, "metadata": metadata or {}}
    doc["random_weights"] = bool(random_weights)
    with atomic_path(directory / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return directory


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG_NAME
    doc = read_json_file(path, "instyle config", CheckpointError, max_bytes=MAX_CONFIG_BYTES)
    if not isinstance(doc, dict) or doc.get("format") != "instyle" or doc.get("kind") not in kinds():
        raise CheckpointError(f"{path}: not an instyle model config (expected format 'instyle', kind {'|'.join(kinds())})")
    for key, types, words in (("version", int, "an integer"), ("config", dict, "a JSON object"),
                              ("metadata", dict, "a JSON object"), ("random_weights", bool, "true or false")):
        value = doc.get(key, {"version": 0, "config": {}, "metadata": {}, "random_weights": False}[key])
        if not isinstance(value, types) or (types is int and isinstance(value, bool)):
            raise CheckpointError(f"{path}: field {key!r} must be {words}, got {json.dumps(value)[:60]}")
    if doc.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer instyle (format version {doc['version']} > {FORMAT_VERSION}); upgrade instyle"
        )
    return doc


def _read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_NAME
    if not os.path.lexists(path):
        raise CheckpointError(f"{path}: missing weights file next to {CONFIG_NAME}")
    open_regular_file(path, "weights file", CheckpointError).close()  # a device, a pipe, unreadable: say so
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from None
    return tensors  # load_state_checked(assign=True) gives each its own storage


def read_pretrained(directory: str | Path, kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config.json document, tensors)`` of an own-format directory holding a ``kind`` model.

    Raises:
        CheckpointError: not an instyle directory, unreadable files, or another kind of model.
    """
    directory = Path(directory)
    if not is_own_format(directory):
        raise CheckpointError(
            f"{directory}: not an instyle model directory (no {CONFIG_NAME}); "
            "use instyle.load / instyle.load_generator for other checkpoint files"
        )
    doc = read_config(directory)
    if doc["kind"] != kind:
        names = {"psp": "pSp model", "generator": "generator", "stylegan3": "StyleGAN3 generator"}
        names.update({k: f"{family_for_kind(k).title} model" for k in model_kinds() if k not in names})
        hint = "instyle.load_generator" if doc["kind"] in ("generator", "stylegan3") else "instyle.load"
        raise CheckpointError(
            f"{directory}: this is a {names[doc['kind']]}, not a {names[kind]}; load it with {hint}"
        )
    return doc, _read_tensors(directory)


def build_empty(cls, *args, **kwargs):
    """Construct a model on the meta device: no memory, no random initialisation. Its
    weights must then come from :func:`load_state_checked` with ``assign=True``."""
    with torch.device("meta"):
        return cls(*args, **kwargs)


def load_state_checked(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: Any, assign: bool = False
) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and both shapes.

    ``assign=True`` adopts copies of the given tensors (for models made with :func:`build_empty`),
    each in its own freshly allocated storage: tensors read from a file may view one buffer at
    unaligned offsets, where vectorised CPU kernels round differently (a resumed run would drift
    from an uninterrupted one at the 1e-7 level) and run slower."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    dtypes = [
        f"{k}: dtype {_dtype_name(state_dict[k].dtype)}, expected {_dtype_name(own[k].dtype)}"
        for k in own
        if k in state_dict and state_dict[k].dtype != own[k].dtype
    ]
    if missing or unexpected or wrong or dtypes:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. " + "; ".join(wrong[:3]))
        if dtypes:
            parts.append(f"{len(dtypes)} tensor(s) of the wrong dtype, e.g. " + "; ".join(dtypes[:3]))
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing from the file, e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) in the file, e.g. {unexpected[:3]}")
        raise CheckpointError(f"{source}: weights do not fit the model: " + "; ".join(parts))
    check_finite(state_dict, source)
    if assign:
        state_dict = {k: v.clone(memory_format=torch.contiguous_format) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=assign)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_finite(tensors: Mapping[str, torch.Tensor | None], source: Any) -> None:
    """Refuse NaN / Inf in floating tensors: such weights silently give black images."""
    for k, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            what = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            raise CheckpointError(f"{source}: tensor '{k}' holds {what} values; the weights are corrupt")


def adopt_state(cls, make_config: Callable[[], Any], tensors: Mapping[str, torch.Tensor], source: Any) -> nn.Module:
    """``cls(make_config())`` built on meta, then given ``tensors`` (strict, shapes checked).

    A config that cannot be built or weights that do not fit raise :class:`CheckpointError`
    naming ``source``."""
    try:
        model = build_empty(cls, make_config())
        load_state_checked(model, tensors, source, assign=True)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: {e}") from None
    return model
