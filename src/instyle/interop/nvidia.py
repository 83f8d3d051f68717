"""NVIDIA StyleGAN2-ADA (PyTorch) network pickles -> instyle generators.

Reading goes through :mod:`instyle.interop.restricted_pickle` (no code from the file
runs); conversion is a pure key map from NVIDIA's generator state dict to rosinality
names (:func:`convert_generator`).

How NVIDIA's layers map onto ours (checked numerically against NVIDIA's code):

* mapping ``fc{i}``: NVIDIA stores ``w / lr_multiplier`` and applies ``lr / sqrt(in)`` at
  run time, as rosinality's ``EqualLinear(lr_mul=lr)`` does, so weights copy unchanged;
  biases too (both scale them by ``lr``). ``w_avg`` becomes ``latent_avg`` ``[1, w_dim]``.
* ``conv0`` / ``conv1``: the affine layer is our modulation; the conv weight is copied
  as is. Demodulation cancels the different weight-gain placement. The upsampling conv0
  is a transposed convolution with the unflipped weight in both implementations
  (NVIDIA's ``flip_weight=False`` for ``up=2`` undoes ``conv_transpose2d``'s own flip),
  so no flip is needed; the ``resample_filter`` (normalised, times ``up**2``) becomes the
  blur kernel.
* ``noise_const`` / ``noise_strength`` become ``noises.noise_i`` / ``noise.weight``, so
  NVIDIA's ``noise_mode='const'`` is our ``randomize_noise=False``.
* ``torgb``: NVIDIA scales the styles by ``1/sqrt(in)``, we scale the weight: same product.
* ``conv_clamp`` clamps conv outputs after the activation gain and ToRGB outputs to
  ``±conv_clamp`` in both. fp16 settings do not change values in float32.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from instyle.errors import CheckpointError
from instyle.interop.keymaps import ArchitectureError
from instyle.interop.restricted_pickle import PersistentObject, read_pickle
from instyle.models.own_format import build_empty, load_state_checked
from instyle.models.stylegan2 import Generator, GeneratorConfig
from instyle.models.stylegan2 import channel_fields as _channel_fields  # the one home (tests use this name)
from instyle.utils.config import ConfigError

__all__ = [
    "NvidiaOptions",
    "select_generator",
    "generator_options",
    "convert_generator",
    "read_nvidia_generator",
    "load_nvidia_generator",
]


@dataclass(frozen=True)
class NvidiaOptions:
    """Settings of an NVIDIA generator that change its output but are not tensors.

    Attributes:
        lr_multiplier: mapping-network learning-rate multiplier (weights are stored
            divided by it).
        conv_clamp: clamp of conv / ToRGB outputs, or None.
        architecture: synthesis architecture; only ``"skip"`` is supported.
        activation: activation of the mapping and synthesis layers; only ``"lrelu"``.
        img_channels: output channels; only 3.
        c_dim: conditioning label size; only 0 (unconditional).
    """

    lr_multiplier: float = 0.01
    conv_clamp: float | None = None
    architecture: str = "skip"
    activation: str = "lrelu"
    img_channels: int = 3
    c_dim: int = 0

    def check(self) -> None:
        """Raise :class:`ArchitectureError` for anything instyle's generator cannot express."""
        if self.c_dim:
            raise ArchitectureError(
                f"conditional generators (c_dim={self.c_dim}) are not supported yet: instyle's generator "
                "takes no class label"
            )
        if self.architecture != "skip":
            raise ArchitectureError(
                f"synthesis architecture {self.architecture!r} is not supported; only 'skip' (StyleGAN2 config-f)"
            )
        if self.activation != "lrelu":
            raise ArchitectureError(f"activation {self.activation!r} is not supported; only 'lrelu'")
        if self.img_channels != 3:
            raise ArchitectureError(f"generators with {self.img_channels} image channels are not supported; only 3")
        if not self.lr_multiplier > 0:
            raise ArchitectureError(f"mapping lr_multiplier={self.lr_multiplier} must be > 0")


# ----------------------------------------------------------------------------- records


