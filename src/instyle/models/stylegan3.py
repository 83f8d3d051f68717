"""StyleGAN3 generator (alias-free; configs T and R) in plain PyTorch.

Module and tensor names are NVIDIA's (``mapping.fc0``, ``mapping.w_avg``,
``synthesis.input.{weight,freqs,phases,affine}``, ``synthesis.L0_36_1024.{weight,bias,
magnitude_ema,up_filter,down_filter,affine}``, ...), so NVIDIA's and stylegan3-editing's
state dicts load strictly; only ``synthesis.input.transform`` is not part of our state dict
(it is an argument here, see :meth:`StyleGAN3Generator.synthesize`).

Structure (Karras et al. 2021, NVIDIA's ``networks_stylegan3.py`` semantics):

* mapping: ``z`` normalised by its RMS, ``mapping_layers`` equalised linear layers with
  leaky ReLU (lr multiplier), broadcast to ``n_latent = num_layers + 2`` ws, truncation
  lerps towards ``w_avg``;
* synthesis input: Fourier features whose frequencies are rotated / translated by a
  learned transform of ``w[0]`` and the user ``transform`` (out-of-band amplitudes damped);
* ``num_layers + 1`` layers: modulated conv (weights and styles pre-normalised,
  demodulated, then scaled by ``magnitude_ema ** -0.5``), then ``filtered_lrelu`` with the
  layer's up / down filters (buffers read from the file); the last layer is ToRGB;
* the output is multiplied by ``output_scale``.

The per-layer sampling rates, cutoffs, sizes and paddings follow NVIDIA's geometric
schedule from the config (:func:`layer_specs`); loaders check them against the layer
names of the file (``L{i}_{size}_{channels}``). Images are ``[B, 3, R, R]``, nominally in
[-1, 1], never clamped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instyle.models.own_format import adopt_state, check_finite, read_pretrained, write_pretrained
from instyle.ops import filtered_lrelu, fused_leaky_relu
from instyle.ops.stylegan3_conv import modulated_conv2d_sg3
from instyle.utils.config import (
    ConfigError,
    DictConfig,
    check_int_range,
    check_positive_finite,
    check_power_of_two,
)
from instyle.utils.device import DEFAULT_DEVICE, resolve_device

__all__ = [
    "MAX_SG3_CHANNELS",
    "MAX_SG3_LAYERS",
    "MAX_SG3_SIZE",
    "NOISE_MODES",
    "StyleGAN3Config",
    "StyleGAN3Generator",
    "design_lowpass_filter",
    "layer_specs",
]

#: Bounds a file's configuration must respect before anything is built.
MAX_SG3_SIZE = 2048
MAX_SG3_CHANNELS = 2048
MAX_SG3_LAYERS = 32
#: NVIDIA's ``noise_mode`` values (StyleGAN3 has no noise inputs: accepted and ignored).
NOISE_MODES = ("random", "const", "none")


@dataclass
class StyleGAN3Config(DictConfig):
    """Architecture of a StyleGAN3 generator (NVIDIA's constructor arguments).

    ``channels`` (``num_layers + 1`` output widths, the last one = ``img_channels``) and
    ``input_channels`` are read from a file's tensors; None derives them from
    ``channel_base`` / ``channel_max`` as NVIDIA does. Config T: ``conv_kernel=3``;
    config R: ``conv_kernel=1, use_radial_filters=True`` (and doubled channel base / max).
    """

    SECTION = 'stylegan3'

    z_dim: int = 512
    w_dim: int = 512
    img_resolution: int = 1024
    img_channels: int = 3
    channel_base: int = 32768
    channel_max: int = 512
    channels: tuple[int, ...] | None = None
    input_channels: int | None = None
    num_layers: int = 14
    num_critical: int = 2
    first_cutoff: float = 2.0
    first_stopband: float = 2**2.1
    last_stopband_rel: float = 2**0.3
    margin_size: int = 10
    output_scale: float = 0.25
    conv_kernel: int = 3
    filter_size: int = 6
    lrelu_upsampling: int = 2
    use_radial_filters: bool = False
    conv_clamp: float | None = 256.0
    magnitude_ema_beta: float = 0.999
    mapping_layers: int = 2
    lr_multiplier: float = 0.01
    w_avg_beta: float = 0.998

    def __post_init__(self):
        check_power_of_two("stylegan3.img_resolution", self.img_resolution, minimum=16, maximum=MAX_SG3_SIZE)
        check_int_range("stylegan3.z_dim", self.z_dim, 1, MAX_SG3_CHANNELS)
        check_int_range("stylegan3.w_dim", self.w_dim, 1, MAX_SG3_CHANNELS)
        check_int_range("stylegan3.img_channels", self.img_channels, 1, 4)
        check_int_range("stylegan3.channel_base", self.channel_base, 1, 1 << 20)
        check_int_range("stylegan3.channel_max", self.channel_max, 1, MAX_SG3_CHANNELS)
        check_int_range("stylegan3.num_layers", self.num_layers, 2, MAX_SG3_LAYERS)
        check_int_range("stylegan3.num_critical", self.num_critical, 0, self.num_layers - 1)
        check_int_range("stylegan3.margin_size", self.margin_size, 0, 256)
        check_int_range("stylegan3.conv_kernel", self.conv_kernel, 1, 7)
        if self.conv_kernel % 2 == 0:
            raise ConfigError(f"stylegan3.conv_kernel={self.conv_kernel} must be odd (1 for config R, 3 for T)")
        check_int_range("stylegan3.filter_size", self.filter_size, 1, 16)
        check_int_range("stylegan3.lrelu_upsampling", self.lrelu_upsampling, 1, 4)
        check_int_range("stylegan3.mapping_layers", self.mapping_layers, 1, MAX_SG3_LAYERS)
        for name in ("first_cutoff", "first_stopband", "last_stopband_rel", "output_scale", "lr_multiplier"):
            check_positive_finite(f"stylegan3.{name}", getattr(self, name))
        check_positive_finite("stylegan3.conv_clamp", self.conv_clamp, optional=True)
        for name in ("magnitude_ema_beta", "w_avg_beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"stylegan3.{name}={v!r} must be a number in [0, 1]")
        if not isinstance(self.use_radial_filters, bool):
            raise ConfigError(f"stylegan3.use_radial_filters={self.use_radial_filters!r} must be true or false")
        if self.channels is not None:
            self.channels = tuple(self.channels)
            if len(self.channels) != self.num_layers + 1:
                raise ConfigError(
                    f"stylegan3.channels has {len(self.channels)} entries; it needs num_layers + 1 = {self.num_layers + 1}"
                )
            for i, c in enumerate(self.channels):
                check_int_range(f"stylegan3.channels[{i}]", c, 1, MAX_SG3_CHANNELS)
            if self.channels[-1] != self.img_channels:
                raise ConfigError(
                    f"stylegan3.channels[-1]={self.channels[-1]} must equal img_channels={self.img_channels}"
                )
        if self.input_channels is not None:
            check_int_range("stylegan3.input_channels", self.input_channels, 1, MAX_SG3_CHANNELS)
        layer_specs(self)  # the schedule must be buildable (sizes, integer factors)

    @property
    def n_latent(self) -> int:
        """Number of ws: the input, ``num_layers`` layers and ToRGB."""
        return self.num_layers + 2

    @property
    def style_dim(self) -> int:
        """``w_dim`` under the StyleGAN2 config's name."""
        return self.w_dim

    @property
    def size(self) -> int:
        """``img_resolution`` under the StyleGAN2 config's name."""
        return self.img_resolution


def layer_specs(config: StyleGAN3Config) -> dict:
    """NVIDIA's schedule: ``{"input": {...}, "layers": [{...} per layer]}`` with sizes,
    channels, sampling rates, cutoffs, half widths, up/down factors, filter taps and padding.

    Raises:
        ConfigError: a schedule that does not give integer resampling factors.
    """
    n, res = config.num_layers, config.img_resolution
    last_cutoff = res / 2
    last_stopband = last_cutoff * config.last_stopband_rel
    exponents = np.minimum(np.arange(n + 1) / (n - config.num_critical), 1)
    cutoffs = config.first_cutoff * (last_cutoff / config.first_cutoff) ** exponents
    stopbands = config.first_stopband * (last_stopband / config.first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, res))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + config.margin_size * 2
    sizes[-2:] = res
    if config.channels is not None:
        channels = [int(c) for c in config.channels]
    else:
        channels = [int(c) for c in np.rint(np.minimum((config.channel_base / 2) / cutoffs, config.channel_max))]
        channels[-1] = config.img_channels
    input_channels = config.input_channels if config.input_channels is not None else channels[0]
    layers = []
    for idx in range(n + 1):
        prev = max(idx - 1, 0)
        torgb = idx == n
        critical = idx >= n - config.num_critical
        kernel = 1 if torgb else config.conv_kernel
        in_rate, out_rate = int(rates[prev]), int(rates[idx])
        tmp_rate = max(in_rate, out_rate) * (1 if torgb else config.lrelu_upsampling)
        up, down = int(np.rint(tmp_rate / in_rate)), int(np.rint(tmp_rate / out_rate))
        if in_rate * up != tmp_rate or out_rate * down != tmp_rate:
            raise ConfigError(f"stylegan3 layer {idx}: sampling rates {in_rate} -> {out_rate} give no integer factors")
        up_taps = config.filter_size * up if up > 1 and not torgb else 1
        down_taps = config.filter_size * down if down > 1 and not torgb else 1
        in_size, out_size = int(sizes[prev]), int(sizes[idx])
        pad_total = (out_size - 1) * down + 1 - (in_size + kernel - 1) * up + up_taps + down_taps - 2
        pad_lo = (pad_total + up) // 2
        cin = input_channels if idx == 0 else channels[prev]
        layers.append(dict(
            name=f"L{idx}_{out_size}_{channels[idx]}", torgb=torgb, critical=critical, kernel=kernel,
            in_channels=cin, out_channels=channels[idx], in_size=in_size, out_size=out_size,
            in_rate=in_rate, out_rate=out_rate, tmp_rate=tmp_rate, up=up, down=down,
            in_cutoff=float(cutoffs[prev]), out_cutoff=float(cutoffs[idx]),
            in_half_width=float(half_widths[prev]), out_half_width=float(half_widths[idx]),
            up_taps=up_taps, down_taps=down_taps, radial=config.use_radial_filters and not critical,
            padding=(pad_lo, pad_total - pad_lo, pad_lo, pad_total - pad_lo),
        ))
        if out_size < 1 or in_size < 1:
            raise ConfigError(f"stylegan3 layer {idx}: sizes {in_size} -> {out_size} are not positive")
    return {
        "input": dict(channels=input_channels, size=int(sizes[0]), sampling_rate=float(rates[0]),
                      bandwidth=float(cutoffs[0])),
        "layers": layers,
    }


