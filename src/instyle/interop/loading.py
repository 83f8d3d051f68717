"""Load pSp models and StyleGAN2 generators from any supported file.

Supported inputs:

* instyle's own format (a directory with ``config.json`` + ``model.safetensors``),
* official pixel2style2pixel checkpoints (``{'state_dict', 'opts', 'latent_avg'?}``),
* rosinality StyleGAN2 checkpoints (``{'g_ema', 'g', 'd', 'args', ...}``), generators only,
* NVIDIA StyleGAN2-ADA ``.pkl`` files, generators only (see :mod:`instyle.interop.nvidia`).

The architecture always comes from the file. Files are read without executing code.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from instyle.errors import CheckpointError
from instyle.interop.families import check_expected, read_official_psp
from instyle.interop.keymaps import (
    ArchitectureError,
    generator_config_from_state_dict,
)
from instyle.interop.nvidia import load_nvidia_generator
from instyle.interop.published import published, published_hint
from instyle.interop.readers import official_readers, reader_for
from instyle.interop.safe_load import safe_torch_load
from instyle.interop.stylegan3 import (
    is_restyle3_checkpoint,
    is_stylegan3_state_dict,
    load_stylegan3_generator,
    stylegan3_generator_from_object,
)
from instyle.models.family import InversionModel, family_of, get_family, list_families, model_kinds
from instyle.models.own_format import build_empty, check_finite, is_own_format, load_state_checked, read_config
from instyle.models.psp import PSPConfig
from instyle.models.stylegan2 import Generator
from instyle.models.stylegan3 import StyleGAN3Generator
from instyle.utils.device import DEFAULT_DEVICE, resolve_device
from instyle.utils.progress import timed

__all__ = [
    "cache_dir",
    "published_info",
    "resolve_path",
    "read_official_psp",
    "load_psp",
    "load_generator",
    "load_own",
    "load_state_checked",
    "detect_format",
    "save_generator",
    "save_psp",
]

def published_info(name: str) -> dict[str, Any]:
    """What the registry knows of a published file name (:class:`instyle.interop.published.Published`
    as a dict: family, task, domain, output_size, url, companions, input_nc, dataset_type, config, note).

    Raises:
        KeyError: not a published file name (``instyle models`` lists them).
    """
    entry = published(name)
    if entry is None:
        raise KeyError(name)
    return entry.as_dict()


def cache_dir() -> Path:
    """Folder searched for weight files given by bare name: ``$INSTYLE_CACHE`` or
    ``~/.cache/instyle``."""
    env = os.environ.get("INSTYLE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "instyle"


def resolve_path(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else the same name in :func:`cache_dir`.

    Raises:
        CheckpointError: found nowhere (naming both places and, for a published file
            name, where to download it).
    """
    p = Path(path).expanduser()
    if p.exists():
        return p
    cached = cache_dir() / p.name
    if not p.is_absolute() and cached.exists():
        return cached
    hint = published_hint(p.name, str(cache_dir()))
    raise CheckpointError(f"{p}: no such file (also looked in {cache_dir()}).{hint}")


def load_own(directory: str | os.PathLike):
    """An own-format directory as a :class:`Generator` or the model of the family that wrote
    it (CPU, eval), by its kind."""
    kind = read_config(directory)["kind"]
    return {"generator": Generator, "stylegan3": StyleGAN3Generator, **model_kinds()}[kind].from_pretrained(directory)


