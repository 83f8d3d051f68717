"""StyleGAN3 files: generators (stylegan3-editing ``.pt`` state dicts, NVIDIA ``.pkl``,
own format) and ReStyle-over-StyleGAN3 checkpoints (yuval-alaluf/stylegan3-editing).

The architecture is read from the file: layer names ``synthesis.L{i}_{size}_{channels}``
give the depth, sizes and widths, tensor shapes the kernel, filters and mapping depth;
NVIDIA's schedule (:func:`instyle.models.stylegan3.layer_specs`) must reproduce every
layer name and filter shape, or the file is refused. Every state dict loads strictly;
only ``synthesis.input.transform`` is dropped (coach-saved files hold the last forward's
``[B, 3, 3]`` batch there). Nothing from a file is executed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from instyle.errors import CheckpointError
from instyle.interop.keymaps import ArchitectureError, encoder_config_from_state_dict, strip_prefix
from instyle.interop.nvidia import select_generator
from instyle.interop.published import Published, register_published
from instyle.interop.readers import OfficialReader, register_reader
from instyle.interop.restricted_pickle import PersistentObject, read_pickle
from instyle.interop.safe_load import safe_torch_load
from instyle.models.own_format import build_empty, is_own_format, load_state_checked, read_config
from instyle.models.restyle3 import ReStyle3, ReStyle3Config
from instyle.models.stylegan3 import StyleGAN3Config, StyleGAN3Generator, layer_specs
from instyle.utils.config import ConfigError

__all__ = [
    "TRANSFORM_KEY",
    "is_stylegan3_state_dict",
    "stylegan3_config_from_state_dict",
    "stylegan3_from_state_dict",
    "read_nvidia_stylegan3",
    "load_stylegan3_generator",
    "load_restyle3",
    "restyle3_from_checkpoint",
    "stylegan3_generator_from_object",
    "is_restyle3_checkpoint",
]

TRANSFORM_KEY = "synthesis.input.transform"
_LAYER = re.compile(r"synthesis\.L(\d{1,3})_(\d{1,5})_(\d{1,5})\.weight")

SG3_EDITING = "https://github.com/yuval-alaluf/stylegan3-editing#pretrained-models"
# Files published with stylegan3-editing and NVIDIA (informational; the architecture is read from each file).
register_published(
    *(Published(f"restyle_{v}_ffhq.pt", "restyle3", "inversion", "faces (FFHQ, aligned)", 1024, SG3_EDITING,
                note=f"ReStyle-{v}, 3 iterations; its own decoder, or generator=sg3-r-ffhq-1024.pt")
      for v in ("pSp", "e4e")),
    *(Published(name, "generator", "generation", domain, 1024, url, note="StyleGAN3-R generator")
      for name, domain, url in (
          ("sg3-r-ffhq-1024.pt", "faces (FFHQ, aligned)", SG3_EDITING),
          ("sg3-r-ffhqu-1024.pt", "faces (FFHQ-U, unaligned)", SG3_EDITING),
          ("stylegan3-r-ffhq-1024x1024.pkl", "faces (FFHQ, aligned)", "https://github.com/NVlabs/stylegan3"),
          ("stylegan3-r-ffhqu-1024x1024.pkl", "faces (FFHQ-U, unaligned)", "https://github.com/NVlabs/stylegan3"),
      )),
)


def is_stylegan3_state_dict(sd: Any, prefix: str = "") -> bool:
    """True when ``sd`` holds a StyleGAN3 synthesis network (``synthesis.input.freqs``)."""
    return isinstance(sd, Mapping) and f"{prefix}synthesis.input.freqs" in sd


def _shape(sd: Mapping, key: str) -> tuple[int, ...]:
    t = sd.get(key)
    if not isinstance(t, torch.Tensor):
        raise ArchitectureError(f"the generator lacks tensor '{key}'")
    return tuple(t.shape)


def stylegan3_config_from_state_dict(sd: Mapping[str, torch.Tensor], options: Mapping | None = None) -> StyleGAN3Config:
    """The :class:`StyleGAN3Config` a generator state dict describes.

    Args:
        sd: NVIDIA ``Generator.state_dict()`` names (no prefix).
        options: non-tensor settings when the file has them (an NVIDIA pickle's constructor
            arguments: ``output_scale``, ``conv_clamp``, ``margin_size``, ...); NVIDIA's
            defaults otherwise.

    Raises:
        ArchitectureError: missing tensors, or layers that do not follow NVIDIA's schedule.
    """
    layers = sorted((int(m.group(1)), int(m.group(2)), int(m.group(3)), k) for k in sd if (m := _LAYER.fullmatch(k)))
    if not layers:
        raise ArchitectureError("not a StyleGAN3 generator: no 'synthesis.L<i>_<size>_<channels>' layers")
    if [i for i, *_ in layers] != list(range(len(layers))):
        raise ArchitectureError(f"synthesis layers are not numbered 0..{len(layers) - 1}: {[i for i, *_ in layers][:20]}")
    fcs = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"mapping\.fc(\d{1,3})\.weight", k)))
    if not fcs or fcs != list(range(len(fcs))):
        raise ArchitectureError("the mapping network has no 'mapping.fc0' .. 'mapping.fc<n-1>' layers")
    if any(k.startswith("mapping.embed.") for k in sd):
        raise ArchitectureError("conditional StyleGAN3 generators (mapping.embed) are not supported")
    w_dim, z_dim = _shape(sd, "mapping.fc0.weight")
    first = layers[0][3].removesuffix(".weight")
    kernel = _shape(sd, f"{first}.weight")[-1]
    up0 = _shape(sd, f"{first}.up_filter") if f"{first}.up_filter" in sd else (1,)
    radial = any(k.endswith(".down_filter") and sd[k].ndim == 2 for k in sd if k.startswith("synthesis.L"))
    opts = dict(options or {})
    lrelu_up = int(opts.get("lrelu_upsampling", 2))
    kwargs: dict[str, Any] = dict(
        z_dim=z_dim, w_dim=w_dim, img_resolution=layers[-1][1], img_channels=layers[-1][2],
        channels=tuple(c for _, _, c, _ in layers), input_channels=_shape(sd, "synthesis.input.weight")[0],
        num_layers=len(layers) - 1, conv_kernel=kernel, use_radial_filters=radial,
        filter_size=max(1, up0[0] // lrelu_up), mapping_layers=len(fcs),
    )
    for key in ("channel_base", "channel_max", "num_critical", "first_cutoff", "first_stopband", "last_stopband_rel",
                "margin_size", "output_scale", "lrelu_upsampling", "conv_clamp", "magnitude_ema_beta", "lr_multiplier",
                "w_avg_beta", "filter_size"):
        if opts.get(key) is not None:
            kwargs[key] = opts[key]
    if "conv_clamp" in opts and opts["conv_clamp"] is None:
        kwargs["conv_clamp"] = None
    try:
        if "margin_size" not in kwargs:  # L0's size is its sampling rate plus twice the margin
            rate = layer_specs(StyleGAN3Config(**kwargs))["input"]["sampling_rate"]
            margin = (layers[0][1] - rate) / 2
            if margin >= 0 and float(margin).is_integer() and len(layers) > 2:
                kwargs["margin_size"] = int(margin)
        config = StyleGAN3Config(**kwargs)
    except (ConfigError, TypeError) as e:
        raise ArchitectureError(str(e)) from None
    _check_schedule(sd, config)
    return config


def _check_schedule(sd: Mapping[str, torch.Tensor], config: StyleGAN3Config) -> None:
    specs = layer_specs(config)
    for spec in specs["layers"]:
        p = f"synthesis.{spec['name']}"
        if f"{p}.weight" not in sd:
            raise ArchitectureError(
                f"layer '{p}' expected by NVIDIA's schedule for a {config.img_resolution}px generator with "
                f"{config.num_layers} layers is not in the file (its layers do not follow that schedule)"
            )
        for key, taps, radial in (("up_filter", spec["up_taps"], False), ("down_filter", spec["down_taps"], spec["radial"])):
            want = None if taps == 1 else ((taps, taps) if radial else (taps,))
            have = tuple(sd[f"{p}.{key}"].shape) if f"{p}.{key}" in sd else None
            if have != want:
                raise ArchitectureError(f"'{p}.{key}' has shape {have}; NVIDIA's schedule gives {want}")
        want_w = (spec["out_channels"], spec["in_channels"], spec["kernel"], spec["kernel"])
        if _shape(sd, f"{p}.weight") != want_w:
            raise ArchitectureError(f"'{p}.weight' has shape {_shape(sd, f'{p}.weight')}, expected {want_w}")


def stylegan3_from_state_dict(sd: Mapping[str, torch.Tensor], source: Any, options: Mapping | None = None) -> StyleGAN3Generator:
    """Build a generator (CPU, eval) from an NVIDIA-named state dict; strict except the transform."""
    sd = {k: v for k, v in sd.items() if k != TRANSFORM_KEY}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {bad[:3]}")
    try:
        config = stylegan3_config_from_state_dict(sd, options)
    except ArchitectureError as e:
        raise CheckpointError(f"{source}: {e}") from None
    g = build_empty(StyleGAN3Generator, config)
    load_state_checked(g, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, source, assign=True)
    g.source = str(source)
    return g.eval()


# ----------------------------------------------------------------------------- NVIDIA pickles


#: Constructor arguments read from an NVIDIA pickle, with their types (the rest come from tensors).
_OPTION_TYPES = {
    "channel_base": int, "channel_max": int, "num_critical": int, "margin_size": int, "lrelu_upsampling": int,
    "filter_size": int, "first_cutoff": float, "first_stopband": float, "last_stopband_rel": float,
    "output_scale": float, "magnitude_ema_beta": float, "lr_multiplier": float, "w_avg_beta": float,
    "conv_clamp": float,
}


def _nvidia_options(g: PersistentObject) -> dict:
    """Non-tensor settings of an NVIDIA StyleGAN3 ``Generator`` record: its constructor
    arguments (synthesis ones are flattened into the Generator's), the mapping's, and the
    synthesis network's attributes where present."""
    init = dict(g.attr("_init_kwargs") or {})
    raw = {k: v for k, v in init.items() if k not in ("mapping_kwargs", "synthesis_kwargs")}
    raw.update(dict(init.get("synthesis_kwargs") or {}))
    mapping = dict(init.get("mapping_kwargs") or {})
    raw.update({k: mapping[k] for k in ("lr_multiplier", "w_avg_beta") if k in mapping})
    synthesis = g.modules.get("synthesis")
    if synthesis is not None:
        raw.update({k: synthesis.attr(k) for k in ("output_scale", "margin_size", "num_critical") if synthesis.attr(k) is not None})
    if int(raw.get("c_dim") or 0):
        raise ArchitectureError(f"conditional generators (c_dim={raw['c_dim']}) are not supported")
    out: dict[str, Any] = {}
    for key, kind in _OPTION_TYPES.items():
        if key not in raw:
            continue
        value = raw[key]
        if key == "conv_clamp" and value is None:
            out[key] = None
            continue
        value = value.item() if hasattr(value, "item") else value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArchitectureError(f"the pickle's {key}={value!r:.40} is not a number")
        out[key] = int(value) if kind is int and float(value).is_integer() else float(value)
    return out


def read_nvidia_stylegan3(path: str | os.PathLike) -> StyleGAN3Generator:
    """An NVIDIA StyleGAN3 ``.pkl`` (``G_ema`` of a snapshot, or a bare pickled ``Generator``)
    read through the restricted unpickler (nothing from it runs)."""
    data = read_pickle(path)
    record, key = select_generator(data, path)
    source = f"{path} [{key}]"
    try:
        options = _nvidia_options(record)
        sd = record.state_dict()
    except (ArchitectureError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{source}: {e}") from None
    if not is_stylegan3_state_dict(sd):
        raise CheckpointError(f"{source}: not a StyleGAN3 generator (no synthesis.input.freqs)")
    return stylegan3_from_state_dict(sd, source, options)


def load_stylegan3_generator(path: str | os.PathLike) -> StyleGAN3Generator:
    """A StyleGAN3 generator (CPU, eval) from an own-format directory (kind ``stylegan3``), an
    NVIDIA ``.pkl``, a bare ``Generator.state_dict()`` ``.pt`` (stylegan3-editing's
    ``sg3-*.pt``) or a ReStyle-over-StyleGAN3 checkpoint (its decoder)."""
    p = Path(path)
    if is_own_format(p):
        kind = read_config(p)["kind"]
        if kind == "stylegan3":
            return StyleGAN3Generator.from_pretrained(p)
        if kind == "restyle3":
            return ReStyle3.from_pretrained(p).decoder
        raise CheckpointError(f"{p}: holds a {kind!r} model, not a StyleGAN3 generator")
    if p.suffix == ".pkl":
        return read_nvidia_stylegan3(p)
    return stylegan3_generator_from_object(safe_torch_load(p, "StyleGAN3 generator"), p)


def stylegan3_generator_from_object(obj: Any, source: Any) -> StyleGAN3Generator:
    """The StyleGAN3 generator in a loaded ``.pt`` object: a bare state dict, ``{'G_ema': sd}``
    or a ReStyle-over-StyleGAN3 checkpoint (its decoder)."""
    if is_restyle3_checkpoint(obj):
        return stylegan3_from_state_dict(strip_prefix(obj["state_dict"], "decoder."), f"{source} [decoder]")
    for key in ("G_ema", "g_ema"):
        if isinstance(obj, Mapping) and is_stylegan3_state_dict(obj.get(key)):
            return stylegan3_from_state_dict(obj[key], f"{source} [{key}]")
    if not is_stylegan3_state_dict(obj):
        raise CheckpointError(
            f"{source}: not a StyleGAN3 generator: expected a Generator state dict (with synthesis.input.freqs), an "
            "NVIDIA .pkl, an instyle StyleGAN3 directory or a ReStyle-over-StyleGAN3 checkpoint"
        )
    return stylegan3_from_state_dict(obj, source)


# ----------------------------------------------------------------------------- ReStyle over StyleGAN3


def is_restyle3_checkpoint(obj: Any) -> bool:
    """A stylegan3-editing encoder checkpoint: ``state_dict`` with ``encoder.*`` and a StyleGAN3 decoder."""
    sd = obj.get("state_dict") if isinstance(obj, Mapping) else None
    return isinstance(sd, Mapping) and any(str(k).startswith("encoder.") for k in sd) and is_stylegan3_state_dict(sd, "decoder.")


def load_restyle3(path: str | os.PathLike, generator: str | os.PathLike | None = None):
    """A ReStyle-pSp / ReStyle-e4e model over StyleGAN3 (CPU, eval).

    Args:
        path: the official checkpoint (``{'state_dict', 'opts', 'latent_avg' [512]}``) or an
            own-format directory of kind ``restyle3``.
        generator: optional replacement generator (any file
            :func:`load_stylegan3_generator` reads), as the original's
            ``load_encoder(..., generator_path=...)``: the checkpoint's own decoder is loaded
            and verified first, then replaced; ``latent_avg`` stays the checkpoint's.
    """
    p = Path(path)
    if is_own_format(p):
        model = ReStyle3.from_pretrained(p)
        if generator is not None:
            model.replace_generator(load_stylegan3_generator(generator))
        return model.eval()
    return restyle3_from_checkpoint(safe_torch_load(p, "ReStyle-StyleGAN3 checkpoint"), p, generator)


def restyle3_from_checkpoint(ckpt: Any, p: Any, generator: str | os.PathLike | None = None):
    """:func:`load_restyle3` for an already loaded official checkpoint object."""
    if not is_restyle3_checkpoint(ckpt):
        raise CheckpointError(f"{p}: not a ReStyle-over-StyleGAN3 checkpoint (state_dict with encoder.* and a StyleGAN3 decoder.*)")
    sd, opts = ckpt["state_dict"], ckpt.get("opts") or {}
    if not isinstance(opts, Mapping):
        raise CheckpointError(f"{p}: 'opts' is a {type(opts).__name__}, expected a mapping")
    decoder = stylegan3_from_state_dict(strip_prefix(sd, "decoder."), f"{p} [decoder]")
    enc_sd = strip_prefix(sd, "encoder.")
    try:
        enc = encoder_config_from_state_dict(enc_sd, n_styles=decoder.n_latent)
    except (ArchitectureError, ValueError) as e:
        raise CheckpointError(f"{p}: {e}") from None
    kind = opts.get("encoder_type", "BackboneEncoder")
    if kind not in ("BackboneEncoder", "ProgressiveBackboneEncoder") or enc.type != "BackboneEncoder":
        raise CheckpointError(
            f"{p}: encoder_type {kind!r} with {enc.type} tensors; ReStyle over StyleGAN3 has "
            "BackboneEncoder / ProgressiveBackboneEncoder (same tensors)"
        )
    if opts.get("input_nc", enc.input_nc) != enc.input_nc or enc.input_nc != 6:
        raise CheckpointError(f"{p}: the encoder takes {enc.input_nc} channels (opts: {opts.get('input_nc')}); ReStyle needs 6")
    if enc.n_styles != decoder.n_latent:
        raise CheckpointError(f"{p}: the encoder predicts {enc.n_styles} styles but the generator takes {decoder.n_latent}")
    enc.type = kind
    avg = ckpt.get("latent_avg")
    if not isinstance(avg, torch.Tensor) or tuple(avg.shape) != (decoder.style_dim,):
        shape = tuple(avg.shape) if isinstance(avg, torch.Tensor) else type(avg).__name__
        raise CheckpointError(f"{p}: latent_avg must be a [{decoder.style_dim}] tensor (the original adds it at "
                              f"iteration 0); found {shape}")
    iterations = opts.get("n_iters_per_batch", 3)
    config = ReStyle3Config(encoder=enc, generator=decoder.config, pool_size=enc.input_size,
                            iterations=iterations if isinstance(iterations, int) and 1 <= iterations <= 100 else 3)
    model = build_empty(ReStyle3, config)
    state = {**{f"encoder.{k}": v for k, v in enc_sd.items()},
             **{f"decoder.{k}": v for k, v in decoder.state_dict().items()}, "latent_avg": avg.float()}
    load_state_checked(model, state, p, assign=True)
    model.source = str(p)
    if generator is not None:
        model.replace_generator(load_stylegan3_generator(generator))
    return model.eval()


register_reader(OfficialReader(
    family="restyle3", format="restyle3", recognise=is_restyle3_checkpoint, priority=15,
    read=lambda ckpt, p, resolve=Path, expected=None, generator=None: restyle3_from_checkpoint(ckpt, p, generator),
    own=lambda p, generator=None: load_restyle3(p, generator),
))