def _kaiser_beta(numtaps: int, width: float) -> float:
    """Kaiser window beta for ``numtaps`` taps and a transition ``width`` (fraction of Nyquist)."""
    atten = 2.285 * (numtaps - 1) * np.pi * width + 7.95
    if atten > 50:
        return 0.1102 * (atten - 8.7)
    if atten > 21:
        return 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21)
    return 0.0


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False) -> torch.Tensor | None:
    """NVIDIA's low-pass filter design (float64 math, float32 result).

    ``numtaps == 1``: None (identity). Separable: a Kaiser-windowed sinc ``[numtaps]`` with
    unit DC gain (``firwin`` semantics). Radial: a jinc ``[numtaps, numtaps]`` times the
    outer product of the Kaiser window, normalised to sum 1.
    """
    if numtaps == 1:
        return None
    nyq = fs / 2
    beta = _kaiser_beta(numtaps, width / nyq)
    window = np.kaiser(numtaps, beta)
    if not radial:
        m = np.arange(numtaps) - (numtaps - 1) / 2
        h = (cutoff / nyq) * np.sinc((cutoff / nyq) * m) * window
        return torch.as_tensor(h / h.sum(), dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    j1 = torch.special.bessel_j1(torch.from_numpy(2 * cutoff * (np.pi * r))).numpy()
    f = j1 / (np.pi * r) * np.outer(window, window)
    return torch.as_tensor(f / f.sum(), dtype=torch.float32)


# --------------------------------------------------------------------------- layers


class FullyConnectedLayer(nn.Module):
    """Equalised linear layer as NVIDIA's: weights stored ``/ lr_multiplier`` and scaled by
    ``lr / sqrt(in)`` at run time; ``activation`` ``"linear"`` or ``"lrelu"`` (slope 0.2, gain √2)."""

    def __init__(self, in_features: int, out_features: int, activation: str = "linear", lr_multiplier: float = 1.0,
                 weight_init: float = 1.0, bias_init: float | list = 0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * (weight_init / lr_multiplier))
        bias = torch.as_tensor(np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features]).copy())
        self.bias = nn.Parameter(bias / lr_multiplier)
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return fused_leaky_relu(x.matmul(w.t()), b, 0.2, math.sqrt(2.0))


