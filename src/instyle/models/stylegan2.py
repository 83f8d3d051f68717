"""StyleGAN2 generator (config-f) in plain PyTorch.

A small vocabulary of layers -- equalised linear, modulated convolution, styled
convolution, noise injection, ToRGB -- composes the generator top-down as in the
paper's figure. Parameter and buffer names follow rosinality's
``stylegan2-pytorch`` (``style.N``, ``input.input``, ``conv1``, ``to_rgb1``,
``convs.N``, ``to_rgbs.N``, ``noises.noise_N``) so its checkpoints load by a
plain key map (see :mod:`instyle.interop`).

Images are ``[B, 3, size, size]``, nominally in [-1, 1] (never clamped here);
latents are ``[B, style_dim]`` (one code) or ``[B, n_latent, style_dim]`` (W+).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from instyle.errors import CheckpointError
from instyle.models.own_format import adopt_state, check_finite, read_pretrained, write_pretrained
from instyle.ops import FusedLeakyReLU, fused_leaky_relu, make_kernel, modulated_conv2d, to_rgb, upfirdn2d
from instyle.utils.config import (
    ConfigError,
    DictConfig,
    check_int_range,
    check_positive_finite,
    check_power_of_two,
)
from instyle.utils.device import DEFAULT_DEVICE, resolve_device
from instyle.utils.precision import float32_under_autocast

__all__ = [
    "GeneratorConfig",
    "Generator",
    "EqualLinear",
    "EqualConv2d",
    "PixelNorm",
    "ModulatedConv2d",
    "StyledConv",
    "ToRGB",
    "NoiseInjection",
    "ConstantInput",
    "channel_fields",
    "rosinality_channels",
    "nvidia_channels",
    "MAX_SIZE",
    "MAX_CHANNELS",
    "MAX_MLP",
]


#: Architecture bounds (StyleGAN2's range with room to spare). Files are refused beyond
#: them before anything is built: a few bytes of config must not ask for gigabytes.
MAX_SIZE = 2048
MAX_CHANNELS = 2048
MAX_MLP = 32


def rosinality_channels(channel_multiplier: int = 2) -> dict[int, int]:
    """rosinality's channel table: 512 up to 32 px, then ``(256, 128, 64, 32, 16) * cm``."""
    cm = channel_multiplier
    return {
        4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm,
        256: 64 * cm, 512: 32 * cm, 1024: 16 * cm, 2048: 8 * cm,
    }


def channel_fields(channels: dict[int, int]) -> dict:
    """``GeneratorConfig`` fields for a ``{resolution: channels}`` table read from a file:
    ``{"channel_multiplier": cm, "channels": None}`` when it is rosinality's table for some
    multiplier (1, 2, 4 or 8), else ``{"channels": channels}``."""
    for cm in (1, 2, 4, 8):
        table = rosinality_channels(cm)
        if all(table.get(r) == c for r, c in channels.items()):
            return {"channel_multiplier": cm, "channels": None}
    return {"channels": dict(channels)}