def select_generator(data: Any, source: Any) -> tuple[PersistentObject, str]:
    """The generator record of an unpickled file: ``G_ema`` (else ``G``) of a training
    snapshot, or a bare pickled ``Generator``. Returns ``(record, name)``."""
    if isinstance(data, PersistentObject):
        if data.class_name == "Generator":
            return data, "Generator"
        if data.class_name == "Discriminator":
            raise CheckpointError(f"{source}: holds only a discriminator (D); instyle needs a generator (G_ema or G)")
        raise CheckpointError(f"{source}: holds a {data.class_name!r} network, not a StyleGAN2 generator")
    if isinstance(data, Mapping):
        for key in ("G_ema", "G"):
            rec = data.get(key)
            if isinstance(rec, PersistentObject):
                if rec.class_name != "Generator":
                    raise CheckpointError(f"{source}: '{key}' is a {rec.class_name!r}, not a StyleGAN2 generator")
                if key == "G":
                    warnings.warn(f"{source}: no 'G_ema' in the file; using the raw training generator 'G'", stacklevel=3)
                return rec, key
        if isinstance(data.get("D"), PersistentObject):
            raise CheckpointError(
                f"{source}: holds only a discriminator ('D', no 'G_ema' or 'G'); instyle needs a generator"
            )
        keys = ", ".join(repr(k) for k in list(data)[:8])
        raise CheckpointError(
            f"{source}: not an NVIDIA StyleGAN2-ADA network pickle: expected a dict with 'G_ema' (found keys {keys})"
        )
    raise CheckpointError(
        f"{source}: not an NVIDIA StyleGAN2-ADA network pickle (it holds a {type(data).__name__}, "
        "expected a dict with 'G_ema')"
    )


def _only(values: set, what: str) -> Any:
    values.discard(None)
    if len(values) > 1:
        raise ArchitectureError(f"layers disagree on {what}: {sorted(map(str, values))}")
    return values.pop() if values else None


def generator_options(g: PersistentObject) -> NvidiaOptions:
    """Read the non-tensor settings of an NVIDIA ``Generator`` record.

    Values come from the module attributes NVIDIA's forward pass uses, falling back to the
    recorded constructor arguments.
    """
    init = g.attr("_init_kwargs") or {}
    mapping_kw = init.get("mapping_kwargs") or {}
    synthesis_kw = init.get("synthesis_kwargs") or {}
    mapping, synthesis = g.modules.get("mapping"), g.modules.get("synthesis")
    if mapping is None or synthesis is None:
        raise ArchitectureError("the Generator has no 'mapping' and 'synthesis' sub-networks")
    fcs = [m for name, m in mapping.modules.items() if re.fullmatch(r"fc\d+", name)]
    lr = _only({float(m.attr("bias_gain")) for m in fcs if m.attr("bias_gain") is not None}, "lr_multiplier")
    activations = {m.attr("activation") for m in fcs}
    clamps, archs = set(), set()
    for block in synthesis.modules.values():
        archs.add(block.attr("architecture"))
        for name, layer in block.modules.items():
            if name in ("conv0", "conv1", "torgb") and "conv_clamp" in layer.state:
                clamps.add(layer.attr("conv_clamp"))
            if name in ("conv0", "conv1"):
                activations.add(layer.attr("activation"))
    clamp = _only(set(clamps), "conv_clamp") if clamps else synthesis_kw.get("conv_clamp")
    c_dim = g.attr("c_dim", init.get("c_dim", 0))
    return NvidiaOptions(
        lr_multiplier=lr if lr is not None else float(mapping_kw.get("lr_multiplier", 0.01)),
        conv_clamp=None if clamp is None else float(clamp),
        architecture=_only(archs, "architecture") or synthesis_kw.get("architecture", "skip"),
        activation=_only(activations, "activation") or "lrelu",
        img_channels=int(g.attr("img_channels", init.get("img_channels", 3))),
        c_dim=int(c_dim or 0),
    )


# ----------------------------------------------------------------------------- conversion


def _filter_taps(f: torch.Tensor) -> tuple[int, ...]:
    """1-D integer taps of NVIDIA's prepared (outer-product, sum-1) 2-D resampling filter."""
    if f.ndim != 2 or f.shape[0] != f.shape[1]:
        raise ArchitectureError(f"resample_filter of shape {tuple(f.shape)} is not a square 2-D filter")
    f = f.double()
    row = f.sum(1)
    taps = row / row.abs()[row.abs() > 0].min()
    rounded = taps.round()
    separable = torch.outer(row, row) / row.sum() ** 2
    if not torch.allclose(taps, rounded, atol=1e-4) or not torch.allclose(separable, f / f.sum(), atol=1e-6):
        raise ArchitectureError(f"resample_filter is not a separable integer-tap filter: {f.tolist()}")
    return tuple(int(t) for t in rounded)