class MappingNetwork(nn.Module):
    """z ``[B, z_dim]`` -> ws ``[B, num_ws, w_dim]`` (unconditional)."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int, lr_multiplier: float, w_avg_beta: float):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        for idx in range(num_layers):
            self.add_module(f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], "lrelu", lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c=None, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_emas: bool = False) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, {self.z_dim}]; got {tuple(z.shape)}")
        if c is not None and c.numel():
            raise ValueError("this generator is unconditional (c_dim 0); give c=None")
        x = z.to(torch.float32)
        x = x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x[:, :cutoff] = self.w_avg.lerp(x[:, :cutoff], truncation_psi)
        return x


def _check_transform(t: torch.Tensor, batch: int) -> torch.Tensor:
    if t.shape == (3, 3):
        return t.unsqueeze(0)
    if t.ndim == 3 and t.shape[1:] == (3, 3) and t.shape[0] in (1, batch):
        return t
    raise ValueError(f"transform must be [3, 3] or [{batch}, 3, 3]; got {tuple(t.shape)}")


class SynthesisInput(nn.Module):
    """Fourier-feature input ``[B, channels, size, size]`` from ``w [B, w_dim]``.

    ``transform`` (``[3, 3]`` or ``[B, 3, 3]``) is the user's inverse transform of the
    resulting image (NVIDIA's ``synthesis.input.transform``); by default the buffer of that
    name (here a plain attribute, None = identity; never saved in the state dict).
    """

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float):
        super().__init__()
        self.w_dim, self.channels, self.size = w_dim, channels, size
        self.sampling_rate, self.bandwidth = sampling_rate, bandwidth
        freqs = torch.randn(channels, 2)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        self.weight = nn.Parameter(torch.randn(channels, channels))
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        # NVIDIA's user transform (a buffer there); a plain attribute here so it is never part
        # of the state dict and never left on the meta device: None = identity.
        self.transform: torch.Tensor | None = None
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand(channels) - 0.5)

    def forward(self, w: torch.Tensor, transform: torch.Tensor | None = None) -> torch.Tensor:
        batch = w.shape[0]
        if transform is None:
            transform = self.transform
        if transform is None:
            user = torch.eye(3, device=w.device).unsqueeze(0)
        else:
            user = _check_transform(torch.as_tensor(transform).to(device=w.device, dtype=torch.float32), batch)
        freqs, phases = self.freqs.unsqueeze(0), self.phases.unsqueeze(0)
        t = self.affine(w)  # (r_c, r_s, t_x, t_y)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        m_r = torch.eye(3, device=w.device).unsqueeze(0).repeat(batch, 1, 1)  # inverse rotation of the image
        m_r[:, 0, 0], m_r[:, 0, 1], m_r[:, 1, 0], m_r[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        m_t = torch.eye(3, device=w.device).unsqueeze(0).repeat(batch, 1, 1)  # inverse translation
        m_t[:, 0, 2], m_t[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = m_r @ m_t @ user  # rotate, then translate, then the user's transform
        phases = phases + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        # damp frequencies the user transform pushed out of band
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        theta = torch.eye(2, 3, device=w.device)
        theta[0, 0] = 0.5 * self.size / self.sampling_rate
        theta[1, 1] = 0.5 * self.size / self.sampling_rate
        grids = F.affine_grid(theta.unsqueeze(0), [1, 1, self.size, self.size], align_corners=False)
        x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)  # [B, H, W, C]
        x = x + phases.unsqueeze(1).unsqueeze(2)
        x = torch.sin(x * (np.pi * 2))
        x = x * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / np.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)


class SynthesisLayer(nn.Module):
    """Modulated conv + filtered leaky ReLU (or ToRGB) for one entry of :func:`layer_specs`."""

    def __init__(self, spec: dict, w_dim: int, conv_clamp: float | None, magnitude_ema_beta: float):
        super().__init__()
        self.spec = spec
        self.is_torgb = spec["torgb"]
        self.in_channels, self.out_channels = spec["in_channels"], spec["out_channels"]
        self.in_size, self.out_size = spec["in_size"], spec["out_size"]
        self.kernel, self.up, self.down, self.padding = spec["kernel"], spec["up"], spec["down"], spec["padding"]
        self.conv_clamp, self.magnitude_ema_beta = conv_clamp, magnitude_ema_beta
        self.affine = FullyConnectedLayer(w_dim, self.in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(self.out_channels, self.in_channels, self.kernel, self.kernel))
        self.bias = nn.Parameter(torch.zeros(self.out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self.register_buffer("up_filter", design_lowpass_filter(
            spec["up_taps"], spec["in_cutoff"], spec["in_half_width"] * 2, spec["tmp_rate"]))
        self.register_buffer("down_filter", design_lowpass_filter(
            spec["down_taps"], spec["out_cutoff"], spec["out_half_width"] * 2, spec["tmp_rate"], radial=spec["radial"]))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}->{self.out_channels}, {self.in_size}->{self.out_size}px, kernel {self.kernel}, "
                f"up {self.up}, down {self.down}, torgb={self.is_torgb}")

    def forward(self, x: torch.Tensor, w: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.in_size, self.in_size):
            raise ValueError(
                f"layer input must be [B, {self.in_channels}, {self.in_size}, {self.in_size}]; got {tuple(x.shape)}"
            )
        if update_emas:
            current = x.detach().to(torch.float32).square().mean()
            self.magnitude_ema.copy_(current.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / np.sqrt(self.in_channels * self.kernel**2))
        x = modulated_conv2d_sg3(x, self.weight, styles, padding=self.kernel - 1, demodulate=not self.is_torgb,
                                 input_gain=self.magnitude_ema.rsqrt())
        gain, slope = (1.0, 1.0) if self.is_torgb else (np.sqrt(2), 0.2)
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias.to(x.dtype), self.up, self.down,
                              self.padding, gain, slope, self.conv_clamp)


class SynthesisNetwork(nn.Module):
    """ws ``[B, n_latent, w_dim]`` -> images ``[B, img_channels, R, R]``."""

    def __init__(self, config: StyleGAN3Config):
        super().__init__()
        specs = layer_specs(config)
        self.w_dim, self.num_ws, self.output_scale = config.w_dim, config.n_latent, config.output_scale
        self.img_resolution, self.img_channels = config.img_resolution, config.img_channels
        i = specs["input"]
        self.input = SynthesisInput(config.w_dim, i["channels"], i["size"], i["sampling_rate"], i["bandwidth"])
        self.layer_names = []
        for spec in specs["layers"]:
            self.add_module(spec["name"], SynthesisLayer(spec, config.w_dim, config.conv_clamp, config.magnitude_ema_beta))
            self.layer_names.append(spec["name"])

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", force_fp32: bool = True,
                update_emas: bool = False, transform: torch.Tensor | None = None) -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode={noise_mode!r} is not accepted; choose one of {list(NOISE_MODES)}")
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [B, {self.num_ws}, {self.w_dim}]; got {tuple(ws.shape)}")
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0], transform)
        for name, w in zip(self.layer_names, ws[1:]):
            x = getattr(self, name)(x, w, update_emas=update_emas)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32)


class _MappingToW(nn.Module):
    """``z [B, z_dim] -> w [B, w_dim]`` through a mapping network (no truncation)."""

    def __init__(self, mapping: MappingNetwork):
        super().__init__()
        self.mapping = mapping

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mapping(z)[:, 0]


class StyleGAN3Generator(nn.Module):
    """StyleGAN3 generator: ``mapping`` + ``synthesis`` with NVIDIA's names.

    The interface encoders and tools use is the StyleGAN2 :class:`~instyle.models.Generator`'s:
    ``n_latent``, ``style_dim``, ``size``, ``get_latent(z)``, ``synthesize(w_plus)``,
    ``mean_latent()``, ``latent_avg`` ([1, w_dim], here ``mapping.w_avg``). NVIDIA's calls
    work too: ``G(z, None, truncation_psi=0.7)``, ``G.mapping(z, None)``, ``G.synthesis(ws)``.
    """

    family = "stylegan3"
    #: Parameters (name prefixes) that pivotal tuning leaves alone: the mapping network and the
    #: Fourier-feature input layer, as stylegan3-editing's PTI ("do not alter the fourier
    #: features": ``list(generator.synthesis.parameters())[3:]`` in
    #: inversion/scripts/run_pti_images.py skips ``input.weight`` and ``input.affine.*``).
    frozen_in_tuning: tuple[str, ...] = ("mapping.", "synthesis.input.")

    def __init__(self, config: StyleGAN3Config | None = None, **overrides):
        super().__init__()
        if config is None:
            config = StyleGAN3Config(**overrides)
        elif overrides:
            config = StyleGAN3Config(**{**config.to_dict(), **overrides})
        elif not isinstance(config, StyleGAN3Config):
            raise ConfigError(f"StyleGAN3Generator(config={config!r}): give a StyleGAN3Config or keyword fields")
        self.config = config
        self.size, self.style_dim, self.n_latent = config.img_resolution, config.w_dim, config.n_latent
        self.z_dim = config.z_dim
        self.synthesis = SynthesisNetwork(config)
        self.mapping = MappingNetwork(config.z_dim, config.w_dim, config.n_latent, config.mapping_layers,
                                      config.lr_multiplier, config.w_avg_beta)

    # ----------------------------------------------------------------- the shared generator interface

    @property
    def latent_avg(self) -> torch.Tensor:
        """``mapping.w_avg`` as ``[1, w_dim]``."""
        return self.mapping.w_avg[None]

    @latent_avg.setter
    def latent_avg(self, value: torch.Tensor) -> None:
        with torch.no_grad():
            self.mapping.w_avg.copy_(torch.as_tensor(value).reshape(self.style_dim))

    def modulation_weights(self) -> list[torch.Tensor | None]:
        """Per w index, the affine (modulation) weight ``[in_channels, w_dim]`` of the layer it
        drives: None for w 0 (the input's rotation / translation) and the last w (ToRGB), as
        SeFa leaves StyleGAN2's final ToRGB out."""
        layers = [getattr(self.synthesis, name) for name in self.synthesis.layer_names]
        return [None, *(layer.affine.weight for layer in layers[:-1]), None]

    @property
    def style(self) -> nn.Module:
        """z -> w as a module, under the StyleGAN2 generator's name for its mapping network
        (shares ``mapping``'s parameters; not a second entry in the state dict)."""
        view = self.__dict__.get("_style_view")
        if view is None or view.mapping is not self.mapping:
            view = _MappingToW(self.mapping)
            object.__setattr__(self, "_style_view", view)  # unregistered: no duplicate state
        return view

    def get_latent(self, z: torch.Tensor) -> torch.Tensor:
        """z ``[B, z_dim]`` -> w ``[B, w_dim]`` (no truncation)."""
        return self.mapping(z)[:, 0]

    @torch.no_grad()
    def mean_latent(self, n_latent: int = 4096, seed: int | None = 0) -> torch.Tensor:
        """Average w over ``n_latent`` random z: ``[1, w_dim]``."""
        gen = torch.Generator(device="cpu")
        if seed is not None:
            gen.manual_seed(seed)
        z = torch.randn(n_latent, self.z_dim, generator=gen).to(self.mapping.w_avg.device)
        return self.get_latent(z).mean(0, keepdim=True)

    def synthesize(self, w_plus: torch.Tensor, noise=None, randomize_noise: bool = False,
                   transform: torch.Tensor | None = None) -> torch.Tensor:
        """W+ ``[B, n_latent, w_dim]`` (or w ``[B, w_dim]``) -> images ``[B, 3, R, R]``.

        ``transform``: ``[3, 3]`` or ``[B, 3, 3]`` inverse transform of the image (None: the
        ``synthesis.input.transform`` buffer, identity unless set). ``noise`` /
        ``randomize_noise`` exist for the StyleGAN2 interface: StyleGAN3 has no noise inputs.
        """
        if noise is not None:
            raise ValueError("StyleGAN3 has no noise inputs; give noise=None")
        if w_plus.ndim == 2:
            w_plus = w_plus.unsqueeze(1).repeat(1, self.n_latent, 1)
        return self.synthesis(w_plus, transform=transform)

    def forward(self, z, c=None, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_emas: bool | None = None, noise_mode: str = "const", force_fp32: bool = True,
                transform: torch.Tensor | None = None, **rosinality):
        """NVIDIA's ``G(z, c)``: images ``[B, 3, R, R]``. ``update_emas`` (w_avg and the layers'
        magnitude EMAs) defaults to the module's training mode.

        Given a list of codes instead (``G([w], input_is_latent=True, ...)``), the StyleGAN2
        :class:`~instyle.models.Generator` call is served and ``(images, latents or None)``
        returned, so tools written for it run on StyleGAN3 too (see :meth:`_rosinality_call`).
        """
        if isinstance(z, (list, tuple)):
            return self._rosinality_call(list(z), transform=transform, **rosinality)
        if rosinality:
            raise TypeError(f"unexpected arguments {sorted(rosinality)} (StyleGAN2-style calls take a list of codes)")
        update = self.training if update_emas is None else update_emas
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff, update_emas=update)
        return self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32, update_emas=update, transform=transform)

    def _rosinality_call(self, styles: list, input_is_latent: bool = False, return_latents: bool = False,
                         truncation: float = 1.0, truncation_latent: torch.Tensor | None = None,
                         inject_index: int | None = None, randomize_noise: bool = True, noise=None,
                         return_features: bool = False, weights_deltas=None, transform=None):
        """``([z or w] or [a, b], ...)`` as the StyleGAN2 generator takes it: one or two codes
        ``[B, D]`` / ``[B, n_latent, D]``, mixed at ``inject_index``; noise arguments are
        accepted and ignored (no noise inputs)."""
        if weights_deltas is not None:
            raise ValueError("per-layer weight offsets (HyperStyle) exist only for StyleGAN2 generators")
        if noise is not None and any(n is not None for n in noise):
            raise ValueError("StyleGAN3 has no noise inputs; give noise=None")
        if not 1 <= len(styles) <= 2:
            raise ValueError(f"expected one or two style codes, got {len(styles)}")
        for s in styles:
            if s.shape[-1] != self.style_dim or s.ndim not in (2, 3) or (s.ndim == 3 and s.shape[1] != self.n_latent):
                raise ValueError(
                    f"codes must be [B, {self.style_dim}] or [B, {self.n_latent}, {self.style_dim}]; got {tuple(s.shape)}"
                )
        if not input_is_latent:
            styles = [self.get_latent(s.reshape(-1, self.style_dim)).view(s.shape) for s in styles]
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (e.g. generator.latent_avg)")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        full = [s if s.ndim == 3 else s.unsqueeze(1).repeat(1, self.n_latent, 1) for s in styles]
        if len(full) == 2:
            k = int(torch.randint(1, self.n_latent, ()).item()) if inject_index is None else inject_index
            latent = torch.cat([full[0][:, :k], full[1][:, k:]], 1)
        else:
            latent = full[0]
        image = self.synthesize(latent, transform=transform)
        return image, (latent if return_latents else None)

    # ----------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """``config.json`` (kind ``stylegan3``) + ``model.safetensors`` into ``directory``."""
        return write_pretrained(directory, "stylegan3", self.config.to_dict(), dict(self.state_dict()), extra)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = DEFAULT_DEVICE) -> StyleGAN3Generator:
        """Load a directory written by :meth:`save_pretrained`, in eval mode."""
        doc, tensors = read_pretrained(directory, "stylegan3")
        check_finite(tensors, directory)
        g = adopt_state(cls, lambda: StyleGAN3Config.from_dict(doc["config"]), tensors, Path(directory))
        g.metadata = doc.get("metadata", {})
        return g.to(resolve_device(device)).eval()
