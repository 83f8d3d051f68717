"""Official StyleFeatureEditor checkpoints (``ControlGenAI/StyleFeatureEditor``) and the two
files they need.

An SFE file (``sfe_editor_light.pt``, or a full training checkpoint) holds ``state_dict``
``inverter.*`` (FS backbone + fuser) and ``encoder.*`` (the feature editor); the original
takes the e4e encoder and the StyleGAN2 generator from its paths config, never from this
file: here they are explicit, ``instyle.load(path, e4e=PATH, generator=PATH)``.

* e4e file (omertov's ``e4e_ffhq_encode.pt``): ``state_dict['encoder.*']`` only; its
  decoder, opts and ``[18, 512]`` latent_avg are not used (as the original).
* generator file (rosinality ``stylegan2-ffhq-config-f.pt``): ``g_ema`` and its ``[512]``
  ``latent_avg``, the only average latent SFE uses (added to both encoders' codes).

A phase-1 inverter file (``sfe_inverter_light.pt``, the original's ``FSEInverter``: its
``encoder.*`` is the inverter) needs only the generator file: it inverts (rendering the fused
feature, as ``FSEInverter.forward``) but cannot edit.

Every part is loaded strictly. The original loads the generator with ``strict=False``, so a
missing or misnamed key silently keeps a random initialisation; here it is an error.
A full training checkpoint's ``decoder.*``, ``e4e_encoder.*`` and ``discriminator.*`` are
ignored, as in the original's inference.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from instyle.errors import CheckpointError
from instyle.interop.keymaps import (
    ArchitectureError,
    encoder_config_from_state_dict,
    generator_config_from_state_dict,
    strip_prefix,
)
from instyle.interop.published import Published, register_published
from instyle.interop.readers import OfficialReader, register_reader
from instyle.interop.safe_load import safe_torch_load
from instyle.models.own_format import build_empty, check_finite, load_state_checked
from instyle.models.sfe import SFE, SFEConfig, feature_resolution

__all__ = ["is_sfe_checkpoint", "is_sfe_inverter_checkpoint", "read_e4e_file", "sfe_config_from_state_dict",
           "sfe_from_checkpoint"]

E4E_FILE = "e4e_ffhq_encode.pt"
GENERATOR_FILE = "stylegan2-ffhq-config-f.pt"
SOURCE = "https://github.com/ControlGenAI/StyleFeatureEditor#getting-started"
# The published SFE files (``configs/paths.py`` of the original) and what each needs.
register_published(*(
    Published(name, "sfe", "inversion", "faces (FFHQ)", 1024, SOURCE, note=note,
              companions={"e4e": E4E_FILE, "generator": GENERATOR_FILE})
    for name, note in (
        ("sfe_editor_light.pt", "inverter + feature editor (both phases)"),
        ("sfe_inverter_light.pt", "inverter only (phase 1; no feature editor, inversion only)"),
    )
))


def _state(obj: Any) -> Mapping | None:
    sd = obj.get("state_dict") if isinstance(obj, Mapping) else None
    return sd if isinstance(sd, Mapping) else None


def is_sfe_checkpoint(obj: Any) -> bool:
    """An SFE editor checkpoint: ``state_dict`` with ``inverter.*`` tensors."""
    sd = _state(obj)
    return sd is not None and any(str(k).startswith("inverter.") for k in sd)


def is_sfe_inverter_checkpoint(obj: Any) -> bool:
    """A phase-1 SFE inverter checkpoint: ``state_dict`` with ``encoder.fs_backbone.*``."""
    sd = _state(obj)
    return sd is not None and any(str(k).startswith("encoder.fs_backbone.") for k in sd)


def _count(sd: Mapping, pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.match(pattern, k))})


def sfe_config_from_state_dict(sd: Mapping[str, torch.Tensor], generator, e4e) -> SFEConfig:
    """The SFE architecture from its ``inverter.*`` + ``encoder.*`` tensors (prefixes kept)
    and the generator / e4e configs of the other two files (``e4e`` None: an inverter-only
    model, at the original's fixed input 256 and feature 9)."""
    need = ["inverter.fs_backbone.conv.0.weight", "inverter.fs_backbone.content_layer.4.weight"]
    need += ["encoder.conv.weight"] if e4e is not None else []
    missing = [k for k in need if k not in sd]
    if missing:
        raise ArchitectureError(f"not a StyleFeatureEditor state dict: missing {missing}")
    widths = tuple(int(sd[f"inverter.fs_backbone.block_{i}.0.conv1.weight"].shape[0]) for i in range(1, 5))
    units = tuple(_count(sd, rf"inverter\.fs_backbone\.block_{i}\.(\d+)\.") for i in range(1, 5))
    n_styles = _count(sd, r"inverter\.fs_backbone\.styles\.(\d+)\.")
    blocks = _count(sd, r"inverter\.fuser\.body\.(\d+)\.")
    editor_blocks = _count(sd, r"encoder\.body\.(\d+)\.")
    channels = int(sd["inverter.fs_backbone.content_layer.4.weight"].shape[0])
    if e4e is not None and blocks != editor_blocks:
        raise ArchitectureError(f"the fuser has {blocks} residual blocks but the feature editor {editor_blocks}")
    if n_styles != generator.n_latent:
        raise ArchitectureError(
            f"the SFE inverter predicts {n_styles} styles but the {generator.size} px generator takes {generator.n_latent}"
        )
    # The encoders' input side (the e4e heads tell it: 256 published) fixes the feature's
    # resolution (a quarter of it) and so its index: the second conv there (64 px: 9).
    input_size = 256 if e4e is None else e4e.input_size
    index = 2 * (input_size // 4).bit_length() - 5
    config = SFEConfig(generator=generator, e4e=e4e, widths=widths, units=units, fuser_blocks=blocks,
                       feature_index=index, input_size=input_size, editor=e4e is not None)
    if channels != config.feature_channels:
        raise ArchitectureError(
            f"the SFE feature has {channels} channels but generator feature {config.feature_index} "
            f"({feature_resolution(config.feature_index)} px) has {config.feature_channels}"
        )
    return config


def _load(path: Path, what: str, resolve: Callable[[Any], Path], role: str, source: Any) -> tuple[Path, Any]:
    try:
        p = resolve(path)
    except CheckpointError as e:
        raise CheckpointError(f"{role} for SFE checkpoint {source}: {e}") from None
    return p, safe_torch_load(p, what)


def _e4e_part(obj: Any, path: Path, generator, source: Any):
    def fail(why: str) -> CheckpointError:
        return CheckpointError(f"e4e file {path} does not fit SFE checkpoint {source}: {why}")

    sd = _state(obj)
    if sd is None or is_sfe_checkpoint(obj) or not any(str(k).startswith("encoder.") for k in sd):
        kind = "a StyleGAN2 generator file" if isinstance(obj, Mapping) and "g_ema" in obj else (
            "an SFE checkpoint" if is_sfe_checkpoint(obj) else "not an e4e checkpoint")
        raise fail(f"it is {kind}; expected omertov's e4e file ({E4E_FILE}: 'state_dict' with encoder.* tensors)")
    enc_sd = strip_prefix(sd, "encoder.")
    opts = obj.get("opts")
    opts = opts if isinstance(opts, Mapping) else (vars(opts) if hasattr(opts, "__dict__") else {})
    if opts.get("encoder_type") not in (None, "Encoder4Editing"):
        raise fail(f"its opts['encoder_type'] is {opts.get('encoder_type')!r}; SFE uses an Encoder4Editing")
    try:
        cfg = encoder_config_from_state_dict(enc_sd)
    except (ArchitectureError, ValueError) as e:
        raise fail(str(e)) from None
    if cfg.type != "GradualStyleEncoder" or cfg.input_nc != 3:
        raise fail(f"its encoder is a {cfg.input_nc}-channel {cfg.type}, not e4e's (Encoder4Editing, 3 channels)")
    if (cfg.n_styles, cfg.style_dim) != (generator.n_latent, generator.style_dim):
        raise fail(
            f"it gives {cfg.n_styles} x {cfg.style_dim} codes, the {generator.size} px generator takes "
            f"{generator.n_latent} x {generator.style_dim}"
        )
    fields = {**cfg.to_dict(), "type": "Encoder4Editing"}
    return type(cfg).from_dict(fields), {f"e4e_encoder.{k}": v for k, v in enc_sd.items()}


def read_e4e_file(path: str | Path, generator, source: Any):
    """``(EncoderConfig, state dict 'e4e_encoder.*')`` of omertov's e4e file for an SFE model
    around ``generator`` (a :class:`GeneratorConfig`); raises :class:`CheckpointError` naming both."""
    return _e4e_part(safe_torch_load(path, "e4e checkpoint"), Path(path), generator, source)


def _generator_part(obj: Any, path: Path, source: Any):
    def fail(why: str) -> CheckpointError:
        return CheckpointError(f"generator file {path} does not fit SFE checkpoint {source}: {why}")

    if not isinstance(obj, Mapping) or not isinstance(obj.get("g_ema"), Mapping):
        kind = "an e4e/pSp checkpoint" if _state(obj) is not None else "not a rosinality generator file"
        raise fail(f"it is {kind}; expected rosinality's StyleGAN2 file ({GENERATOR_FILE}: 'g_ema' and 'latent_avg')")
    g_sd = obj["g_ema"]
    try:
        gen = generator_config_from_state_dict(g_sd)
    except (ArchitectureError, ValueError) as e:
        raise fail(f"its g_ema is incomplete or not a StyleGAN2 generator ({e}); the original would load it with "
                   "strict=False and silently keep random weights, instyle refuses") from None
    avg = obj.get("latent_avg")
    if not isinstance(avg, torch.Tensor) or avg.numel() != gen.style_dim:
        got = tuple(avg.shape) if isinstance(avg, torch.Tensor) else type(avg).__name__
        raise fail(f"SFE adds the generator file's latent_avg [{gen.style_dim}] to its codes; this file's is {got}")
    return gen, {f"decoder.{k}": v for k, v in g_sd.items()}, avg.float().reshape(-1)


def sfe_from_checkpoint(
    ckpt: Mapping,
    source: Any,
    e4e: str | Path | None,
    generator: str | Path | None,
    resolve: Callable[[Any], Path] = Path,
) -> SFE:
    """Build an :class:`~instyle.models.sfe.SFE` (CPU, eval) from a loaded SFE checkpoint and
    the paths of its e4e and generator files (found with ``resolve``, e.g. in the cache)."""
    if is_sfe_inverter_checkpoint(ckpt) and not is_sfe_checkpoint(ckpt):
        return _inverter_from_checkpoint(ckpt, source, e4e, generator, resolve)
    sd = _state(ckpt)
    if sd is None or not is_sfe_checkpoint(ckpt):
        raise CheckpointError(f"{source}: not a StyleFeatureEditor checkpoint ('state_dict' with inverter.* tensors)")
    absent = [name for name, v in (("e4e", e4e), ("generator", generator)) if v is None]
    if absent:
        raise CheckpointError(
            f"{source} is a StyleFeatureEditor checkpoint: it needs the e4e encoder file ({E4E_FILE}) and the "
            f"StyleGAN2 generator file ({GENERATOR_FILE}), which it does not contain; missing: {', '.join(absent)}. "
            "Pass them with instyle.load(path, e4e=PATH, generator=PATH) or --e4e PATH --generator PATH "
            f"(downloads: {SOURCE})"
        )
    g_path, g_obj = _load(generator, "generator checkpoint", resolve, "generator file", source)
    gen, g_state, latent_avg = _generator_part(g_obj, g_path, source)
    del g_obj
    e_path, e_obj = _load(e4e, "e4e checkpoint", resolve, "e4e file", source)
    e4e_cfg, e_state = _e4e_part(e_obj, e_path, gen, source)
    del e_obj  # its decoder is not used
    state = {k: v for k, v in sd.items() if str(k).startswith(("inverter.", "encoder."))}
    try:
        config = sfe_config_from_state_dict(state, gen, e4e_cfg)
    except (ArchitectureError, ValueError) as e:
        raise CheckpointError(f"SFE checkpoint {source} with generator {g_path} and e4e {e_path}: {e}") from None
    model = build_empty(SFE, config)
    # Part by part, each strictly, so the large e4e file is freed before the rest is copied.
    _adopt(model, "e4e_encoder", e_state, e_path)
    del e_state
    _adopt(model, "decoder", g_state, g_path)
    _adopt(model, "inverter", state, source)
    _adopt(model, "encoder", state, source)
    _adopt_latent_avg(model, latent_avg, g_path)
    model.source = str(source)
    model.e4e_source, model.generator_source = str(e_path), str(g_path)
    return model.eval()


def _inverter_from_checkpoint(ckpt: Mapping, source: Any, e4e, generator, resolve) -> SFE:
    """A phase-1 inverter file (``encoder.*`` = the inverter) and its generator file."""
    if generator is None:
        raise CheckpointError(
            f"{source} is a StyleFeatureEditor inverter checkpoint: it needs the StyleGAN2 generator file "
            f"({GENERATOR_FILE}), which it does not contain; pass it with generator=PATH or --generator PATH"
        )
    if e4e is not None:
        warnings.warn(f"{source} is an SFE inverter (phase 1): it uses no e4e encoder; e4e={str(e4e)!r} is ignored",
                      stacklevel=3)
    g_path, g_obj = _load(generator, "generator checkpoint", resolve, "generator file", source)
    gen, g_state, latent_avg = _generator_part(g_obj, g_path, source)
    del g_obj
    state = {f"inverter.{k[len('encoder.'):]}": v for k, v in _state(ckpt).items() if str(k).startswith("encoder.")}
    try:
        config = sfe_config_from_state_dict(state, gen, None)
    except (ArchitectureError, ValueError) as e:
        raise CheckpointError(f"SFE inverter checkpoint {source} with generator {g_path}: {e}") from None
    model = build_empty(SFE, config)
    _adopt(model, "decoder", g_state, g_path)
    _adopt(model, "inverter", state, source)
    _adopt_latent_avg(model, latent_avg, g_path)
    model.source, model.generator_source = str(source), str(g_path)
    return model.eval()


def _adopt(model: SFE, part: str, state: Mapping[str, torch.Tensor], source: Any) -> None:
    """Give ``model.<part>`` (built on meta) the ``<part>.*`` tensors of ``state``, strictly."""
    load_state_checked(getattr(model, part), strip_prefix(state, f"{part}."), f"{source} [{part}]", assign=True)


def _adopt_latent_avg(model: SFE, latent_avg: torch.Tensor, source: Any) -> None:
    check_finite({"latent_avg": latent_avg}, source)
    model.latent_avg = latent_avg.float().clone()
    model.sync_decoder_latent_avg()
    left = [k for k, v in model.state_dict().items() if v.is_meta]
    if left:  # every part must have come from a file
        raise CheckpointError(f"{source}: the SFE model lacks weights for {left[:3]}")


register_reader(OfficialReader(
    family="sfe", format="sfe", priority=20,
    recognise=lambda obj: is_sfe_checkpoint(obj) or is_sfe_inverter_checkpoint(obj),
    read=lambda ckpt, p, resolve=Path, expected=None, e4e=None, generator=None: sfe_from_checkpoint(ckpt, p, e4e, generator, resolve),
))