def nvidia_channels(size: int, channel_base: int = 32768, channel_max: int = 512) -> dict[int, int]:
    """NVIDIA's (StyleGAN2-ADA) channel table ``min(channel_base // res, channel_max)``."""
    return {2**i: min(channel_base // 2**i, channel_max) for i in range(2, int(math.log2(size)) + 1)}


@dataclass
class GeneratorConfig(DictConfig):
    """Architecture of a StyleGAN2 generator.

    Attributes:
        size: output resolution, a power of two in [8, :data:`MAX_SIZE`].
        style_dim: width of z and w (at most :data:`MAX_CHANNELS`).
        n_mlp: number of mapping-network layers (1 .. :data:`MAX_MLP`).
        channel_multiplier: rosinality channel table multiplier (ignored when ``channels``).
        channels: explicit ``{resolution: channels}`` table (e.g. NVIDIA's formula or a
            narrow test model); must cover 4 .. size.
        blur_kernel: separable FIR taps used for upsampling.
        lr_mlp: learning-rate multiplier of the mapping network.
        conv_clamp: if set (a finite number > 0), clamp every conv/ToRGB activation to
            [-c, c] (NVIDIA).
    """

    SECTION = 'generator'

    size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    channels: dict[int, int] | None = None
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)
    lr_mlp: float = 0.01
    conv_clamp: float | None = None

    def __post_init__(self):
        # Bounds first: every loader builds its config before any tensor or module, so a
        # crafted file asking for a huge model is refused here, before anything is allocated.
        check_power_of_two("generator.size", self.size, minimum=8, maximum=MAX_SIZE)
        check_int_range("generator.style_dim", self.style_dim, 1, MAX_CHANNELS)
        check_int_range("generator.n_mlp", self.n_mlp, 1, MAX_MLP)
        check_int_range("generator.channel_multiplier", self.channel_multiplier, 1, 8)
        check_positive_finite("generator.lr_mlp", self.lr_mlp)
        check_positive_finite("generator.conv_clamp", self.conv_clamp, optional=True)
        self.blur_kernel = tuple(self.blur_kernel)
        if not 1 <= len(self.blur_kernel) <= 16 or not all(isinstance(t, int) and abs(t) <= 1024 for t in self.blur_kernel) \
                or sum(self.blur_kernel) == 0:
            raise ConfigError(
                f"generator.blur_kernel={list(self.blur_kernel)} must be 1 to 16 integer taps in [-1024, 1024] "
                "with a non-zero sum"
            )
        if self.channels is not None:
            if not isinstance(self.channels, dict) or len(self.channels) > 64:
                raise ConfigError("generator.channels must be a mapping {resolution: channels} of at most 64 entries")
            table = {int(k): int(v) for k, v in self.channels.items()}
            need = [2**i for i in range(2, self.log_size + 1)]
            for r in need:
                if r in table:
                    check_int_range(f"generator.channels[{r}]", table[r], 1, MAX_CHANNELS)
            missing = [r for r in need if r not in table]
            if missing:
                raise ConfigError(
                    f"generator.channels lacks resolutions {missing}; it must give channels for "
                    f"every resolution {need}"
                )
            self.channels = {r: table[r] for r in need}

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """Number of W+ style vectors: ``2 * log2(size) - 2``."""
        return self.log_size * 2 - 2

    @property
    def num_layers(self) -> int:
        """Number of noise inputs (one per styled conv)."""
        return (self.log_size - 2) * 2 + 1

    def channel_table(self) -> dict[int, int]:
        if self.channels is not None:
            return dict(self.channels)
        table = rosinality_channels(self.channel_multiplier)
        return {2**i: table[2**i] for i in range(2, self.log_size + 1)}


# --------------------------------------------------------------------------- layers


class PixelNorm(nn.Module):
    """Normalise each vector to unit second moment over dim 1: ``[B, C, ...] -> same``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate.

    Args:
        in_dim: input features.
        out_dim: output features.
        bias: whether to learn a bias.
        bias_init: initial bias value.
        lr_mul: learning-rate multiplier (stored weights are ``w / lr_mul``).
        activation: None or ``"fused_lrelu"`` (bias + leaky ReLU 0.2 + gain √2).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: str | None = None,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, bias)
        return F.linear(x, self.weight * self.scale, bias=bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}"


class EqualConv2d(nn.Module):
    """Conv2d with equalised learning rate (used by discriminators and encoders)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_ch * kernel_size**2)
        self.stride, self.padding = stride, padding
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)


