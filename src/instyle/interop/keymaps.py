"""Pure functions from other projects' state dicts to instyle configs and state dicts.

Nothing here touches files or model code: each function takes tensors / dicts and
returns tensors / dicts, so converters are easy to test and to extend.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from instyle.errors import InstyleError
from instyle.models.encoders.backbone import RESNET34_UNITS, UNITS
from instyle.models.encoders.psp_encoders import EncoderConfig
from instyle.models.psp import PSPConfig
from instyle.models.stylegan2 import GeneratorConfig, channel_fields

__all__ = [
    "DATASET_TYPE_TO_TASK",
    "strip_prefix",
    "generator_config_from_state_dict",
    "encoder_config_from_state_dict",
    "psp_config_from_official",
    "task_for_dataset_type",
]

#: Official ``opts['dataset_type']`` values and the instyle task preset they correspond to.
DATASET_TYPE_TO_TASK = {
    "ffhq_encode": "inversion",
    "ffhq_frontalize": "frontalization",
    "celebs_sketch_to_face": "sketch2face",
    "celebs_seg_to_face": "seg2face",
    "celebs_super_resolution": "super_resolution",
    "ffhq_aging": "image2image",
    "toonify": "image2image",
}


def task_for_dataset_type(dataset_type: str | None) -> str:
    """The one rule from an official ``opts['dataset_type']`` to an instyle task name: none
    given -> ``inversion``; a known type -> its task (:data:`DATASET_TYPE_TO_TASK`); another
    ``*_encode`` type (cars, churches, horses, ...) -> ``inversion``; anything else -> ``image2image``."""
    if not dataset_type:
        return "inversion"
    if dataset_type in DATASET_TYPE_TO_TASK:
        return DATASET_TYPE_TO_TASK[dataset_type]
    return "inversion" if str(dataset_type).endswith("_encode") else "image2image"


class ArchitectureError(InstyleError, ValueError):
    """The tensors do not describe a supported architecture."""


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries of ``state_dict`` starting with ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def generator_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> GeneratorConfig:
    """Infer a rosinality-layout generator's architecture from its tensors (no prefix)."""
    if "style.1.weight" not in sd or "conv1.conv.weight" not in sd:
        raise ArchitectureError(
            "not a StyleGAN2 generator state dict (rosinality layout): missing 'style.1.weight' "
            "or 'conv1.conv.weight'"
        )
    style_dim = int(sd["style.1.weight"].shape[0])
    n_mlp = len([k for k in sd if re.fullmatch(r"style\.\d+\.weight", k)])
    n_rgbs = len({int(m.group(1)) for k in sd if (m := re.match(r"to_rgbs\.(\d+)\.", k))})
    log_size = n_rgbs + 2
    n_noise = len([k for k in sd if re.fullmatch(r"noises\.noise_\d+", k)])
    if n_noise and n_noise != (log_size - 2) * 2 + 1:
        raise ArchitectureError(
            f"inconsistent generator: {n_rgbs} to_rgbs layers imply {2 ** log_size}px but there are "
            f"{n_noise} noise buffers"
        )
    channels = {4: int(sd["conv1.conv.weight"].shape[1])}
    for i in range(3, log_size + 1):
        w = sd.get(f"convs.{(i - 3) * 2}.conv.weight")
        if w is None:
            raise ArchitectureError(f"generator state dict lacks convs.{(i - 3) * 2}.conv.weight")
        channels[2**i] = int(w.shape[1])
    return GeneratorConfig(size=2**log_size, style_dim=style_dim, n_mlp=n_mlp, **channel_fields(channels))


