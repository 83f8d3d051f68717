"""The pSp encoders: the feature-pyramid ``GradualStyleEncoder`` and the simpler W and
W+ encoders of the paper's ablation.

All take ``x: [B, input_nc, S, S]`` with ``S = config.input_size`` (256 for the
published models) in [-1, 1] (photos) or one-hot / binary maps, and return raw
codes before the average latent is added: ``[B, n_styles, style_dim]`` (W+) or
``[B, style_dim]`` (W). Parameter names match the official checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from instyle.models.encoders.backbone import (
    DEFAULT_WIDTHS,
    UNITS,
    build_trunk,
    make_body,
    make_input_layer,
    run_trunk_stem,
)
from instyle.models.registry import list_encoders, register_encoder
from instyle.models.stylegan2 import MAX_CHANNELS, MAX_SIZE, EqualLinear
from instyle.utils.config import (
    ConfigError,
    DictConfig,
    check_choice,
    check_int_range,
    check_power_of_two,
)

__all__ = [
    "EncoderConfig",
    "GradualStyleBlock",
    "GradualStyleEncoder",
    "BackboneEncoderUsingLastLayerIntoW",
    "BackboneEncoderUsingLastLayerIntoWPlus",
    "ENCODER_TYPES",
]

ENCODER_TYPES = (
    "GradualStyleEncoder",
    "BackboneEncoderUsingLastLayerIntoW",
    "BackboneEncoderUsingLastLayerIntoWPlus",
)

#: Encoder bounds: input side (published 256), input channels (19 for segmentation maps),
#: residual units per stage (IR-152 has 36) and styles (a MAX_SIZE generator's n_latent).
MAX_INPUT_SIZE = 1024
MAX_INPUT_NC = 256
MAX_UNITS = 64
MAX_STYLES = 2 * int(math.log2(MAX_SIZE)) - 2


@dataclass
class EncoderConfig(DictConfig):
    """Architecture of a pSp encoder.

    Attributes:
        type: a registered encoder (``instyle.models.list_encoders()``): the pSp
            :data:`ENCODER_TYPES`, and the e4e / ReStyle ones, by their official ``encoder_type`` names.
        num_layers: backbone depth: 50, 100 or 152.
        mode: ``"ir_se"`` (published models) or ``"ir"``.
        input_nc: input channels (3 photo, 1 sketch, 19 segmentation one-hot, ...).
        n_styles: number of style vectors (``2 * log2(output_size) - 2``).
        style_dim: width of each style vector (512 for StyleGAN2).
        widths: channels of the 4 backbone stages (narrow values give tiny test models).
        units: residual units per stage; default from ``num_layers``.
        input_size: spatial input size (256 published; any power of two >= 64 for FPN, at
            most :data:`MAX_INPUT_SIZE`).
        input_height: input height when it differs from ``input_size`` (the width): the
            e4e / ReStyle cars models take 192x256 inputs. None = square.
        coarse: styles ``[0, coarse)`` read the coarsest map (GradualStyleEncoder).
        middle: styles ``[coarse, middle)`` read the middle map; the rest the finest.
    """

    SECTION = 'encoder'

    type: str = "GradualStyleEncoder"
    num_layers: int = 50
    mode: str = "ir_se"
    input_nc: int = 3
    n_styles: int = 18
    style_dim: int = 512
    widths: tuple[int, int, int, int] = DEFAULT_WIDTHS
    units: tuple[int, int, int, int] | None = None
    input_size: int = 256
    input_height: int | None = None
    coarse: int = 3
    middle: int = 7

    def __post_init__(self):
        check_choice("encoder.type", self.type, [*ENCODER_TYPES, *(t for t in list_encoders() if t not in ENCODER_TYPES)])
        check_choice("encoder.mode", self.mode, ("ir", "ir_se"))
        if self.units is None:
            check_choice("encoder.num_layers", self.num_layers, sorted(UNITS))
        # Bounds keep a crafted config from asking for a huge model or input (see MAX_*).
        check_int_range("encoder.input_nc", self.input_nc, 1, MAX_INPUT_NC)
        check_int_range("encoder.n_styles", self.n_styles, 1, MAX_STYLES)
        check_int_range("encoder.style_dim", self.style_dim, 1, MAX_CHANNELS)
        check_power_of_two("encoder.input_size", self.input_size, minimum=32, maximum=MAX_INPUT_SIZE)
        if self.input_height is not None and not (
            isinstance(self.input_height, int) and 16 <= self.input_height <= self.input_size and self.input_height % 16 == 0
        ):
            raise ConfigError(
                f"encoder.input_height={self.input_height!r} must be a multiple of 16 in [16, input_size={self.input_size}]"
            )
        self.widths = tuple(int(w) for w in self.widths)
        if len(self.widths) != 4 or not all(1 <= w <= MAX_CHANNELS for w in self.widths):
            raise ConfigError(f"encoder.widths={self.widths!r} must be 4 integers in [1, {MAX_CHANNELS}]")
        if self.units is not None:
            self.units = tuple(int(u) for u in self.units)
            if len(self.units) != 4 or not all(1 <= u <= MAX_UNITS for u in self.units):
                raise ConfigError(f"encoder.units={self.units!r} must be 4 integers in [1, {MAX_UNITS}]")
        if not 0 < self.coarse <= self.middle <= MAX_STYLES:
            raise ConfigError(
                f"encoder.coarse={self.coarse} and middle={self.middle} need 0 < coarse <= middle <= {MAX_STYLES}"
            )


def _check_input(config: EncoderConfig, x: torch.Tensor, name: str) -> None:
    s = config.input_size
    h = config.input_height or s
    if x.ndim != 4 or x.shape[1] != config.input_nc or x.shape[2] != h or x.shape[3] != s:
        raise ValueError(
            f"{name} expects input [B, {config.input_nc}, {h}, {s}], got {tuple(x.shape)}; "
            f"resize inputs to {s}x{h} first (e.g. instyle.inference.preprocess)"
        )


class GradualStyleBlock(nn.Module):
    """map2style head: ``log2(spatial)`` strided 3x3 convs + LeakyReLU(0.01) to 1x1, then
    an equalised linear layer. ``[B, in_c, spatial, spatial] -> [B, out_c]``."""

    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        self.out_c = out_c
        self.spatial = spatial
        num_pools = int(math.log2(spatial))
        modules: list[nn.Module] = [nn.Conv2d(in_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        for _ in range(num_pools - 1):
            modules += [nn.Conv2d(out_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*modules)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Width = spatial; a lower map (cars: 12x16) also reaches 1x1 after the same convs.
        if x.shape[-1] != self.spatial or not 0 < x.shape[-2] <= self.spatial:
            raise ValueError(f"GradualStyleBlock expects a {self.spatial}x{self.spatial} map, got {tuple(x.shape)}")
        x = self.convs(x)
        x = x.reshape(x.shape[0], self.out_c)
        return self.linear(x)


@register_encoder("GradualStyleEncoder")
class GradualStyleEncoder(nn.Module):
    """pSp's feature-pyramid encoder.

    Taps after the last unit of stages 2, 3 and 4 (indices 6, 20, 23 for IR-50) give maps
    c1 (S/4), c2 (S/8), c3 (S/16). Coarse styles read c3, middle styles read
    ``up(c3) + latlayer1(c2)``, fine styles read ``up(p2) + latlayer2(c1)`` (bilinear,
    ``align_corners=True``).

    ``forward(x [B, input_nc, S, S]) -> [B, n_styles, style_dim]``.
    """

    #: families whose official code builds this encoder (see ``PSPConfig.family``).
    families = ("psp", "e4e", "restyle")
    #: the ResNet-34 trunk instead of IR-SE (ReStyle's ``ResNetGradualStyleEncoder``).
    resnet = False

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        w = config.widths
        ends = build_trunk(self, config, self.resnet)
        self.taps = (ends[1], ends[2], ends[3])
        s = config.input_size
        self.styles = nn.ModuleList()
        self.style_count = config.n_styles
        self.coarse_ind = min(config.coarse, config.n_styles)
        self.middle_ind = min(config.middle, config.n_styles)
        for i in range(self.style_count):
            spatial = s // 16 if i < self.coarse_ind else s // 8 if i < self.middle_ind else s // 4
            self.styles.append(GradualStyleBlock(w[3], config.style_dim, spatial))
        self.latlayer1 = nn.Conv2d(w[2], w[3], kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(w[1], w[3], kernel_size=1, stride=1, padding=0)

    @staticmethod
    def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y

    def pyramid_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three body taps ``(c1, c2, c3)`` at ``S/4``, ``S/8``, ``S/16``."""
        _check_input(self.config, x, type(self).__name__)
        x = run_trunk_stem(self, x)
        c1 = c2 = c3 = None
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i == self.taps[0]:
                c1 = x
            elif i == self.taps[1]:
                c2 = x
            elif i == self.taps[2]:
                c3 = x
        return c1, c2, c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.pyramid_inputs(x)
        latents = [self.styles[j](c3) for j in range(self.coarse_ind)]
        p2 = self._upsample_add(c3, self.latlayer1(c2))
        latents += [self.styles[j](p2) for j in range(self.coarse_ind, self.middle_ind)]
        p1 = self._upsample_add(p2, self.latlayer2(c1))
        latents += [self.styles[j](p1) for j in range(self.middle_ind, self.style_count)]
        return torch.stack(latents, dim=1)


