"""HyperStyle's hypernetworks: from ``[image, current reconstruction]`` to per-layer
relative offsets of the generator's convolution weights.

A ResNet-34 trunk (7x7 stride-2 conv, BN, PReLU, no max-pool, then the four stages of
BasicBlocks) gives a ``feature_size``-square map (16x16 for 256 px input). One head per
tuned generator layer turns it into an offset ``[B, out, in, k, k]``:

* the layers in :data:`SHARED_LAYERS` (the 512-channel 3x3 convs) use a
  :class:`HyperRefinementBlock`: convs down to one 512-D code, an equalised linear layer,
  then one :class:`SharedWeightsHypernet` shared by all of them;
* the other tuned layers use a :class:`RefinementBlock` (one offset per ``(out, in)``
  pair, repeated over the kernel window) or, in the ``...Separable`` variant, a
  :class:`RefinementBlockSeparable` (a low-rank per-tap kernel).

Layers not tuned get ``None``. Parameter names follow the official checkpoints except
that the shared hypernet is stored once (``shared_weight_hypernet.*``), not under every
block: the official file repeats the same tensor under each block's ``hypernet.*``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from instyle.models.encoders.backbone import DEFAULT_WIDTHS, RESNET34_UNITS, make_resnet_body
from instyle.models.stylegan2 import EqualLinear, GeneratorConfig
from instyle.utils.config import ConfigError, DictConfig, check_choice, check_positive_int

__all__ = [
    "HYPERNET_TYPES",
    "SHARED_LAYERS",
    "DEFAULT_LAYERS_TO_TUNE",
    "HyperNetConfig",
    "HyperNetwork",
    "SharedWeightsHypernet",
    "HyperRefinementBlock",
    "RefinementBlock",
    "RefinementBlockSeparable",
    "SeparableBlock",
    "weight_layer_shapes",
]

HYPERNET_TYPES = ("SharedWeightsHyperNetResNet", "SharedWeightsHyperNetResNetSeparable")
#: Generator weight layers whose offsets come from the one shared hypernet.
SHARED_LAYERS = (0, 2, 3, 5, 6, 8, 9, 11, 12)
#: The official ``--layers_to_tune`` default (all non-ToRGB layers of a 1024 px generator).
DEFAULT_LAYERS_TO_TUNE = (0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 23, 24)


def weight_layer_shapes(generator: GeneratorConfig) -> tuple[tuple[int, int, int], ...]:
    """``(kernel, in, out)`` of every modulated conv in ``weights_deltas`` order: conv1,
    to_rgb1, then (up-conv, conv, to_rgb) per resolution 8 .. size."""
    ch = generator.channel_table()
    shapes = [(3, ch[4], ch[4]), (1, ch[4], 3)]
    prev = ch[4]
    for i in range(3, generator.log_size + 1):
        c = ch[2**i]
        shapes += [(3, prev, c), (3, c, c), (1, c, 3)]
        prev = c
    return tuple(shapes)


@dataclass
class HyperNetConfig(DictConfig):
    """Architecture of a HyperStyle hypernetwork.

    Attributes:
        type: one of :data:`HYPERNET_TYPES` (the official ``encoder_type``).
        layer_shapes: ``(kernel, in, out)`` of every generator weight layer
            (:func:`weight_layer_shapes`); its length is ``n_hypernet_outputs``.
        layers_to_tune: indices of the layers that get offsets.
        input_nc: input channels (6: image + reconstruction).
        widths: channels of the 4 ResNet stages of the trunk.
        units: BasicBlocks per stage (ResNet-34: 3, 4, 6, 3).
        code_dim: channels of the heads' last conv (and the shared hypernet's code width).
        shared_inner: inner channels of the shared-hypernet heads.
        inner: inner channels of the other heads.
        feature_size: side of the trunk's output map the heads are sized for (16 at 256 px).
    """

    SECTION = 'hypernet'

    layer_shapes: tuple[tuple[int, int, int], ...] = ()
    layers_to_tune: tuple[int, ...] = DEFAULT_LAYERS_TO_TUNE
    type: str = "SharedWeightsHyperNetResNet"
    input_nc: int = 6
    widths: tuple[int, int, int, int] = DEFAULT_WIDTHS
    units: tuple[int, int, int, int] = RESNET34_UNITS
    code_dim: int = 512
    shared_inner: int = 128
    inner: int = 256
    feature_size: int = 16

    def __post_init__(self):
        check_choice("hypernet.type", self.type, HYPERNET_TYPES)
        for name in ("input_nc", "code_dim", "shared_inner", "inner", "feature_size"):
            check_positive_int(f"hypernet.{name}", getattr(self, name))
        self.layer_shapes = tuple(tuple(int(v) for v in s) for s in self.layer_shapes)
        n = len(self.layer_shapes)
        if n < 1 or any(len(s) != 3 or s[0] not in (1, 3) for s in self.layer_shapes):
            raise ConfigError(f"hypernet.layer_shapes={self.layer_shapes!r} must list (kernel 1|3, in, out) per layer")
        self.layers_to_tune = tuple(sorted({int(i) for i in self.layers_to_tune if int(i) < n}))
        if any(i < 0 for i in self.layers_to_tune):
            raise ConfigError(f"hypernet.layers_to_tune={self.layers_to_tune!r} must be indices 0..{n - 1}")
        shared = {self.layer_shapes[i] for i in self.layers_to_tune if i in SHARED_LAYERS}
        if shared - {self.shared_shape}:
            raise ConfigError(
                f"the shared-hypernet layers {SHARED_LAYERS} must all be {self.shared_shape} (kernel, in, out) "
                f"convs; this generator has {sorted(shared)}"
            )
        self.widths = tuple(int(w) for w in self.widths)
        self.units = tuple(int(u) for u in self.units)
        if len(self.widths) != 4 or len(self.units) != 4 or min(self.widths + self.units) < 1:
            raise ConfigError(f"hypernet.widths={self.widths!r} / units={self.units!r} need 4 positive entries each")
        if self.feature_size & (self.feature_size - 1) or self.feature_size < 4:
            raise ConfigError(f"hypernet.feature_size={self.feature_size} must be a power of two >= 4")

    @property
    def n_outputs(self) -> int:
        return len(self.layer_shapes)

    @property
    def shared_shape(self) -> tuple[int, int, int]:
        """``(kernel, in, out)`` the shared hypernet produces: that of layer 0 (conv1)."""
        return self.layer_shapes[0]

    @classmethod
    def for_generator(cls, generator: GeneratorConfig, **overrides) -> HyperNetConfig:
        return cls(layer_shapes=weight_layer_shapes(generator), **overrides)


def _conv_stack(in_c: int, inner: int, out_c: int, strides: list[int]) -> nn.Sequential:
    """3x3 convs (pad 1) each followed by LeakyReLU(0.01): ``in -> inner ... inner -> out``."""
    layers: list[nn.Module] = []
    chans = [in_c] + [inner] * (len(strides) - 1) + [out_c]
    for a, b, s in zip(chans[:-1], chans[1:], strides):
        layers += [nn.Conv2d(a, b, kernel_size=3, stride=s, padding=1), nn.LeakyReLU()]
    return nn.Sequential(*layers)


def _strides(n_pools: int) -> list[int]:
    """The original's stride-2 stack for ``num_pools``: a first conv, ``num_pools - 1``
    more, and a last one (so never fewer than two)."""
    return [2] * (2 + max(n_pools - 1, 0))


class SharedWeightsHypernet(nn.Module):
    """Two-level linear hypernet: code ``z [B, z_dim]`` -> kernel offsets ``[B, out, in, f, f]``.

    ``h = (z @ w2 + b2)`` viewed ``[B, in, z_dim]``, then ``(h @ w1 + b1)`` ``[B, in, out*f*f]``
    is *reinterpreted* (a view, not a transpose) as ``[B, out, in, f, f]``, as the original.
    """

    def __init__(self, in_size: int = 512, out_size: int = 512, z_dim: int = 512, f_size: int = 3):
        super().__init__()
        self.in_size, self.out_size, self.z_dim, self.f_size = in_size, out_size, z_dim, f_size
        self.w1 = nn.Parameter(torch.fmod(torch.randn(z_dim, out_size * f_size * f_size) / 40, 2))
        self.b1 = nn.Parameter(torch.fmod(torch.randn(out_size * f_size * f_size) / 40, 2))
        self.w2 = nn.Parameter(torch.fmod(torch.randn(z_dim, in_size * z_dim) / 40, 2))
        self.b2 = nn.Parameter(torch.fmod(torch.randn(in_size * z_dim) / 40, 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        h = torch.matmul(z, self.w2) + self.b2
        h = torch.matmul(h.view(b, self.in_size, self.z_dim), self.w1) + self.b1
        return h.view(b, self.out_size, self.in_size, self.f_size, self.f_size)


class HyperRefinementBlock(nn.Module):
    """Head of a shared layer: conv (stride 1) then stride-2 convs down to 1x1, an equalised
    linear layer, then the shared hypernet (passed to ``forward``; not owned)."""

    def __init__(self, n_channels: int = 512, inner_c: int = 128, code_dim: int = 512, spatial: int = 16):
        super().__init__()
        n = int(math.log2(spatial))
        self.code_dim = code_dim
        self.convs = _conv_stack(n_channels, inner_c, code_dim, [1] + [2] * n)
        self.linear = EqualLinear(code_dim, code_dim, lr_mul=1)

    def forward(self, features: torch.Tensor, hypernet: SharedWeightsHypernet) -> torch.Tensor:
        code = self.convs(features).view(-1, self.code_dim)
        return hypernet(self.linear(code))


class RefinementBlock(nn.Module):
    """Head of a non-shared layer: stride-2 convs, then a 1x1 conv to ``in*out`` values.

    3x3 layers: the map is average-pooled and the ``[out, in]`` offsets are repeated over
    the kernel window; 1x1 (ToRGB) layers give ``[out, in, 1, 1]`` directly."""

    def __init__(self, shape: tuple[int, int, int], n_channels: int = 512, inner_c: int = 256,
                 code_dim: int = 512, spatial: int = 16):
        super().__init__()
        self.kernel_size, self.in_channels, self.out_channels = shape
        n_pools = int(math.log2(spatial)) - 1 - (1 if self.kernel_size == 3 else 0)
        self.convs = _conv_stack(n_channels, inner_c, code_dim, _strides(n_pools))
        conv = nn.Conv2d(code_dim, self.in_channels * self.out_channels, kernel_size=1)
        self.output = nn.Sequential(conv) if self.kernel_size == 1 else nn.Sequential(nn.AdaptiveAvgPool2d(1), conv)

    def forward(self, features: torch.Tensor, hypernet: SharedWeightsHypernet | None = None) -> torch.Tensor:
        x = self.output(self.convs(features))
        k, o, i = self.kernel_size, self.out_channels, self.in_channels
        if k == 1:
            return x.view(-1, o, i, 1, 1)
        return x.view(-1, o, i, 1, 1).repeat(1, 1, 1, k, k)


class SeparableBlock(nn.Module):
    """Per-tap rank-1 kernel ``out x in`` from a code, mixed by two linear layers:
    ``[B, code] -> [B, out, in, k, k]``."""

    def __init__(self, input_size: int, kernel_channels_in: int, kernel_channels_out: int, kernel_size: int):
        super().__init__()
        self.input_size, self.kernel_size = input_size, kernel_size
        self.c_in, self.c_out = kernel_channels_in, kernel_channels_out
        self.make_kernel_in = nn.Linear(input_size, kernel_size * kernel_size * kernel_channels_in)
        self.make_kernel_out = nn.Linear(input_size, kernel_size * kernel_size * kernel_channels_out)
        self.kernel_linear_in = nn.Linear(kernel_channels_in, kernel_channels_in)
        self.kernel_linear_out = nn.Linear(kernel_channels_out, kernel_channels_out)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = features.view(-1, self.input_size)
        k = self.kernel_size
        k_in = self.make_kernel_in(f).view(-1, k, k, 1, self.c_in)
        k_out = self.make_kernel_out(f).view(-1, k, k, self.c_out, 1)
        kernel = self.kernel_linear_in(torch.matmul(k_out, k_in)).permute(0, 1, 2, 4, 3)
        return self.kernel_linear_out(kernel).permute(0, 4, 3, 1, 2)


class RefinementBlockSeparable(nn.Module):
    """Head of a non-shared layer in the separable variant: stride-2 convs down to 1x1,
    then a :class:`SeparableBlock` (3x3 layers) or a 1x1 conv (ToRGB layers)."""

    def __init__(self, shape: tuple[int, int, int], n_channels: int = 512, inner_c: int = 256,
                 code_dim: int = 512, spatial: int = 16):
        super().__init__()
        self.kernel_size, self.in_channels, self.out_channels = shape
        self.convs = _conv_stack(n_channels, inner_c, code_dim, _strides(int(math.log2(spatial)) - 1))
        if self.kernel_size == 1:
            self.output = nn.Sequential(nn.Conv2d(code_dim, self.in_channels * self.out_channels, kernel_size=1))
        else:
            self.output = nn.Sequential(SeparableBlock(code_dim, self.in_channels, self.out_channels, self.kernel_size))

    def forward(self, features: torch.Tensor, hypernet: SharedWeightsHypernet | None = None) -> torch.Tensor:
        x = self.output(self.convs(features))
        if self.kernel_size == 1:
            return x.view(-1, self.out_channels, self.in_channels, 1, 1)
        return x


class HyperNetwork(nn.Module):
    """``SharedWeightsHyperNetResNet`` / ``...Separable``:
    ``forward(x [B, input_nc, H, W]) -> list of n_outputs offsets [B, out, in, k, k] or None``."""

    def __init__(self, config: HyperNetConfig | None = None):
        super().__init__()
        if config is None:
            config = HyperNetConfig.for_generator(GeneratorConfig(size=1024))
        self.config = config
        w = config.widths
        self.conv1 = nn.Conv2d(config.input_nc, w[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.PReLU(w[0])
        self.body, _ = make_resnet_body(w, config.units)
        k, s_in, s_out = config.shared_shape
        self.shared_weight_hypernet = SharedWeightsHypernet(s_in, s_out, config.code_dim, k)
        head = RefinementBlockSeparable if config.type.endswith("Separable") else RefinementBlock
        sizes = dict(n_channels=w[3], code_dim=config.code_dim, spatial=config.feature_size)
        self.refinement_blocks = nn.ModuleList()
        for idx, shape in enumerate(config.layer_shapes):
            if idx not in config.layers_to_tune:
                block = None
            elif idx in SHARED_LAYERS:
                block = HyperRefinementBlock(inner_c=config.shared_inner, **sizes)
            else:
                block = head(shape, inner_c=config.inner, **sizes)
            self.refinement_blocks.append(block)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        if x.ndim != 4 or x.shape[1] != self.config.input_nc:
            raise ValueError(f"the hypernetwork expects [B, {self.config.input_nc}, H, W], got {tuple(x.shape)}")
        x = self.body(self.relu(self.bn1(self.conv1(x))))
        return [
            None if block is None else block(x, self.shared_weight_hypernet)
            for block in self.refinement_blocks
        ]
