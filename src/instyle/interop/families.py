"""Official checkpoints of pSp's successors: e4e (omertov/encoder4editing) and ReStyle
(yuval-alaluf/restyle-encoder).

They share pSp's layout (``state_dict`` with ``encoder.*`` / ``decoder.*``, ``opts``,
``latent_avg``), and several encoder types have identical tensors (``Encoder4Editing`` and
``GradualStyleEncoder``; ``ProgressiveBackboneEncoder`` and ``BackboneEncoder``), so the
family and the encoder class come from ``opts`` while the architecture comes from the
weights; the two must agree, or the file is refused naming both sides.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from instyle.errors import CheckpointError
from instyle.interop.keymaps import (
    ArchitectureError,
    encoder_config_from_state_dict,
    generator_config_from_state_dict,
    psp_config_from_official,
    strip_prefix,
    task_for_dataset_type,
)
from instyle.interop.published import Published, register_published
from instyle.interop.readers import OfficialReader, register_reader
from instyle.models.own_format import build_empty, load_state_checked
from instyle.models.psp import PSP, PSPConfig
from instyle.models.registry import encoder_class, list_encoders

__all__ = ["check_expected", "config_from_official", "detect_family", "psp_from_checkpoint", "read_official_psp"]

E4E_DOWNLOADS = "https://github.com/omertov/encoder4editing#pretrained-models"
RESTYLE_DOWNLOADS = "https://github.com/yuval-alaluf/restyle-encoder#pretrained-models"

PSP_DOWNLOADS = "https://github.com/eladrich/pixel2style2pixel#pretrained-models"

# The pSp README's table of pretrained models: (file, dataset_type, input channels).
_PSP = (
    ("psp_ffhq_encode.pt", "ffhq_encode", 3),
    ("psp_ffhq_frontalization.pt", "ffhq_frontalize", 3),
    ("psp_celebs_sketch_to_face.pt", "celebs_sketch_to_face", 1),
    ("psp_celebs_seg_to_face.pt", "celebs_seg_to_face", 19),
    ("psp_celebs_super_resolution.pt", "celebs_super_resolution", 3),
    ("psp_ffhq_toonify.pt", "toonify", 3),
)
# e4e's README: (file stem, domain, generator size).
_E4E = (("ffhq_encode", "faces (FFHQ)", 1024), ("cars_encode", "cars", 512), ("horse_encode", "horses", 256),
        ("church_encode", "churches", 256))
_RESTYLE = {  # (variant, file stem) -> (domain, generator size); ReStyle's README tables
    ("psp", "ffhq_encode"): ("faces (FFHQ)", 1024),
    ("psp", "cars_encode"): ("cars", 512),
    ("psp", "church_encode"): ("churches", 256),
    ("psp", "afhq_wild_encode"): ("wild animals (AFHQ wild)", 512),
    ("psp", "toonify"): ("faces -> toons", 1024),
    ("e4e", "ffhq_encode"): ("faces (FFHQ)", 1024),
    ("e4e", "cars_encode"): ("cars", 512),
    ("e4e", "church_encode"): ("churches", 256),
    ("e4e", "afhq_wild_encode"): ("wild animals (AFHQ wild)", 512),
    ("e4e", "horse_encode"): ("horses", 256),
}
def _psp_domain(dataset_type: str) -> str:
    if dataset_type == "toonify":
        return "faces -> toons"
    return "faces (CelebA-HQ)" if dataset_type.startswith("celebs") else "faces (FFHQ)"


register_published(
    *(Published(name, "psp", task_for_dataset_type(dt), _psp_domain(dt), 1024, PSP_DOWNLOADS, input_nc=nc,
                dataset_type=dt, config="psp_ffhq_1024") for name, dt, nc in _PSP),
    *(Published(f"e4e_{stem}.pt", "e4e", task_for_dataset_type(stem), domain, size, E4E_DOWNLOADS, dataset_type=stem)
      for stem, domain, size in _E4E),
    *(Published(f"restyle_{variant}_{stem}.pt", "restyle", task_for_dataset_type(stem), domain, size, RESTYLE_DOWNLOADS,
                dataset_type=stem, note=f"{variant} encoder") for (variant, stem), (domain, size) in _RESTYLE.items()),
)


def detect_family(opts: Mapping) -> str:
    """``"psp"``, ``"e4e"`` or ``"restyle"`` from a checkpoint's ``opts``.

    ReStyle's options have ``n_iters_per_batch``; e4e's have ``stylegan_size`` (and no
    ``output_size``); otherwise an encoder type built only by one family decides.
    """
    if "n_iters_per_batch" in opts:
        return "restyle"
    if "stylegan_size" in opts and "output_size" not in opts:
        return "e4e"
    kind = opts.get("encoder_type")
    try:
        families = getattr(encoder_class(kind), "families", ("psp",)) if kind else ("psp",)
    except ValueError:
        return "psp"  # the pSp reader names the unknown type
    return "psp" if "psp" in families else families[0]


def _check_opt(opts: Mapping, key: str, value, what: str) -> None:
    given = opts.get(key)
    if given is not None and given != value:
        raise ArchitectureError(f"opts[{key!r}]={given!r} but the weights describe {what}={value!r}")


def config_from_official(
    state_dict: Mapping[str, torch.Tensor], opts: Mapping | None, has_latent_avg: bool
) -> tuple[PSPConfig, list[str]]:
    """Architecture of an official pSp, e4e or ReStyle checkpoint, checked against its opts.

    Returns:
        ``(config, notes)`` like :func:`instyle.interop.keymaps.psp_config_from_official`.

    Raises:
        ArchitectureError: the weights contradict the options (naming both) or the encoder
            type is unknown.
    """
    opts = dict(opts or {})
    family = detect_family(opts)
    if family == "psp":
        return psp_config_from_official(state_dict, opts, has_latent_avg)
    kind = opts.get("encoder_type")
    if kind not in list_encoders():
        raise ArchitectureError(f"opts['encoder_type']={kind!r} is not a {family} encoder type; known: {list_encoders()}")
    gen = generator_config_from_state_dict(strip_prefix(state_dict, "decoder."))
    enc = encoder_config_from_state_dict(strip_prefix(state_dict, "encoder."), n_styles=gen.n_latent)
    layout = getattr(encoder_class(kind), "same_keys_as", "") or kind
    if enc.type != layout:
        raise ArchitectureError(
            f"opts['encoder_type']={kind!r} (tensors of a {layout}) but the weights describe a {enc.type}"
        )
    size_key = "stylegan_size" if family == "e4e" else "output_size"
    _check_opt(opts, size_key, gen.size, "a generator of size")
    _check_opt(opts, "input_nc", enc.input_nc, "encoder input channels")
    if enc.n_styles != gen.n_latent:
        raise ArchitectureError(
            f"the encoder predicts {enc.n_styles} styles but the {gen.size}px generator takes {gen.n_latent}"
        )
    notes = []
    if family == "restyle":
        start = True  # the original always adds latent_avg at the first iteration
    else:
        start = opts.get("start_from_latent_avg")
        if start is None:
            start = has_latent_avg
            notes.append(f"opts has no 'start_from_latent_avg'; using {start}")
    enc.type = kind
    crop = None
    if opts.get("dataset_type") == "cars_encode":
        # The cars models: Resize((192, 256)) inputs, outputs cropped to rows 64:448 of 512.
        enc.input_height = enc.input_size * 3 // 4
        crop = (gen.size // 8, gen.size * 7 // 8)
        notes.append(f"cars model: {enc.input_size}x{enc.input_height} inputs, outputs cropped to rows {crop[0]}:{crop[1]}")
    config = PSPConfig(
        encoder=enc, generator=gen, start_from_latent_avg=bool(start), learn_in_w=False,
        task=task_for_dataset_type(opts.get("dataset_type")), family=family, output_crop=crop,
    )
    return config, notes


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


def check_expected(config: Any, expected: Any, source: Any) -> None:
    """Refuse a file whose architecture differs from ``expected`` (None: anything goes)."""
    if expected is None:
        return
    if type(config) is not type(expected):
        raise CheckpointError(f"{source}: holds a {type(config).__name__}, expected a {type(expected).__name__}")
    a, b = config.to_dict(), expected.to_dict()
    diffs = []
    for section in ("encoder", "generator"):
        for k in sorted(set(a[section]) | set(b[section])):
            if a[section].get(k) != b[section].get(k):
                diffs.append(f"{section}.{k}: file {a[section].get(k)!r} vs expected {b[section].get(k)!r}")
    if diffs:
        raise CheckpointError(f"{source}: architecture differs from the expected one: " + "; ".join(diffs[:5]))



def is_psp_checkpoint(obj: Any) -> bool:
    """A pSp-layout checkpoint (pSp, e4e, ReStyle): ``state_dict`` with ``encoder.*`` tensors."""
    sd = obj.get("state_dict") if isinstance(obj, Mapping) else None
    return isinstance(sd, Mapping) and any(str(k).startswith("encoder.") for k in sd)


def psp_from_checkpoint(ckpt: Mapping, p: Path, resolve: Any = Path, expected: PSPConfig | None = None) -> PSP:
    """A :class:`PSP` (CPU, eval) from a loaded official pSp, e4e or ReStyle checkpoint."""
    config, state, latent_avg, notes = read_official_psp(ckpt, p)
    check_expected(config, expected, p)
    model = build_empty(PSP, config)
    try:
        avg = model.normalize_latent_avg(latent_avg if latent_avg is not None else torch.zeros(1, config.generator.style_dim))
    except ValueError as e:
        raise CheckpointError(f"{p}: {e}") from None
    load_state_checked(model, {**state, "latent_avg": avg}, p, assign=True)
    if latent_avg is None and config.start_from_latent_avg:
        warnings.warn(f"{p}: start_from_latent_avg is set but the file has no latent_avg; estimating it with mean_latent(4096, seed=0)", stacklevel=5)
        avg = model.decoder.mean_latent(4096, seed=0)
    for note in notes:
        warnings.warn(f"{p}: {note}", stacklevel=5)
    # Without start_from_latent_avg the decoder's average stays unknown (load_generator estimates it).
    model.set_latent_avg(avg)
    model.source = str(p)
    return model.eval()


def _peek(ckpt: Mapping) -> str | None:
    opts = ckpt.get("opts")
    opts = opts if isinstance(opts, Mapping) else vars(opts) if hasattr(opts, "__dict__") else None
    return detect_family(opts) if opts is not None else None


def _generator_part(ckpt: Mapping, source: Any) -> tuple[dict, torch.Tensor | None]:
    _, state, latent_avg, _ = read_official_psp(ckpt, source)
    return strip_prefix(state, "decoder."), latent_avg


register_reader(OfficialReader(
    family="psp", format="psp", recognise=is_psp_checkpoint,
    read=lambda ckpt, p, resolve=Path, expected=None: psp_from_checkpoint(ckpt, p, resolve, expected),
    generator=_generator_part, peek=_peek,
))
