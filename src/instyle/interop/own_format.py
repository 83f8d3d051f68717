"""instyle's own model format: a directory with ``config.json`` + ``model.safetensors``.

``config.json``::

    {"format": "instyle", "kind": "psp" | "generator" | "hyperstyle", "version": 1,
     "config": {...architecture...}, "metadata": {...free-form provenance...}}

Safetensors holds only tensors (no code can run on load). Both files are written
to temporary names and renamed into place, so a crash never leaves a half-written
model behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from instyle.interop.errors import CheckpointError
from instyle.models.psp import PSP, PSPConfig
from instyle.models.stylegan2 import Generator, GeneratorConfig
from instyle.utils.atomic import atomic_path

__all__ = ["FORMAT_VERSION", "save_psp", "save_generator", "save_hyperstyle", "load_own", "is_own_format", "read_config"]
KINDS = ("psp", "generator", "hyperstyle")

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def is_own_format(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file()


def _write(directory: Path, kind: str, config: dict, tensors: dict[str, torch.Tensor], metadata: dict | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "instyle", "kind": kind})
    doc = {"format": "instyle", "kind": kind, "version": FORMAT_VERSION, "config": config, "metadata": metadata or {}}
    with atomic_path(directory / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return directory


def save_psp(model: PSP, directory: str | Path, extra: dict | None = None) -> Path:
    """Save a :class:`PSP` (state dict incl. ``latent_avg``) in the own format."""
    return _write(Path(directory), "psp", model.config.to_dict(), model.state_dict(), extra)


def save_hyperstyle(model, directory: str | Path, extra: dict | None = None) -> Path:
    """Save a :class:`~instyle.models.hyperstyle.HyperStyle` (W-encoder, hypernet, generator,
    ``latent_avg``) in the own format: one self-contained directory."""
    return _write(Path(directory), "hyperstyle", model.config.to_dict(), model.state_dict(), extra)


def save_generator(generator: Generator, directory: str | Path, extra: dict | None = None) -> Path:
    """Save a :class:`Generator` (and its ``latent_avg`` when known) in the own format."""
    tensors = dict(generator.state_dict())
    if generator.latent_avg is not None:
        tensors["latent_avg"] = generator.latent_avg
    return _write(Path(directory), "generator", generator.config.to_dict(), tensors, extra)


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG_NAME
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable instyle config ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != "instyle" or doc.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: not an instyle model config (expected format 'instyle', kind {'|'.join(KINDS)})")
    if int(doc.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer instyle (format version {doc['version']} > {FORMAT_VERSION}); upgrade instyle"
        )
    return doc


def _read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file next to {CONFIG_NAME}")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from None
    # Tensors read from the file may sit at unaligned addresses inside one buffer; copy each
    # into its own storage so kernels take their aligned (bit-stable, faster) paths.
    return {k: v.clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}


def load_own(directory: str | Path):
    """Load an own-format directory into a :class:`PSP`, :class:`Generator` or HyperStyle (CPU, eval)."""
    directory = Path(directory)
    doc = read_config(directory)
    tensors = _read_tensors(directory)
    from instyle.interop.loading import build_empty, load_state_checked

    try:
        if doc["kind"] == "psp":
            config = PSPConfig.from_dict(doc["config"])
            model = build_empty(PSP, config)
            load_state_checked(model, tensors, directory, assign=True)
            model.sync_decoder_latent_avg()
        elif doc["kind"] == "hyperstyle":
            from instyle.models.hyperstyle import HyperStyle, HyperStyleConfig

            model = build_empty(HyperStyle, HyperStyleConfig.from_dict(doc["config"]))
            load_state_checked(model, tensors, directory, assign=True)
            model.sync_decoder_latent_avg()
        else:
            config = GeneratorConfig.from_dict(doc["config"])
            model = build_empty(Generator, config)
            avg = tensors.pop("latent_avg", None)
            load_state_checked(model, tensors, directory, assign=True)
            if avg is not None:
                model.latent_avg = avg
    except (ValueError, TypeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{directory}: {e}") from None
    model.metadata = doc.get("metadata", {})
    return model.eval()
