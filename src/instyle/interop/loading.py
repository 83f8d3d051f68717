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
from instyle.interop.families import FAMILY_CHECKPOINTS, config_from_official, detect_family
from instyle.interop.hyperstyle import hyperstyle_from_checkpoint
from instyle.interop.keymaps import (
    DATASET_TYPE_TO_TASK,
    ArchitectureError,
    generator_config_from_state_dict,
    strip_prefix,
)
from instyle.interop.nvidia import load_nvidia_generator
from instyle.interop.safe_load import ALLOWED_GLOBALS, safe_torch_load
from instyle.interop.sfe import is_sfe_checkpoint, is_sfe_inverter_checkpoint, sfe_from_checkpoint
from instyle.interop.stylegan3 import (
    is_restyle3_checkpoint,
    is_stylegan3_state_dict,
    load_restyle3,
    load_stylegan3_generator,
    restyle3_from_checkpoint,
    stylegan3_generator_from_object,
)
from instyle.models.hyperstyle import HyperStyle
from instyle.models.own_format import build_empty, check_finite, is_own_format, load_state_checked, read_config
from instyle.models.psp import PSP, PSPConfig
from instyle.models.registry import get_config
from instyle.models.restyle3 import ReStyle3
from instyle.models.sfe import SFE
from instyle.models.stylegan2 import Generator
from instyle.models.stylegan3 import StyleGAN3Generator
from instyle.utils.device import DEFAULT_DEVICE, resolve_device
from instyle.utils.progress import timed