def encoder_config_from_state_dict(
    sd: Mapping[str, torch.Tensor], n_styles: int | None = None, input_size: int = 256
) -> EncoderConfig:
    """Infer a pSp encoder's architecture from its tensors (no ``encoder.`` prefix).

    Args:
        sd: encoder state dict.
        n_styles: number of styles (needed only for the W encoder, which cannot tell).
        input_size: input side for the W / W+ encoders (the FPN encoder's is inferred).
    """
    resnet = "input_layer.0.weight" not in sd and "conv1.weight" in sd and "body.0.conv1.weight" in sd
    if "input_layer.0.weight" not in sd and not resnet:
        raise ArchitectureError("not a pSp encoder state dict: missing 'input_layer.0.weight' (or a ResNet 'conv1.weight')")
    w0 = sd["conv1.weight" if resnet else "input_layer.0.weight"]
    input_nc = int(w0.shape[1])
    mode = "ir_se" if resnet or any(k.endswith("res_layer.5.fc1.weight") for k in sd) else "ir"
    n_units = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k)))
    depth_key = "body.{}.conv1.weight" if resnet else "body.{}.res_layer.1.weight"
    depths = [int(sd[depth_key.format(i)].shape[0]) for i in range(n_units)]
    units, widths = [], []
    for d in depths:
        if widths and widths[-1] == d:  # consecutive stages always differ in width
            units[-1] += 1
        else:
            widths.append(d)
            units.append(1)
    if len(widths) != 4:
        raise ArchitectureError(f"encoder backbone has {len(widths)} stages of widths {widths}; expected 4")
    num_layers = next((n for n, u in UNITS.items() if tuple(u) == tuple(units)), 50)
    units_field = None if tuple(units) == tuple(UNITS.get(num_layers, ())) else tuple(units)
    if resnet:
        num_layers, units_field = 50, None if tuple(units) == RESNET34_UNITS else tuple(units)

    if any(k.startswith("styles.") for k in sd):
        n = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"styles\.(\d+)\.", k)))
        convs = [
            len([k for k in sd if re.fullmatch(rf"styles\.{i}\.convs\.\d+\.weight", k)]) for i in range(n)
        ]
        style_dim = int(sd["styles.0.linear.weight"].shape[0])
        coarse_pools = convs[0]
        input_size = 2**coarse_pools * 16
        if "latlayer1.weight" not in sd:  # ReStyle's BackboneEncoder: every head on the S/16 map
            if len(set(convs)) != 1:
                raise ArchitectureError(f"map2style depths {convs} differ but there is no FPN (latlayer1)")
            return EncoderConfig(
                type="ResNetBackboneEncoder" if resnet else "BackboneEncoder", num_layers=num_layers, mode=mode,
                input_nc=input_nc, n_styles=n, style_dim=style_dim, widths=tuple(widths), units=units_field,
                input_size=input_size,
            )
        kind = "ResNetGradualStyleEncoder" if resnet else "GradualStyleEncoder"
        coarse = sum(1 for c in convs if c == coarse_pools)
        middle = coarse + sum(1 for c in convs if c == coarse_pools + 1)
        if sum(1 for c in convs if c == coarse_pools + 2) + middle != n:
            raise ArchitectureError(f"unexpected map2style depths {convs}")
        return EncoderConfig(
            type=kind, num_layers=num_layers, mode=mode, input_nc=input_nc, n_styles=n,
            style_dim=style_dim, widths=tuple(widths), units=units_field, input_size=input_size,
            coarse=coarse, middle=max(middle, coarse),
        )
    if resnet:
        raise ArchitectureError("a ResNet trunk without 'styles.*' heads is not a supported encoder")
    if "output_layer_2.3.weight" in sd:
        style_dim = int(sd["output_layer_2.3.weight"].shape[0])
        n = int(sd["linear.weight"].shape[0]) // style_dim
        return EncoderConfig(
            type="BackboneEncoderUsingLastLayerIntoWPlus", num_layers=num_layers, mode=mode, input_nc=input_nc,
            n_styles=n, style_dim=style_dim, widths=tuple(widths), units=units_field, input_size=input_size,
        )
    if "linear.weight" in sd:
        style_dim = int(sd["linear.weight"].shape[0])
        return EncoderConfig(
            type="BackboneEncoderUsingLastLayerIntoW", num_layers=num_layers, mode=mode, input_nc=input_nc,
            n_styles=n_styles or 18, style_dim=style_dim, widths=tuple(widths), units=units_field,
            input_size=input_size,
        )
    raise ArchitectureError("unrecognised pSp encoder: no 'styles.*', 'output_layer_2.*' or 'linear.*' tensors")


def psp_config_from_official(
    state_dict: Mapping[str, torch.Tensor], opts: Mapping | None, has_latent_avg: bool
) -> tuple[PSPConfig, list[str]]:
    """Architecture of an official pSp checkpoint, checked against its ``opts``.

    Returns:
        ``(config, notes)`` where notes are human-readable remarks (defaults applied).

    Raises:
        ArchitectureError: the tensors contradict ``opts`` (e.g. a 1024 generator whose
            opts say 256) or describe no supported model.
    """
    opts = dict(opts or {})
    notes: list[str] = []
    gen = generator_config_from_state_dict(strip_prefix(state_dict, "decoder."))
    enc_sd = strip_prefix(state_dict, "encoder.")
    enc = encoder_config_from_state_dict(enc_sd, n_styles=gen.n_latent)

    def check(key, value, default=None):
        # Old official opts lack some keys (e.g. output_size, default 1024): the weights decide.
        if key not in opts:
            if default is not None:
                notes.append(f"opts has no {key!r}; derived {key}={value!r} from the weights")
            return
        given = opts[key]
        if given is not None and given != value:
            raise ArchitectureError(
                f"opts[{key!r}]={given!r} but the weights describe {key}={value!r}"
            )

    check("output_size", gen.size, 1024)
    check("encoder_type", enc.type)
    check("input_nc", enc.input_nc)
    if "n_styles" in opts and int(opts["n_styles"]) != gen.n_latent:
        raise ArchitectureError(f"opts['n_styles']={opts['n_styles']} but the generator takes {gen.n_latent}")
    if enc.type != "BackboneEncoderUsingLastLayerIntoW" and enc.n_styles != gen.n_latent:
        raise ArchitectureError(
            f"the encoder predicts {enc.n_styles} styles but the {gen.size}px generator takes {gen.n_latent}"
        )
    learn_in_w = enc.type == "BackboneEncoderUsingLastLayerIntoW"
    if "learn_in_w" in opts and bool(opts["learn_in_w"]) != learn_in_w:
        raise ArchitectureError(f"opts['learn_in_w']={opts['learn_in_w']} contradicts encoder type {enc.type}")
    if "learn_in_w" not in opts:
        notes.append(f"opts has no 'learn_in_w'; derived {learn_in_w} from the encoder type")
    start = opts.get("start_from_latent_avg")
    if start is None:
        start = has_latent_avg
        notes.append(f"opts has no 'start_from_latent_avg'; using {start} (latent_avg {'present' if has_latent_avg else 'absent'})")
    start = bool(start)
    dataset_type = opts.get("dataset_type", "ffhq_encode")
    task = task_for_dataset_type(dataset_type)
    label_nc = int(opts.get("label_nc") or 0)
    return (
        PSPConfig(
            encoder=enc, generator=gen, start_from_latent_avg=start, learn_in_w=learn_in_w, task=task,
            label_nc=label_nc,
        ),
        notes,
    )
