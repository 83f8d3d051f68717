"""The discriminator ``D`` of an NVIDIA StyleGAN2-ADA (PyTorch) pickle -> instyle's
:class:`~instyle.models.discriminator.Discriminator` (rosinality layout). Read through
:mod:`instyle.interop.restricted_pickle` (no code from the file runs).

The key map (``resnet`` architecture, the FFHQ config-f network StyleFeatureEditor trains with):

* ``b{S}.fromrgb`` -> ``convs.0`` (1x1 conv + bias + leaky ReLU);
* block ``b{R}`` (R = S ... 8) -> ``convs.i``: ``conv0`` -> ``conv1``, ``conv1`` (down 2) ->
  ``conv2``, ``skip`` (1x1, down 2, no bias) -> ``skip``. NVIDIA pads the [1, 3, 3, 1] filter by
  2 (3x3) / 1 (1x1) before the stride-2 conv, as rosinality's blur does, and scales the conv and
  skip outputs by sqrt(0.5) where rosinality divides their sum by sqrt(2): the same values;
* ``b4.conv`` / ``b4.fc`` / ``b4.out`` -> ``final_conv`` / ``final_linear.0`` / ``final_linear.1``;
  ``b4.mbstd`` (group size, 1 channel) -> the minibatch standard deviation; a group size of
  ``None`` (what NVIDIA's ``legacy.py`` gives the TF-converted FFHQ pickle) is the whole batch;
* ``conv_clamp`` (NVIDIA's training config writes 256; the TF-converted pickle has none) ->
  the model's ``conv_clamp``: one value on every activated conv, none on the skips.

Both use equalised learning rates with the same weight gains (``1/sqrt(fan_in)``, learning-rate
multiplier 1), so tensors copy unchanged. Checked against NVIDIA's own ``Discriminator``
(``tests/fixtures/nvidia_discriminator``). NVIDIA runs its ``num_fp16_res`` highest
resolutions in float16 on CUDA (float32 elsewhere); this model runs in the caller's dtype.
Refused: conditional discriminators, other architectures, differing clamps and ``mbstd`` with
more than one channel.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from instyle.errors import CheckpointError
from instyle.interop.restricted_pickle import PersistentObject, read_pickle
from instyle.models.discriminator import Discriminator

__all__ = ["select_discriminator", "convert_discriminator", "load_nvidia_discriminator"]


def select_discriminator(data, source) -> PersistentObject:
    """The ``D`` record of an unpickled NVIDIA file (a training snapshot or a bare ``Discriminator``)."""
    if isinstance(data, PersistentObject) and data.class_name == "Discriminator":
        return data
    rec = data.get("D") if isinstance(data, Mapping) else None
    if not isinstance(rec, PersistentObject) or rec.class_name != "Discriminator":
        raise CheckpointError(f"{source}: no StyleGAN2-ADA discriminator ('D') in this NVIDIA pickle")
    return rec


def convert_discriminator(d: PersistentObject, source) -> tuple[dict[int, int], int, dict[str, torch.Tensor], dict]:
    """``(channels per resolution, image size, rosinality state dict, Discriminator options)``;
    the options are ``stddev_group`` (``None``: the whole batch) and ``conv_clamp``."""
    init = d.attr("_init_kwargs") or {}
    if int(d.attr("c_dim", init.get("c_dim", 0)) or 0) != 0:
        raise CheckpointError(f"{source}: a conditional discriminator (c_dim > 0) is not supported")
    blocks = {int(m.group(1)): rec for name, rec in d.modules.items() if (m := re.fullmatch(r"b(\d+)", name))}
    if 4 not in blocks or len(blocks) < 2:
        raise CheckpointError(f"{source}: the discriminator has no b4 epilogue and resolution blocks")
    size = max(blocks)
    sd = d.state_dict()
    clamps = {}  # NVIDIA gives every activated conv the same conv_clamp, and the skips none
    for name, rec in d.modules.items():
        for layer_name, layer in rec.modules.items():
            if "conv_clamp" not in layer.state:  # mbstd, fc, out
                continue
            clamp = layer.attr("conv_clamp")
            if layer_name == "skip":
                if clamp is not None:
                    raise CheckpointError(f"{source}: {name}.skip has conv_clamp={clamp}; NVIDIA never clamps the "
                                          "skip path and this model does not either")
            else:
                clamps[f"{name}.{layer_name}"] = clamp
        arch = rec.attr("architecture")
        if name != "b4" and arch not in (None, "resnet"):
            raise CheckpointError(f"{source}: {name} has architecture={arch!r}; only 'resnet' is supported")
    mbstd = blocks[4].modules.get("mbstd")
    if mbstd is None or int(mbstd.attr("num_channels", 1)) != 1:
        raise CheckpointError(f"{source}: b4.mbstd must exist with num_channels=1")
    group = mbstd.attr("group_size")
    first = next(iter(clamps.values()), None)
    for layer_name, clamp in clamps.items():
        if clamp != first:
            raise CheckpointError(f"{source}: {layer_name} has conv_clamp={clamp} where the other convs have "
                                  f"{first}; only one clamp for every activated conv is supported")
    out: dict[str, torch.Tensor] = {}

    def take(src: str, dst: str) -> None:
        if src not in sd:
            raise CheckpointError(f"{source}: the discriminator has no tensor {src!r}")
        out[dst] = sd[src].float()

    take(f"b{size}.fromrgb.weight", "convs.0.0.weight")
    take(f"b{size}.fromrgb.bias", "convs.0.1.bias")
    res, i = size, 1
    channels = {size: int(sd[f"b{size}.fromrgb.weight"].shape[0])} if f"b{size}.fromrgb.weight" in sd else {}
    while res > 4:
        take(f"b{res}.conv0.weight", f"convs.{i}.conv1.0.weight")
        take(f"b{res}.conv0.bias", f"convs.{i}.conv1.1.bias")
        take(f"b{res}.conv1.weight", f"convs.{i}.conv2.1.weight")
        take(f"b{res}.conv1.bias", f"convs.{i}.conv2.2.bias")
        take(f"b{res}.skip.weight", f"convs.{i}.skip.1.weight")
        channels[res] = int(out[f"convs.{i}.conv1.0.weight"].shape[0])
        channels[res // 2] = int(out[f"convs.{i}.conv2.1.weight"].shape[0])
        res, i = res // 2, i + 1
    for src, dst in (("conv", "final_conv.0.weight"), ("fc", "final_linear.0.weight"), ("out", "final_linear.1.weight")):
        take(f"b4.{src}.weight", dst)
    take("b4.conv.bias", "final_conv.1.bias")
    take("b4.fc.bias", "final_linear.0.bias")
    take("b4.out.bias", "final_linear.1.bias")
    options = {"stddev_group": None if group is None else int(group),
               "conv_clamp": None if first is None else float(first)}
    return channels, size, out, options


def load_nvidia_discriminator(path: str | os.PathLike) -> Discriminator:
    """The discriminator of an NVIDIA StyleGAN2-ADA ``.pkl`` (``stylegan2-ffhq-config-f.pkl``)
    as an instyle :class:`Discriminator` (CPU). Raises :class:`CheckpointError` naming the file."""
    d_rec = select_discriminator(read_pickle(path), path)
    try:
        channels, size, state, options = convert_discriminator(d_rec, path)
        d = Discriminator(size, channels=channels, **options)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path} [D]: {type(e).__name__}: {e}") from None
    own = d.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if own[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{path} [D]: tensors do not fit the StyleGAN2 discriminator: {wrong[:3]}")
    d.load_state_dict({**own, **state})
    return d