class Blur(nn.Module):
    """FIR low-pass filter with padding (``kernel`` buffer as rosinality)."""

    def __init__(self, kernel: Sequence[int], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * (upsample_factor**2)
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling (used on the ToRGB skip path)."""

    def __init__(self, kernel: Sequence[int], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * (factor**2))
        p = len(kernel) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Modulated (and optionally demodulated) convolution, grouped-conv formulation.

    Args:
        in_channel: input channels.
        out_channel: output channels.
        kernel_size: square kernel size.
        style_dim: width of the style vector.
        demodulate: normalise each output filter to unit norm per sample.
        upsample: 2x upsampling by transposed conv followed by an FIR blur.
        blur_kernel: FIR taps for the blur.
    """

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[int] = (1, 3, 3, 1),
    ):
        super().__init__()
        self.eps = 1e-8
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate

    def extra_repr(self) -> str:
        return (
            f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, "
            f"upsample={self.upsample}, demodulate={self.demodulate}"
        )

    def styles(self, style: torch.Tensor) -> torch.Tensor:
        """The modulation ``[B, in]`` of ``style`` ``[B, style_dim]``; float32 even under a
        16-bit autocast, where only the convolutions round: a rounded style scales a whole
        feature map, so its error never averages out (the 1024-px pSp in bf16: 39.7 dB with
        rounded styles and demodulation, 44.8 dB without; docs/performance.md)."""
        with float32_under_autocast(style.device.type):
            return self.modulation(style.float() if style.dtype in (torch.float16, torch.bfloat16) else style)

    def modulated_weight(self, style: torch.Tensor, weights_delta: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample weights ``[B, out, in, k, k]`` for styles ``[B, style_dim]``.

        ``weights_delta`` (HyperStyle): relative offsets ``[B, out, in, k or 1, k or 1]``,
        the kernel becomes ``W * (1 + delta)`` before modulation."""
        batch = style.shape[0]
        s = self.styles(style).view(batch, 1, self.in_channel, 1, 1)
        if weights_delta is None:
            weight = self.scale * self.weight * s
        else:
            weight = self.scale * (self.weight * (1 + weights_delta) * s)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + self.eps)
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        return weight

    def forward(self, x: torch.Tensor, style: torch.Tensor, weights_delta: torch.Tensor | None = None) -> torch.Tensor:
        batch, in_channel = x.shape[:2]
        if in_channel != self.in_channel or style.shape[0] != batch:
            raise ValueError(
                f"ModulatedConv2d expects x [B, {self.in_channel}, H, W] and style [B, D]; "
                f"got x {tuple(x.shape)} and style {tuple(style.shape)}"
            )
        if weights_delta is not None:  # HyperStyle: per-sample kernels W * (1 + delta)
            self._check_delta(weights_delta, batch)
            return self._forward_with_delta(x, style, weights_delta)
        blur = {"blur_kernel": self.blur.kernel, "blur_pad": self.blur.pad} if self.upsample else {}
        return modulated_conv2d(
            x, self.weight[0] * self.scale, self.styles(style), demodulate=self.demodulate,
            upsample=self.upsample, padding=self.padding, eps=self.eps, **blur,
        )

    def _forward_with_delta(self, x: torch.Tensor, style: torch.Tensor, weights_delta: torch.Tensor) -> torch.Tensor:
        """The grouped-conv formulation with HyperStyle's offsets in the kernel."""
        batch, in_channel, height, width = x.shape
        k = self.kernel_size
        weight = self.modulated_weight(style, weights_delta)
        if torch.compiler.is_exporting():  # an ONNX graph with a symbolic batch
            return self._per_sample_conv_by_taps(x, weight)
        if self.upsample:
            x = x.reshape(1, batch * in_channel, height, width)
            weight = weight.transpose(1, 2).reshape(batch * in_channel, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
            out = out.view(batch, self.out_channel, out.shape[-2], out.shape[-1])
            return self.blur(out)
        x = x.reshape(1, batch * in_channel, height, width)
        weight = weight.reshape(batch * self.out_channel, in_channel, k, k)
        out = F.conv2d(x, weight, padding=self.padding, groups=batch)
        return out.view(batch, self.out_channel, out.shape[-2], out.shape[-1])

    def _per_sample_conv_by_taps(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """:meth:`_forward_with_delta` without ``groups = batch``, for export: a grouped
        convolution's group count is a constant in ONNX, so a graph built from it only takes the
        batch it was traced at. Here each kernel tap is one batched matrix product
        (``[B, out, in] @ x [B, in, H, W]``) over a shifted view of ``x`` (upsampling: scattered
        to every second pixel, the transposed convolution), so the batch stays symbolic. The
        same sums in another order: equal to the grouped convolution within float32 rounding."""
        k = self.kernel_size
        height, width = x.shape[-2:]
        if self.upsample:  # conv_transpose2d(stride 2, padding 0): out[2y + dy, 2x + dx] += W[dy, dx] x[y, x]
            out = 0
            for dy in range(k):
                for dx in range(k):
                    tap = torch.einsum("boi,bihw->bohw", weight[..., dy, dx], x)
                    spread = F.pad(tap[:, :, :, None, :, None], (0, 1, 0, 0, 0, 1))  # [B, O, H, 2, W, 2]
                    spread = spread.reshape(tap.shape[0], tap.shape[1], 2 * height, 2 * width)
                    spread = F.pad(spread, (dx, k - 1 - dx, dy, k - 1 - dy))
                    out = out + spread[:, :, : 2 * height + k - 2, : 2 * width + k - 2]
            return self.blur(out)
        p = self.padding
        padded = F.pad(x, (p, p, p, p))
        out = 0
        for dy in range(k):
            for dx in range(k):
                window = padded[:, :, dy:dy + height + 2 * p - k + 1, dx:dx + width + 2 * p - k + 1]
                out = out + torch.einsum("boi,bihw->bohw", weight[..., dy, dx], window)
        return out

    def _check_delta(self, delta: torch.Tensor, batch: int) -> None:
        o, i, k = self.out_channel, self.in_channel, self.kernel_size
        ok = (
            delta.ndim == 5 and delta.shape[0] in (1, batch) and tuple(delta.shape[1:3]) == (o, i)
            and delta.shape[3] in (1, k) and delta.shape[4] in (1, k)
        )
        if not ok:
            raise ValueError(
                f"weights_delta for a {i}->{o} {k}x{k} modulated conv must be [B or 1, {o}, {i}, {k} or 1, "
                f"{k} or 1] (batch {batch}); got {tuple(delta.shape)}"
            )


class NoiseInjection(nn.Module):
    """Adds ``weight * noise``; fresh N(0, 1) noise when none is given."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return image + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 constant, repeated over the batch."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated conv + noise + bias/leaky-ReLU (optionally clamped)."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        upsample: bool = False,
        blur_kernel: Sequence[int] = (1, 3, 3, 1),
        demodulate: bool = True,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channel, out_channel, kernel_size, style_dim,
            upsample=upsample, blur_kernel=blur_kernel, demodulate=demodulate,
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)
        self.conv_clamp = conv_clamp

    def forward(
        self,
        x: torch.Tensor,
        style: torch.Tensor,
        noise: torch.Tensor | None = None,
        weights_delta: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.conv(x, style, weights_delta)
        out = self.noise(out, noise=noise)
        out = self.activate(out)
        if self.conv_clamp is not None:
            # NVIDIA's bias_act clamps after the activation's sqrt(2) gain, at +-conv_clamp.
            out = out.clamp(-self.conv_clamp, self.conv_clamp)
        return out


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB, plus the upsampled skip."""

    def __init__(
        self,
        in_channel: int,
        style_dim: int,
        upsample: bool = True,
        blur_kernel: Sequence[int] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
    ):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.conv_clamp = conv_clamp

    def forward(
        self,
        x: torch.Tensor,
        style: torch.Tensor,
        skip: torch.Tensor | None = None,
        weights_delta: torch.Tensor | None = None,
    ) -> torch.Tensor:
        conv = self.conv
        if x.ndim != 4 or x.shape[1] != conv.in_channel or style.shape[0] != x.shape[0]:
            raise ValueError(
                f"ToRGB expects x [B, {conv.in_channel}, H, W] and style [B, D]; "
                f"got x {tuple(x.shape)} and style {tuple(style.shape)}"
            )
        if weights_delta is not None:  # HyperStyle's offsets: the modulated conv's reference path
            out = conv(x, style, weights_delta) + self.bias
            if self.conv_clamp is not None:
                out = out.clamp(-self.conv_clamp, self.conv_clamp)
            return out if skip is None else out + self.upsample(skip)
        skip = self.upsample(skip.contiguous()) if skip is not None else None
        return to_rgb(x, conv.weight[0] * conv.scale, conv.styles(style), self.bias, skip, self.conv_clamp)


# --------------------------------------------------------------------------- generator


class Generator(nn.Module):
    """StyleGAN2 generator (config-f, skip architecture).

    Build from a :class:`GeneratorConfig` (or keyword overrides of it)::

        g = Generator(GeneratorConfig(size=256))
        img, _ = g([z])                                # z: [B, 512]
        img, w = g([w_plus], input_is_latent=True, randomize_noise=False, return_latents=True)
    """

    #: Parameters (name prefixes) that pivotal tuning leaves alone: the mapping network, which
    #: rendering a code never runs (PTI tunes the synthesis weights).
    frozen_in_tuning: tuple[str, ...] = ("style.",)

    def __init__(self, config: GeneratorConfig | int | None = None, **overrides):
        super().__init__()
        if isinstance(config, int) and not isinstance(config, bool):
            config = GeneratorConfig(size=config, **overrides)  # rosinality's Generator(size, ...)
            overrides = {}
        elif config is not None and not isinstance(config, GeneratorConfig):
            raise ConfigError(
                f"Generator(config={config!r}): give a GeneratorConfig, an output size (e.g. Generator(256)) "
                "or keyword fields (Generator(size=256, style_dim=512))"
            )
        if config is None:
            config = GeneratorConfig(**overrides)
        elif overrides:
            config = GeneratorConfig(**{**config.to_dict(), **overrides})
        self.config = config
        self.size = config.size
        self.style_dim = config.style_dim
        self.log_size = config.log_size
        self.num_layers = config.num_layers
        self.n_latent = config.n_latent
        self.channels = config.channel_table()
        blur = config.blur_kernel
        clamp = config.conv_clamp

        layers: list[nn.Module] = [PixelNorm()]
        for _ in range(config.n_mlp):
            layers.append(
                EqualLinear(config.style_dim, config.style_dim, lr_mul=config.lr_mlp, activation="fused_lrelu")
            )
        self.style = nn.Sequential(*layers)

        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, config.style_dim, blur_kernel=blur, conv_clamp=clamp)
        self.to_rgb1 = ToRGB(self.channels[4], config.style_dim, upsample=False, conv_clamp=clamp)

        # Average w of the mapping network ([1, style_dim]) when known (from a checkpoint or
        # mean_latent()). Not part of the state dict so rosinality/official keys map 1:1.
        self.register_buffer("latent_avg", None, persistent=False)

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = (layer_idx + 5) // 2
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, 2**res, 2**res))

        in_channel = self.channels[4]
        for i in range(3, self.log_size + 1):
            out_channel = self.channels[2**i]
            self.convs.append(
                StyledConv(in_channel, out_channel, 3, config.style_dim, upsample=True, blur_kernel=blur, conv_clamp=clamp)
            )
            self.convs.append(StyledConv(out_channel, out_channel, 3, config.style_dim, blur_kernel=blur, conv_clamp=clamp))
            self.to_rgbs.append(ToRGB(out_channel, config.style_dim, blur_kernel=blur, conv_clamp=clamp))
            in_channel = out_channel

    # ----------------------------------------------------------------- helpers

    def make_noise(self, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Fresh noise maps, one per layer: ``[1, 1, r, r]`` each."""
        device = self.input.input.device
        noises = []
        for layer_idx in range(self.num_layers):
            res = 2 ** ((layer_idx + 5) // 2)
            noises.append(torch.randn(1, 1, res, res, device=device, generator=generator))
        return noises

    def fixed_noise(self) -> list[torch.Tensor]:
        """The stored noise buffers (used when ``randomize_noise=False``)."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    @torch.no_grad()
    def mean_latent(self, n_latent: int = 4096, seed: int | None = 0) -> torch.Tensor:
        """Average w over ``n_latent`` random z: ``[1, style_dim]``. Seeded for reproducibility."""
        device = self.input.input.device
        gen = torch.Generator(device="cpu")
        if seed is not None:
            gen.manual_seed(seed)
        z = torch.randn(n_latent, self.style_dim, generator=gen).to(device)
        return self.style(z).mean(0, keepdim=True)

    def get_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Map z ``[..., style_dim]`` to w through the mapping network."""
        return self.style(z)

    # ----------------------------------------------------------------- forward

    def forward(
        self,
        styles: Sequence[torch.Tensor] | torch.Tensor,
        return_latents: bool = False,
        return_features: bool = False,
        inject_index: int | None = None,
        truncation: float = 1.0,
        truncation_latent: torch.Tensor | None = None,
        input_is_latent: bool = False,
        noise: Sequence[torch.Tensor | None] | None = None,
        randomize_noise: bool = True,
        weights_deltas: Sequence[torch.Tensor | None] | None = None,
        new_features: Sequence[torch.Tensor | None] | None = None,
        feature_scale: float = 1.0,
        early_stop: int | None = None,
        return_feature_list: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | list[torch.Tensor] | None]:
        """Synthesise images.

        Args:
            styles: list of one or two codes, each ``[B, style_dim]`` (z, or w when
                ``input_is_latent``) or ``[B, n_latent, style_dim]`` (W+). Two codes are
                mixed at ``inject_index``.
            return_latents: also return the W+ tensor ``[B, n_latent, style_dim]``.
            return_features: return the last feature map instead of the latents.
            inject_index: style-mixing crossover layer (random when None and mixing).
            truncation: ψ; codes move towards ``truncation_latent`` when < 1.
            truncation_latent: ``[1, style_dim]`` centre of truncation (e.g. mean_latent()).
            input_is_latent: the codes are already w (skip the mapping network).
            noise: one map per layer (``[B or 1, 1, r, r]``) or None.
            randomize_noise: when ``noise`` is None, draw fresh noise (True) or use the
                stored buffers (False).
            weights_deltas: HyperStyle's per-layer relative weight offsets, one entry (or
                None) per modulated conv in generator order: conv1, to_rgb1, then
                (up-conv, conv, to_rgb) per resolution (``n_weight_layers`` entries).
            new_features: StyleFeatureEditor's feature insertion: one entry (or None) per
                feature index ``k`` of :meth:`feature_list` order; ``new_features[k]`` (``k >= 1``)
                replaces feature ``k`` where it enters the next conv, blended as
                ``(1 - feature_scale) * feature + feature_scale * new_features[k]`` (the ToRGB
                of that resolution has already read the generator's own feature).
            feature_scale: the blend weight of ``new_features`` (1 replaces).
            early_stop: stop after the ToRGB of this resolution; the returned image is the
                RGB skip at that resolution.
            return_feature_list: return the list of every feature map (``[0]`` the constant
                input, ``[1]`` conv1, then two per resolution: ``[2, 3]`` 8 px, ``[4, 5]``
                16 px, ...) instead of the last one (``return_latents`` takes precedence).

        Returns:
            ``(image [B, 3, size, size], latents or features or None)``.
        """
        styles = self._checked_styles(styles)
        if not input_is_latent:
            # Each row of a [B, n, D] code is mapped independently (the original's CUDA
            # kernel mixed bias entries across rows there; we do not copy that accident).
            styles = [self.style(s.reshape(-1, self.style_dim)).view(s.shape) for s in styles]
        noise = self._noise_list(noise, randomize_noise)
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (e.g. generator.mean_latent())")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        latent = self._mixed_w_plus(styles, inject_index)
        hooks = new_features is not None or early_stop is not None or return_feature_list
        if hooks:
            image, feats = self._synthesise_hooked(
                latent, noise, self._deltas_list(weights_deltas), self._new_features_list(new_features),
                feature_scale, early_stop,
            )
            out = feats[-1]
        else:
            image, out = self._synthesise(latent, noise, self._deltas_list(weights_deltas))
        if return_latents:
            return image, latent
        if return_feature_list:
            return image, feats
        if return_features:
            return image, out
        return image, None

    def _checked_styles(self, styles) -> list[torch.Tensor]:
        """One or two codes, each ``[B, style_dim]`` or ``[B, n_latent, style_dim]``, as a list."""
        if isinstance(styles, torch.Tensor):
            styles = [styles]
        styles = list(styles)
        if not 1 <= len(styles) <= 2:
            raise ValueError(f"expected one or two style codes, got {len(styles)}")
        for s in styles:
            if s.shape[-1] != self.style_dim or s.ndim not in (2, 3):
                raise ValueError(
                    f"style codes must be [B, {self.style_dim}] or [B, {self.n_latent}, {self.style_dim}]; "
                    f"got {tuple(s.shape)}"
                )
            if s.ndim == 3 and s.shape[1] != self.n_latent:
                raise ValueError(
                    f"W+ codes for a {self.size}px generator must be [B, {self.n_latent}, {self.style_dim}]; "
                    f"got {tuple(s.shape)}"
                )
        return styles

    def _noise_list(self, noise, randomize_noise: bool) -> list:
        """One noise map (or None for fresh noise) per layer."""
        if noise is None:
            return [None] * self.num_layers if randomize_noise else self.fixed_noise()
        if len(noise) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} noise maps, got {len(noise)}")
        return noise

    def _mixed_w_plus(self, styles: list[torch.Tensor], inject_index: int | None) -> torch.Tensor:
        """W+ ``[B, n_latent, style_dim]`` from one code, or two mixed at ``inject_index``
        (random when None)."""
        if len(styles) < 2:
            latent = styles[0]
            return latent.unsqueeze(1).repeat(1, self.n_latent, 1) if latent.ndim < 3 else latent
        if inject_index is None:
            inject_index = random.randint(1, self.n_latent - 1)
        a, b = (s if s.ndim == 3 else s.unsqueeze(1).repeat(1, self.n_latent, 1) for s in styles)
        return torch.cat([a[:, :inject_index], b[:, inject_index:]], 1)

    def _synthesise(self, latent: torch.Tensor, noise: Sequence, deltas: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The synthesis network: ``(image [B, 3, size, size], last feature map)``."""
        out = self.input(latent.shape[0])
        out = self.conv1(out, latent[:, 0], noise=noise[0], weights_delta=deltas[0])
        skip = self.to_rgb1(out, latent[:, 1], weights_delta=deltas[1])
        i = 1
        for r, (conv1, conv2, noise1, noise2, rgb) in enumerate(zip(
            self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs
        )):
            d = deltas[2 + 3 * r: 5 + 3 * r]
            out = conv1(out, latent[:, i], noise=noise1, weights_delta=d[0])
            out = conv2(out, latent[:, i + 1], noise=noise2, weights_delta=d[1])
            skip = rgb(out, latent[:, i + 2], skip, weights_delta=d[2])
            i += 2
        return skip, out

    def _synthesise_hooked(
        self, latent: torch.Tensor, noise: Sequence, deltas: list, new_features: list, scale: float, early_stop: int | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`_synthesise` with every feature map collected, features inserted and an
        early stop (StyleFeatureEditor's generator); the same operations in the same order."""

        def insert(x: torch.Tensor, k: int) -> torch.Tensor:
            new = new_features[k]
            if new is None:
                return x
            if new.shape != x.shape:
                raise ValueError(f"new_features[{k}] must be {tuple(x.shape)} like the feature it replaces; got {tuple(new.shape)}")
            return (1 - scale) * x + scale * new.to(x.dtype)

        out = self.input(latent.shape[0])
        feats = [out]
        out = self.conv1(out, latent[:, 0], noise=noise[0], weights_delta=deltas[0])
        feats.append(out)
        skip = self.to_rgb1(out, latent[:, 1], weights_delta=deltas[1])
        i = 1
        for r, (conv1, conv2, noise1, noise2, rgb) in enumerate(zip(
            self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs
        )):
            d = deltas[2 + 3 * r: 5 + 3 * r]
            out = conv1(insert(out, i), latent[:, i], noise=noise1, weights_delta=d[0])
            feats.append(out)
            out = conv2(insert(out, i + 1), latent[:, i + 1], noise=noise2, weights_delta=d[1])
            feats.append(out)
            skip = rgb(out, latent[:, i + 2], skip, weights_delta=d[2])
            if early_stop is not None and skip.shape[-1] == early_stop:
                break
            i += 2
        return skip, feats

    def _new_features_list(self, new_features) -> list:
        n = self.num_layers + 1  # the constant input, then one feature per styled conv
        if new_features is None:
            return [None] * n
        new_features = list(new_features)
        if len(new_features) != n:
            raise ValueError(f"expected {n} new_features (or None each), got {len(new_features)}")
        if new_features[0] is not None:
            raise ValueError("new_features[0] (the constant input) cannot be replaced; indices start at 1")
        return new_features

    def feature_list(
        self, w_plus: torch.Tensor, early_stop: int | None = None, noise=None, randomize_noise: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(RGB skip, feature maps)`` of W+ ``[B, n_latent, style_dim]`` (stored noise by
        default), stopping after the ``early_stop`` px ToRGB when given: feature ``k`` as in
        ``forward(..., return_feature_list=True)``."""
        if early_stop is not None and early_stop not in [2**i for i in range(3, self.log_size + 1)]:
            raise ValueError(f"early_stop={early_stop} must be a resolution of this generator, 8 .. {self.size}")
        return self([w_plus], input_is_latent=True, noise=noise, randomize_noise=randomize_noise,
                    early_stop=early_stop, return_feature_list=True)

    def _deltas_list(self, weights_deltas) -> list:
        if weights_deltas is None:
            return [None] * self.n_weight_layers
        if len(weights_deltas) != self.n_weight_layers:
            raise ValueError(f"expected {self.n_weight_layers} weights_deltas (or None each), got {len(weights_deltas)}")
        return list(weights_deltas)

    @property
    def n_weight_layers(self) -> int:
        """Number of modulated convs (conv1, to_rgb1, then 3 per resolution): the length
        of a ``weights_deltas`` list."""
        return len(self.convs) + len(self.to_rgbs) + 2

    def weight_layers(self) -> list[ModulatedConv2d]:
        """The modulated convs in ``weights_deltas`` order."""
        layers = [self.conv1.conv, self.to_rgb1.conv]
        for up, conv, rgb in zip(self.convs[::2], self.convs[1::2], self.to_rgbs):
            layers += [up.conv, conv.conv, rgb.conv]
        return layers

    def synthesize(self, w_plus: torch.Tensor, noise=None, randomize_noise: bool = False) -> torch.Tensor:
        """W+ ``[B, n_latent, style_dim]`` (or w ``[B, style_dim]``) to images ``[B, 3, size, size]``.

        Deterministic by default (stored noise buffers)."""
        image, _ = self(
            [w_plus], input_is_latent=True, noise=noise, randomize_noise=randomize_noise
        )
        return image


    # ----------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (and ``latent_avg`` when known) into
        ``directory`` (atomically); ``extra`` is stored as free-form metadata."""
        tensors = dict(self.state_dict())
        if self.latent_avg is not None:
            tensors["latent_avg"] = self.latent_avg
        return write_pretrained(
            directory, "generator", self.config.to_dict(), tensors, extra, getattr(self, "random_weights", False)
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = DEFAULT_DEVICE) -> Generator:
        """Load a directory written by :meth:`save_pretrained` as ``cls``, in eval mode.

        rosinality / pSp ``.pt`` and NVIDIA ``.pkl`` files: :func:`instyle.load_generator`."""
        doc, tensors = read_pretrained(directory, "generator")
        avg = tensors.pop("latent_avg", None)
        g = adopt_state(cls, lambda: GeneratorConfig.from_dict(doc["config"]), tensors, Path(directory))
        if avg is not None:
            if avg.dtype != torch.float32:
                raise CheckpointError(f"{directory}: latent_avg has dtype {avg.dtype}, expected torch.float32")
            check_finite({"latent_avg": avg}, directory)
            g.latent_avg = avg
        g.metadata = doc.get("metadata", {})
        g.random_weights = doc.get("random_weights") is True
        return g.to(resolve_device(device)).eval()