@register_encoder("BackboneEncoderUsingLastLayerIntoW")
class BackboneEncoderUsingLastLayerIntoW(nn.Module):
    """Ablation encoder into W: backbone -> global average pool -> equalised linear.

    ``forward(x [B, input_nc, S, S]) -> [B, style_dim]``.
    """

    families = ("psp",)

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        w = config.widths
        self.input_layer = make_input_layer(config.input_nc, w[0])
        self.output_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = EqualLinear(w[3], config.style_dim, lr_mul=1)
        self.body, _ = make_body(config.num_layers, config.mode, w, config.units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self.config, x, "BackboneEncoderUsingLastLayerIntoW")
        x = self.body(self.input_layer(x))
        x = self.output_pool(x).flatten(1)
        return self.linear(x)


@register_encoder("BackboneEncoderUsingLastLayerIntoWPlus")
class BackboneEncoderUsingLastLayerIntoWPlus(nn.Module):
    """Ablation encoder into W+: backbone -> BN -> pool 7x7 -> linear -> equalised linear
    to ``n_styles * style_dim``.

    ``forward(x [B, input_nc, S, S]) -> [B, n_styles, style_dim]``.
    """

    families = ("psp",)

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        w = config.widths
        self.n_styles = config.n_styles
        self.style_dim = config.style_dim
        self.input_layer = make_input_layer(config.input_nc, w[0])
        self.output_layer_2 = nn.Sequential(
            nn.BatchNorm2d(w[3]),
            nn.AdaptiveAvgPool2d((7, 7)),
            nn.Flatten(),
            nn.Linear(w[3] * 7 * 7, config.style_dim),
        )
        self.linear = EqualLinear(config.style_dim, config.style_dim * config.n_styles, lr_mul=1)
        self.body, _ = make_body(config.num_layers, config.mode, w, config.units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self.config, x, "BackboneEncoderUsingLastLayerIntoWPlus")
        x = self.body(self.input_layer(x))
        x = self.linear(self.output_layer_2(x))
        return x.view(x.shape[0], self.n_styles, self.style_dim)