class _Taker:
    """Hands out NVIDIA tensors by name and remembers which were used."""

    def __init__(self, sd: Mapping[str, torch.Tensor]):
        self.sd = sd
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.sd

    def __call__(self, key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        if key not in self.sd:
            raise ArchitectureError(f"the generator lacks tensor '{key}'")
        t = self.sd[key]
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise ArchitectureError(f"'{key}' has shape {tuple(t.shape)}, expected {tuple(shape)}")
        self.used.add(key)
        return t.detach().float().contiguous()


def _styled_conv(take: _Taker, nv: str, ro: str, cin: int, cout: int, w_dim: int, up: bool, out: dict) -> None:
    out[f"{ro}.conv.weight"] = take(f"{nv}.weight", (cout, cin, 3, 3)).unsqueeze(0)
    out[f"{ro}.conv.modulation.weight"] = take(f"{nv}.affine.weight", (cin, w_dim))
    out[f"{ro}.conv.modulation.bias"] = take(f"{nv}.affine.bias", (cin,))
    out[f"{ro}.activate.bias"] = take(f"{nv}.bias", (cout,))
    f = take(f"{nv}.resample_filter")
    if up:
        out[f"{ro}.conv.blur.kernel"] = f * 4  # upfirdn2d gain up**2
    if f"{nv}.noise_const" in take:
        out[f"{ro}.noise.weight"] = take(f"{nv}.noise_strength", ()).reshape(1)
    else:  # use_noise=False: a zero-strength noise input is the same function
        out[f"{ro}.noise.weight"] = torch.zeros(1)


def _noise(take: _Taker, nv: str, res: int) -> torch.Tensor:
    key = f"{nv}.noise_const"
    return take(key, (res, res)).reshape(1, 1, res, res) if key in take else torch.zeros(1, 1, res, res)


def _to_rgb(take: _Taker, nv: str, ro: str, cin: int, w_dim: int, out: dict) -> None:
    out[f"{ro}.conv.weight"] = take(f"{nv}.weight", (3, cin, 1, 1)).unsqueeze(0)
    out[f"{ro}.conv.modulation.weight"] = take(f"{nv}.affine.weight", (cin, w_dim))
    out[f"{ro}.conv.modulation.bias"] = take(f"{nv}.affine.bias", (cin,))
    out[f"{ro}.bias"] = take(f"{nv}.bias", (3,)).reshape(1, 3, 1, 1)


def _check_structure(sd: Mapping[str, torch.Tensor]) -> list[int]:
    if any(k.startswith("synthesis.input.") for k in sd):
        raise ArchitectureError("this is a StyleGAN3 (alias-free) generator; only StyleGAN2 generators are supported")
    if any(k.startswith("mapping.embed.") for k in sd):
        c_dim = sd["mapping.embed.weight"].shape[1] if "mapping.embed.weight" in sd else "?"
        raise ArchitectureError(
            f"conditional generators (c_dim={c_dim}) are not supported yet: instyle's generator takes no class label"
        )
    resolutions = sorted({int(m.group(1)) for k in sd if (m := re.match(r"synthesis\.b(\d+)\.", k))})
    if not resolutions or resolutions[0] != 4 or "synthesis.b4.const" not in sd:
        raise ArchitectureError("not a StyleGAN2 synthesis network: no 'synthesis.b4.const'")
    expected = [2**i for i in range(2, int(math.log2(resolutions[-1])) + 1)]
    if resolutions != expected:
        raise ArchitectureError(f"synthesis blocks {resolutions} are not the full ladder {expected}")
    if resolutions[-1] < 8:
        raise ArchitectureError("4 px generators are not supported (instyle needs >= 8 px)")
    return resolutions


def convert_generator(
    sd: Mapping[str, torch.Tensor], options: NvidiaOptions | None = None
) -> tuple[GeneratorConfig, dict[str, torch.Tensor], torch.Tensor | None]:
    """Map an NVIDIA StyleGAN2(-ADA) generator state dict to instyle's.

    Args:
        sd: NVIDIA ``Generator.state_dict()`` names (``mapping.fc0.weight``,
            ``synthesis.b4.const``, ...).
        options: non-tensor settings (:func:`generator_options`).

    Returns:
        ``(config, state_dict, latent_avg [1, w_dim] or None)``; the state dict loads
        strictly into ``Generator(config)``.

    Raises:
        ArchitectureError: an unsupported generator, or a tensor that has no place in the
            result (every input tensor is mapped or checked).
    """
    options = options or NvidiaOptions()
    options.check()
    resolutions = _check_structure(sd)
    take = _Taker(sd)
    n_mlp = len([k for k in sd if re.fullmatch(r"mapping\.fc\d+\.weight", k)])
    if n_mlp == 0:
        raise ArchitectureError("the mapping network has no 'mapping.fc*' layers")
    w_dim = int(sd[f"mapping.fc{n_mlp - 1}.weight"].shape[0])
    out: dict[str, torch.Tensor] = {}
    for i in range(n_mlp):
        w = sd.get(f"mapping.fc{i}.weight")
        if w is None or tuple(w.shape) != (w_dim, w_dim):
            shape = None if w is None else tuple(w.shape)
            raise ArchitectureError(
                f"mapping.fc{i}.weight has shape {shape}; instyle's mapping network needs z_dim == w_dim == "
                f"layer width ({w_dim})"
            )
        out[f"style.{i + 1}.weight"] = take(f"mapping.fc{i}.weight")
        out[f"style.{i + 1}.bias"] = take(f"mapping.fc{i}.bias", (w_dim,))

    channels = {r: int(sd[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in resolutions if f"synthesis.b{r}.conv1.weight" in sd}
    if len(channels) != len(resolutions):
        raise ArchitectureError("a synthesis block lacks its conv1 layer")
    # Only the filters of upsampling paths (block skip, conv0) act; the 4x4 block's and the
    # conv1 layers' are stored but unused by NVIDIA's forward pass.
    ref_filter = sd["synthesis.b8.resample_filter"].float()
    taps = _filter_taps(ref_filter)
    for r in resolutions[1:]:
        for k in (f"synthesis.b{r}.resample_filter", f"synthesis.b{r}.conv0.resample_filter"):
            f = sd.get(k)
            if f is None or f.shape != ref_filter.shape or not torch.allclose(f.float(), ref_filter, atol=1e-7):
                raise ArchitectureError(f"'{k}' is missing or differs from the other resampling filters")
    take("synthesis.b4.resample_filter")

    c4 = channels[4]
    out["input.input"] = take("synthesis.b4.const", (c4, 4, 4)).unsqueeze(0)
    _styled_conv(take, "synthesis.b4.conv1", "conv1", c4, c4, w_dim, False, out)
    noises = [_noise(take, "synthesis.b4.conv1", 4)]
    _to_rgb(take, "synthesis.b4.torgb", "to_rgb1", c4, w_dim, out)
    for j, res in enumerate(resolutions[1:]):
        nv, cin, cout = f"synthesis.b{res}", channels[res // 2], channels[res]
        _styled_conv(take, f"{nv}.conv0", f"convs.{2 * j}", cin, cout, w_dim, True, out)
        _styled_conv(take, f"{nv}.conv1", f"convs.{2 * j + 1}", cout, cout, w_dim, False, out)
        noises += [_noise(take, f"{nv}.conv0", res), _noise(take, f"{nv}.conv1", res)]
        _to_rgb(take, f"{nv}.torgb", f"to_rgbs.{j}", cout, w_dim, out)
        out[f"to_rgbs.{j}.upsample.kernel"] = take(f"{nv}.resample_filter") * 4
    for i, n in enumerate(noises):
        out[f"noises.noise_{i}"] = n

    latent_avg = take("mapping.w_avg", (w_dim,)).reshape(1, w_dim) if "mapping.w_avg" in sd else None
    leftovers = sorted(set(sd) - take.used)
    if leftovers:
        raise ArchitectureError(f"{len(leftovers)} tensor(s) have no counterpart in instyle's generator: {leftovers[:5]}")

    config = GeneratorConfig(
        size=resolutions[-1], style_dim=w_dim, n_mlp=n_mlp, blur_kernel=taps, lr_mlp=options.lr_multiplier,
        conv_clamp=options.conv_clamp, **_channel_fields(channels),
    )
    return config, out, latent_avg


# ----------------------------------------------------------------------------- loading


def read_nvidia_generator(
    path: str | os.PathLike,
) -> tuple[GeneratorConfig, dict[str, torch.Tensor], torch.Tensor | None]:
    """Read and convert the generator of an NVIDIA pickle without building a model.

    Returns:
        ``(config, instyle state dict, latent_avg [1, w_dim] or None)``.

    Raises:
        CheckpointError: unreadable/unsafe file, TF-era pickle, no generator, or an
            unsupported generator (conditional, StyleGAN3, other architectures).
    """
    data = read_pickle(path)
    record, key = select_generator(data, path)
    source = f"{path} [{key}]"
    try:
        options = generator_options(record)
        return convert_generator(record.state_dict(), options)
    except (ArchitectureError, ConfigError) as e:
        raise CheckpointError(f"{source}: {e}") from None


def load_nvidia_generator(path: str | os.PathLike) -> Generator:
    """Load an NVIDIA StyleGAN2-ADA ``.pkl`` as an instyle :class:`Generator` (CPU, eval).

    ``generator.latent_avg`` is NVIDIA's ``w_avg`` (``[1, w_dim]``; None if the file has
    none). With ``randomize_noise=False`` the output equals NVIDIA's ``noise_mode='const'``.
    """
    config, state, latent_avg = read_nvidia_generator(path)
    g = build_empty(Generator, config)
    load_state_checked(g, state, path, assign=True)
    g.latent_avg = latent_avg
    return g.eval()
