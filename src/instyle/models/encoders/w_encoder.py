"""HyperStyle's W-encoder (``WEncoder`` of the official repository): an IR-SE backbone,
global average pooling and one equalised linear layer give a single w, repeated over
all ``n_styles`` generator inputs.

``forward(x [B, 3, S, S] in [-1, 1]) -> [B, n_styles, style_dim]`` raw codes (before
the average latent is added). Parameter names match the official checkpoints
(``input_layer.N``, ``body.N.*``, ``linear.*``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from instyle.models.encoders.backbone import DEFAULT_WIDTHS, UNITS, make_body, make_input_layer
from instyle.models.stylegan2 import EqualLinear
from instyle.utils.config import ConfigError, DictConfig, check_choice, check_positive_int, check_power_of_two

__all__ = ["WEncoderConfig", "WEncoder"]


@dataclass
class WEncoderConfig(DictConfig):
    """Architecture of a W-encoder.

    Attributes:
        num_layers: backbone depth: 50, 100 or 152 (ignored when ``units`` is given).
        mode: ``"ir_se"`` (published) or ``"ir"``.
        n_styles: how many times the one w is repeated (the generator's ``n_latent``).
        style_dim: width of w.
        widths: channels of the 4 backbone stages.
        units: residual units per stage; default from ``num_layers``.
        input_size: expected input side (the pooling accepts any, the check does not).
    """

    SECTION = 'w_encoder'

    num_layers: int = 50
    mode: str = "ir_se"
    n_styles: int = 18
    style_dim: int = 512
    widths: tuple[int, int, int, int] = DEFAULT_WIDTHS
    units: tuple[int, int, int, int] | None = None
    input_size: int = 256

    def __post_init__(self):
        check_choice("w_encoder.mode", self.mode, ("ir", "ir_se"))
        if self.units is None:
            check_choice("w_encoder.num_layers", self.num_layers, sorted(UNITS))
        check_positive_int("w_encoder.n_styles", self.n_styles)
        check_positive_int("w_encoder.style_dim", self.style_dim)
        check_power_of_two("w_encoder.input_size", self.input_size, minimum=16)
        self.widths = tuple(int(w) for w in self.widths)
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ConfigError(f"w_encoder.widths={self.widths!r} must be 4 positive integers")
        if self.units is not None:
            self.units = tuple(int(u) for u in self.units)
            if len(self.units) != 4 or min(self.units) < 1:
                raise ConfigError(f"w_encoder.units={self.units!r} must be 4 positive integers")

    @property
    def input_nc(self) -> int:
        """Always 3: the W-encoder reads RGB photos."""
        return 3


class WEncoder(nn.Module):
    """IR-SE backbone -> average pool -> EqualLinear -> w repeated ``n_styles`` times."""

    def __init__(self, config: WEncoderConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else WEncoderConfig()
        w = config.widths
        self.input_layer = make_input_layer(3, w[0])
        self.output_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = EqualLinear(w[3], config.style_dim, lr_mul=1)
        self.body, _ = make_body(config.num_layers, config.mode, w, config.units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.config.input_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] > s or x.shape[3] != s:
            raise ValueError(
                f"WEncoder expects images [B, 3, H <= {s}, {s}] (H < {s} only for cropped cars), got "
                f"{tuple(x.shape)}; resize inputs first (e.g. instyle.inference.preprocess)"
            )
        x = self.body(self.input_layer(x))
        w = self.linear(self.output_pool(x).flatten(1))
        return w[:, None, :].expand(-1, self.config.n_styles, -1).contiguous()