def save_psp(model: InversionModel, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Same as ``model.save_pretrained(directory, extra)``."""
    return model.save_pretrained(directory, extra)


def save_generator(generator: Generator, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Same as ``generator.save_pretrained(directory, extra)``."""
    return generator.save_pretrained(directory, extra)


def detect_format(obj: Any) -> str:
    """Name the format of a loaded checkpoint object: a model family's official format (``psp``,
    ``hyperstyle``, ``sfe``, ... see :mod:`instyle.interop.readers`), ``rosinality``,
    ``generator_state_dict`` or ``unknown``."""
    reader = reader_for(obj)
    if reader is not None:
        return reader.format
    if isinstance(obj, Mapping):
        if "g_ema" in obj or "g" in obj:
            return "rosinality"
        if "style.1.weight" in obj and "conv1.conv.weight" in obj:
            return "generator_state_dict"
    return "unknown"


def load_psp(
    path: str | os.PathLike,
    device: str | torch.device = DEFAULT_DEVICE,
    expected: PSPConfig | None = None,
    w_encoder: str | os.PathLike | None = None,
    e4e: str | os.PathLike | None = None,
    generator: str | os.PathLike | None = None,
) -> InversionModel:
    """Load a model of any family (own format directory or official ``.pt``) in eval mode,
    saying on stderr what it loads and how long that took (see :mod:`instyle.utils.progress`).
    Arguments as :func:`_load_psp`."""
    name = str(path)
    with timed(f"loading model {name}", f"loaded model {name}") as t:
        model = _load_psp(path, device, expected, w_encoder, e4e, generator)
        t.detail = describe_model(model)
    return model


def describe_model(model) -> str:
    """``e4e, 1024 px, 18 styles, on cpu``: what a loaded model is."""
    parts = [family_of(model).name]
    size = getattr(model, "output_size", None)
    if size:
        parts.append(f"{size} px")
    parts.append(f"{model.n_styles} styles")
    param = next(iter(model.parameters()), None)
    if param is not None:
        parts.append(f"on {param.device}")
    return ", ".join(parts)


def peek_family(path: str | os.PathLike) -> str | None:
    """The family of a model file read without building the model (an official file is
    memory-mapped), so a command can refuse a setting the model cannot run before the long
    load; None when it cannot tell cheaply (the real load then reports any problem)."""
    try:
        p = resolve_path(path)
        if is_own_format(p):
            cfg = read_config(p)
            sharing = [f for f in list_families() if get_family(f).kind == cfg.get("kind")]
            if len(sharing) == 1:
                return sharing[0]
            named = cfg.get("config", {}).get("family")  # one class for several families: its config says
            return named if named in sharing else sharing[0] if sharing else None
        ckpt = safe_torch_load(p, mmap=True)  # the loader's own bounds, tensors left on disk
        reader = reader_for(ckpt)
        if reader is None:
            return None
        return reader.peek(ckpt) if reader.peek is not None else reader.family
    except Exception:  # not cheaply readable (legacy format, bad file): the real load tells
        return None


def _load_psp(
    path: str | os.PathLike,
    device: str | torch.device = DEFAULT_DEVICE,
    expected: PSPConfig | None = None,
    w_encoder: str | os.PathLike | None = None,
    e4e: str | os.PathLike | None = None,
    generator: str | os.PathLike | None = None,
) -> InversionModel:
    """Load a model (own format directory or official ``.pt``) in eval mode.

    Args:
        path: file or directory (bare published names are also looked up in the cache).
        device: ``"cpu"`` (default), ``"cuda"``, ``"mps"``, ``"auto"`` or a torch device.
        expected: if given, the file's architecture must equal it.
        w_encoder: the W-encoder file an official HyperStyle checkpoint needs (then a
            :class:`~instyle.models.hyperstyle.HyperStyle` is returned).
        e4e: the e4e file an official StyleFeatureEditor checkpoint needs (with ``generator``;
            then an :class:`~instyle.models.sfe.SFE` is returned; see :mod:`instyle.interop.sfe`).
        generator: the StyleGAN2 file of an official StyleFeatureEditor checkpoint, or a StyleGAN3
            encoder's replacement generator (``.pt`` state dict, NVIDIA ``.pkl`` or own format),
            used instead of the checkpoint's decoder.
    """
    p = resolve_path(path)
    given = {k: v for k, v in (("w_encoder", w_encoder), ("e4e", e4e), ("generator", generator)) if v is not None}
    if is_own_format(p):
        kind = read_config(p)["kind"]
        reader = next((r for r in official_readers() if r.own and get_family(r.family).kind == kind), None)
        if reader is not None:  # a family whose companions also apply to its own folders (a replacement generator)
            return _with_companions(reader, p, given, lambda: reader.own(p, **given)).to(resolve_device(device)).eval()
        if given:
            words = {"w_encoder": "W-encoder", "e4e": "e4e encoder", "generator": "generator"}
            raise CheckpointError(
                f"{p}: an instyle model folder is self-contained: it contains its "
                f"{' and '.join(words[k] for k in given)}; "
                f"{', '.join(f'{k}={str(v)!r}' for k, v in given.items())} {'is' if len(given) == 1 else 'are'} not used"
                + "".join(f" ({k}=: {d})" for k, d in _folder_companions().items() if k in given)
            )
        model = load_own(p)
        if isinstance(model, (Generator, StyleGAN3Generator)):
            raise CheckpointError(f"{p}: this is a generator, not a pSp model; load it with instyle.load_generator")
        check_expected(model.config, expected, p)
        return model.to(resolve_device(device)).eval()
    if p.is_dir():
        raise CheckpointError(f"{p}: a directory without config.json is not an instyle model")
    if p.suffix == ".pkl":
        raise CheckpointError(
            f"{p}: an NVIDIA .pkl holds a generator, not a pSp model; use instyle.load_generator or `instyle convert`"
        )
    ckpt = safe_torch_load(p, "pSp checkpoint")
    reader = reader_for(ckpt)
    _check_companions(reader, p, given, detect_format(ckpt))
    if reader is None:
        fmt = detect_format(ckpt)
        what = {"rosinality": "a StyleGAN2 generator (rosinality) file", "generator_state_dict": "a generator state dict"}
        raise CheckpointError(
            f"{p}: expected a pSp checkpoint (a dict with 'state_dict' holding encoder.* and decoder.* "
            f"tensors), but this is {what.get(fmt, 'not a pSp checkpoint')}"
            + ("; load it with instyle.load_generator" if fmt in what else "")
        )
    model = reader.read(ckpt, p, resolve=resolve_path, expected=expected, **given)
    return model.to(resolve_device(device)).eval()


def _folder_companions() -> dict[str, str]:
    """Companions some family's own folders also take (keyword -> what it is)."""
    out: dict[str, str] = {}
    for r in official_readers():
        if r.own is not None:
            out.update(get_family(r.family).companions)
    return out


def _check_companions(reader, p: Path, given: dict, what: str) -> None:
    """Refuse companion files the file's family does not take, naming the families that do."""
    takes = get_family(reader.family).companions if reader is not None else {}
    extra = [k for k in given if k not in takes]
    if extra:
        owners = [get_family(f).title for f in list_families() if set(extra) <= set(get_family(f).companions)]
        raise CheckpointError(
            f"{p}: {' / '.join(k + '=' for k in extra)} "
            f"{'are' if len(extra) > 1 else 'is'} only for {' or '.join(owners) or 'other'} checkpoints; "
            f"this is {what}"
        )


def _with_companions(reader, p: Path, given: dict, load):
    _check_companions(reader, p, given, f"a {get_family(reader.family).title} model folder")
    return load()


def _generator_from_state(sd: Mapping[str, torch.Tensor], source: Any) -> Generator:
    try:
        config = generator_config_from_state_dict(sd)
    except (ArchitectureError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from None
    g = build_empty(Generator, config)
    load_state_checked(g, dict(sd), source, assign=True)
    return g


def load_generator(
    path: str | os.PathLike, device: str | torch.device = DEFAULT_DEVICE, latent_avg_samples: int = 4096
) -> Generator:
    """Load a StyleGAN2 generator from any supported file, in eval mode.

    Accepts own-format directories (generator or pSp: its decoder), rosinality ``.pt``
    (``g_ema`` preferred), official pSp ``.pt`` (the decoder) and NVIDIA ``.pkl``.
    ``generator.latent_avg`` ([1, style_dim]) comes from the file, or is estimated with
    ``mean_latent(latent_avg_samples, seed=0)`` and a warning says so.
    """
    p = resolve_path(path)
    if is_own_format(p) and read_config(p)["kind"] in ("stylegan3", "restyle3"):
        return load_stylegan3_generator(p).to(resolve_device(device)).eval()
    if is_own_format(p):
        m = load_own(p)
        g = m if isinstance(m, Generator) else m.decoder
    elif p.suffix == ".pkl":
        try:
            g = load_nvidia_generator(p)
        except CheckpointError as e:
            if "StyleGAN3" not in str(e):
                raise
            return load_stylegan3_generator(p).to(resolve_device(device)).eval()
    else:
        ckpt = safe_torch_load(p, "generator checkpoint")
        if is_stylegan3_state_dict(ckpt) or is_restyle3_checkpoint(ckpt) or (
            isinstance(ckpt, Mapping) and is_stylegan3_state_dict(ckpt.get("G_ema"))
        ):
            return stylegan3_generator_from_object(ckpt, p).to(resolve_device(device)).eval()
        fmt = detect_format(ckpt)
        reader = reader_for(ckpt)
        if reader is not None and reader.generator is not None:  # the model's generator (HyperStyle: before offsets)
            state, avg = reader.generator(ckpt, p)
            g = _generator_from_state(state, p)
            if avg is not None:
                g.latent_avg = avg.reshape(-1, avg.shape[-1]).mean(0, keepdim=True)
        elif fmt == "rosinality":
            key = "g_ema" if "g_ema" in ckpt else "g"
            g = _generator_from_state(ckpt[key], f"{p} [{key}]")
            avg = ckpt.get("latent_avg")
            if isinstance(avg, torch.Tensor):
                g.latent_avg = avg.float().reshape(-1, avg.shape[-1]).mean(0, keepdim=True)
        elif fmt == "generator_state_dict":
            g = _generator_from_state(ckpt, p)
        else:
            raise CheckpointError(
                f"{p}: not a StyleGAN2 generator file: expected an instyle directory, a rosinality "
                "checkpoint (with 'g_ema'), a pSp checkpoint or an NVIDIA .pkl"
            )
    check_finite({"latent_avg": g.latent_avg}, p)
    if g.latent_avg is None:
        warnings.warn(
            f"{p}: the file has no average latent; estimated it with mean_latent({latent_avg_samples}, seed=0)",
            stacklevel=2,
        )
        g.latent_avg = g.mean_latent(latent_avg_samples, seed=0)
    g.source = str(p)
    return g.to(resolve_device(device)).eval()