__all__ = [
    "PUBLISHED_CHECKPOINTS",
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

#: The checkpoints published with the pSp paper: file name -> the original's ``dataset_type``
#: (its task comes from :data:`DATASET_TYPE_TO_TASK`), the registered architecture and the
#: input channels; :func:`published_info` puts them together. Their sha256 sums are not
#: documented upstream, so they are not checked.
PUBLISHED_CHECKPOINTS: dict[str, dict[str, Any]] = {
    "psp_ffhq_encode.pt": {"dataset_type": "ffhq_encode", "config": "psp_ffhq_1024", "input_nc": 3},
    "psp_ffhq_frontalization.pt": {"dataset_type": "ffhq_frontalize", "config": "psp_ffhq_1024", "input_nc": 3},
    "psp_celebs_sketch_to_face.pt": {"dataset_type": "celebs_sketch_to_face", "config": "psp_ffhq_1024", "input_nc": 1},
    "psp_celebs_seg_to_face.pt": {"dataset_type": "celebs_seg_to_face", "config": "psp_ffhq_1024", "input_nc": 19},
    "psp_celebs_super_resolution.pt": {"dataset_type": "celebs_super_resolution", "config": "psp_ffhq_1024", "input_nc": 3},
    "psp_ffhq_toonify.pt": {"dataset_type": "toonify", "config": "psp_ffhq_1024", "input_nc": 3},
}
OFFICIAL_DOWNLOADS = "https://github.com/eladrich/pixel2style2pixel#pretrained-models"


def published_info(name: str) -> dict[str, Any]:
    """``{"task", "output_size", "input_nc", "config", "dataset_type"}`` of a published file name."""
    entry = PUBLISHED_CHECKPOINTS[name]
    return {
        **entry,
        "task": DATASET_TYPE_TO_TASK.get(entry["dataset_type"], "image2image"),
        "output_size": get_config(entry["config"]).output_size,
    }


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
    hint = ""
    if p.name in PUBLISHED_CHECKPOINTS:
        info = published_info(p.name)
        hint = (
            f" It is the published pSp {info['task']} checkpoint ({info['output_size']}px); download it from "
            f"{OFFICIAL_DOWNLOADS} and put it there or in {cache_dir()} (set INSTYLE_CACHE to change)."
        )
    elif p.name in FAMILY_CHECKPOINTS:
        info = FAMILY_CHECKPOINTS[p.name]
        hint = (
            f" It is a published {info['family']} checkpoint ({info['domain']}, {info['output_size']}px); download it "
            f"from {info['url']} and put it there or in {cache_dir()} (set INSTYLE_CACHE to change)."
        )
    raise CheckpointError(f"{p}: no such file (also looked in {cache_dir()}).{hint}")


def load_own(directory: str | os.PathLike):
    """An own-format directory as a :class:`PSP`, :class:`Generator` or
    :class:`~instyle.models.hyperstyle.HyperStyle` (CPU, eval), by its kind."""
    kind = read_config(directory)["kind"]
    if kind in ("stylegan3", "restyle3"):
        return {"stylegan3": StyleGAN3Generator, "restyle3": ReStyle3}[kind].from_pretrained(directory)
    return {"psp": PSP, "generator": Generator, "hyperstyle": HyperStyle, "sfe": SFE}[kind].from_pretrained(directory)


def save_psp(model: PSP, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Same as ``model.save_pretrained(directory, extra)``."""
    return model.save_pretrained(directory, extra)


def save_generator(generator: Generator, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Same as ``generator.save_pretrained(directory, extra)``."""
    return generator.save_pretrained(directory, extra)


def detect_format(obj: Any) -> str:
    """Name the format of a loaded checkpoint object: ``psp``, ``hyperstyle``, ``rosinality``,
    ``generator_state_dict`` or ``unknown``."""
    if isinstance(obj, Mapping):
        sd = obj.get("state_dict")
        if isinstance(sd, Mapping) and any(str(k).startswith("hypernet.") for k in sd):
            return "hyperstyle"
        if isinstance(sd, Mapping) and any(str(k).startswith("encoder.") for k in sd):
            return "psp"
        if "g_ema" in obj or "g" in obj:
            return "rosinality"
        if "style.1.weight" in obj and "conv1.conv.weight" in obj:
            return "generator_state_dict"
    return "unknown"


def _official_latent_avg(ckpt: Mapping, source: Any = "checkpoint") -> torch.Tensor | None:
    avg = ckpt.get("latent_avg")
    if avg is None:
        return None
    if not isinstance(avg, torch.Tensor):
        raise CheckpointError(f"{source}: 'latent_avg' is a {type(avg).__name__}, expected a tensor")
    return avg.float()


def read_official_psp(ckpt: Mapping, source: Any = "checkpoint") -> tuple[PSPConfig, dict, torch.Tensor | None, list[str]]:
    """Pure conversion of a loaded official pSp checkpoint object.

    Returns:
        ``(config, state_dict, latent_avg or None, notes)``; the state dict keys are
        already instyle's (the official names are kept as they are).
    """
    sd = ckpt.get("state_dict")
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{source}: no 'state_dict' in this pSp checkpoint")
    opts = ckpt.get("opts")
    if opts is not None and not isinstance(opts, Mapping):
        opts = vars(opts) if hasattr(opts, "__dict__") else None
    try:
        config, notes = config_from_official(sd, opts, "latent_avg" in ckpt)
    except (ArchitectureError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from None
    state = {k: v for k, v in sd.items() if k.startswith(("encoder.", "decoder."))}
    return config, state, _official_latent_avg(ckpt, source), notes


def _check_expected(config: PSPConfig, expected: PSPConfig | None, source: Any) -> None:
    if expected is None:
        return
    a, b = config.to_dict(), expected.to_dict()
    diffs = []
    for section in ("encoder", "generator"):
        for k in sorted(set(a[section]) | set(b[section])):
            if a[section].get(k) != b[section].get(k):
                diffs.append(f"{section}.{k}: file {a[section].get(k)!r} vs expected {b[section].get(k)!r}")
    if diffs:
        raise CheckpointError(f"{source}: architecture differs from the expected one: " + "; ".join(diffs[:5]))


def load_psp(
    path: str | os.PathLike,
    device: str | torch.device = DEFAULT_DEVICE,
    expected: PSPConfig | None = None,
    w_encoder: str | os.PathLike | None = None,
    e4e: str | os.PathLike | None = None,
    generator: str | os.PathLike | None = None,
) -> PSP:
    """Load a pSp model (own format directory or official ``.pt``) in eval mode, saying on
    stderr what it loads and how long that took (see :mod:`instyle.utils.progress`).
    Arguments as :func:`_load_psp`."""
    name = str(path)
    with timed(f"loading model {name}", f"loaded model {name}") as t:
        model = _load_psp(path, device, expected, w_encoder, e4e, generator)
        t.detail = describe_model(model)
    return model


def describe_model(model) -> str:
    """``e4e, 1024 px, 18 styles, on cpu``: what a loaded pSp-family model is."""
    family = getattr(model, "family", None) or ("hyperstyle" if _is_hyperstyle(model) else "psp")
    parts = [family]
    size = getattr(model, "output_size", None)
    if size:
        parts.append(f"{size} px")
    if hasattr(model, "n_styles"):
        parts.append(f"{model.n_styles} styles")
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if param is not None:
        parts.append(f"on {param.device}")
    return ", ".join(parts)


def peek_family(path: str | os.PathLike) -> str | None:
    """The family of a pSp-family model file (``psp``, ``e4e``, ``restyle``, ``hyperstyle``)
    read without building the model (an official file is memory-mapped), so a command can
    refuse a setting the model cannot run before the long load; None when it cannot tell
    cheaply (the real load then reports any problem)."""
    try:
        p = resolve_path(path)
        if is_own_format(p):
            cfg = read_config(p)
            return "hyperstyle" if cfg.get("kind") == "hyperstyle" else cfg.get("config", {}).get("family", "psp")
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        fmt = detect_format(ckpt)
        if fmt != "psp":
            return "hyperstyle" if fmt == "hyperstyle" else None
        opts = ckpt.get("opts")
        opts = opts if isinstance(opts, Mapping) else vars(opts) if hasattr(opts, "__dict__") else None
        return detect_family(opts) if opts is not None else None
    except Exception:  # not cheaply readable (legacy format, bad file): the real load tells
        return None


def _load_psp(
    path: str | os.PathLike,
    device: str | torch.device = DEFAULT_DEVICE,
    expected: PSPConfig | None = None,
    w_encoder: str | os.PathLike | None = None,
    e4e: str | os.PathLike | None = None,
    generator: str | os.PathLike | None = None,
) -> PSP:
    """Load a pSp model (own format directory or official ``.pt``) in eval mode.

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
    if is_own_format(p):
        if w_encoder is not None:
            raise CheckpointError(f"{p}: an instyle model folder contains its W-encoder; w_encoder={str(w_encoder)!r} is not used")
        if read_config(p)["kind"] == "restyle3":  # ReStyle over StyleGAN3
            if e4e is not None:
                raise CheckpointError(f"{p}: e4e={str(e4e)!r} is only for StyleFeatureEditor checkpoints; this model is not one")
            return load_restyle3(p, generator).to(resolve_device(device))
        if e4e is not None:
            raise CheckpointError(f"{p}: an instyle model folder is self-contained; e4e= is not used")
        if generator is not None:
            raise CheckpointError(
                f"{p}: an instyle model folder is self-contained; generator={str(generator)!r} is only for encoders over "
                "StyleGAN3 (to replace their decoder)"
            )
        model = load_own(p)
        if _is_hyperstyle(model) or isinstance(model, SFE):
            return model.to(resolve_device(device)).eval()
        if not isinstance(model, PSP):
            raise CheckpointError(f"{p}: this is a generator, not a pSp model; load it with instyle.load_generator")
        _check_expected(model.config, expected, p)
        return model.to(resolve_device(device)).eval()
    if p.is_dir():
        raise CheckpointError(f"{p}: a directory without config.json is not an instyle model")
    if p.suffix == ".pkl":
        raise CheckpointError(
            f"{p}: an NVIDIA .pkl holds a generator, not a pSp model; use instyle.load_generator or `instyle convert`"
        )
    ckpt = safe_torch_load(p, "pSp checkpoint")
    if is_sfe_checkpoint(ckpt) or is_sfe_inverter_checkpoint(ckpt):
        return sfe_from_checkpoint(ckpt, p, e4e, generator, resolve_path).to(resolve_device(device))
    if is_restyle3_checkpoint(ckpt) and e4e is None:  # ReStyle over StyleGAN3
        return restyle3_from_checkpoint(ckpt, p, generator).to(resolve_device(device))
    if e4e is not None or generator is not None:
        raise CheckpointError(
            f"{p}: e4e= / generator= are only for StyleFeatureEditor checkpoints (generator= also for encoders over "
            f"StyleGAN3); this is {detect_format(ckpt)}"
        )
    fmt = detect_format(ckpt)
    if fmt == "hyperstyle":
        return hyperstyle_from_checkpoint(ckpt, p, w_encoder, resolve_path).to(resolve_device(device))
    if w_encoder is not None:
        raise CheckpointError(f"{p}: w_encoder={str(w_encoder)!r} is only for HyperStyle checkpoints; this is {fmt}")
    if fmt != "psp":
        what = {"rosinality": "a StyleGAN2 generator (rosinality) file", "generator_state_dict": "a generator state dict"}
        raise CheckpointError(
            f"{p}: expected a pSp checkpoint (a dict with 'state_dict' holding encoder.* and decoder.* "
            f"tensors), but this is {what.get(fmt, 'not a pSp checkpoint')}"
            + ("; load it with instyle.load_generator" if fmt in what else "")
        )
    config, state, latent_avg, notes = read_official_psp(ckpt, p)
    _check_expected(config, expected, p)
    model = build_empty(PSP, config)
    try:
        avg = model.normalize_latent_avg(latent_avg if latent_avg is not None else torch.zeros(1, config.generator.style_dim))
    except ValueError as e:
        raise CheckpointError(f"{p}: {e}") from None
    load_state_checked(model, {**state, "latent_avg": avg}, p, assign=True)
    if latent_avg is None and config.start_from_latent_avg:
        warnings.warn(f"{p}: start_from_latent_avg is set but the file has no latent_avg; estimating it with mean_latent(4096, seed=0)", stacklevel=3)
        avg = model.decoder.mean_latent(4096, seed=0)
    for note in notes:
        warnings.warn(f"{p}: {note}", stacklevel=3)
    # Without start_from_latent_avg the decoder's average stays unknown (load_generator estimates it).
    model.set_latent_avg(avg)
    model.source = str(p)
    return model.to(resolve_device(device)).eval()


def _is_hyperstyle(model) -> bool:

    return isinstance(model, HyperStyle)


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
        if fmt == "psp":
            config, state, latent_avg, _ = read_official_psp(ckpt, p)
            g = _generator_from_state(strip_prefix(state, "decoder."), p)
            if latent_avg is not None:
                g.latent_avg = latent_avg.reshape(-1, latent_avg.shape[-1]).mean(0, keepdim=True)
        elif fmt == "hyperstyle":  # the tuned generator before any per-image offsets
            g = _generator_from_state(strip_prefix(ckpt["state_dict"], "decoder."), p)
            avg = ckpt.get("latent_avg")
            if isinstance(avg, torch.Tensor):
                g.latent_avg = avg.float().reshape(-1, avg.shape[-1]).mean(0, keepdim=True)
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
