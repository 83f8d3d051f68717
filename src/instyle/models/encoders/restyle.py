"""ReStyle's encoders (Alaluf et al. 2021): the input is ``cat(image, current reconstruction)``
(6 channels) and the output a residual added to the current latent.

``BackboneEncoder`` reads every style from the last ``S/16`` map with one map2style head
each (no FPN); ``ProgressiveBackboneEncoder`` combines the same heads the e4e way (base
code + offsets). The ``ResNet*`` variants use a ResNet-34 trunk (7x7 stride-2 stem, no
max-pool) for non-face domains; ``ResNetGradualStyleEncoder`` is pSp's FPN encoder on it.
Progressive and plain variants have identical tensors: only ``opts['encoder_type']``
tells them apart. The iterative loop itself is :mod:`instyle.models.iterative`.
"""

from __future__ import annotations

import torch
from torch import nn

from instyle.models.encoders.backbone import build_trunk, run_trunk_stem
from instyle.models.encoders.e4e import ProgressiveEncoderMixin
from instyle.models.encoders.psp_encoders import EncoderConfig, GradualStyleBlock, GradualStyleEncoder, _check_input
from instyle.models.registry import register_encoder

__all__ = [
    "BackboneEncoder",
    "ResNetBackboneEncoder",
    "ProgressiveBackboneEncoder",
    "ResNetProgressiveBackboneEncoder",
    "ResNetGradualStyleEncoder",
]


@register_encoder("BackboneEncoder")
class BackboneEncoder(nn.Module):
    """ReStyle-pSp encoder: IR-SE trunk, ``n_styles`` map2style heads on the ``S/16`` map.

    ``forward(x [B, input_nc, S, S]) -> [B, n_styles, style_dim]``.
    """

    families = ("restyle",)
    resnet = False

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        build_trunk(self, config, self.resnet)
        spatial = config.input_size // 16
        self.styles = nn.ModuleList(
            GradualStyleBlock(config.widths[3], config.style_dim, spatial) for _ in range(config.n_styles)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self.config, x, type(self).__name__)
        return self.body(run_trunk_stem(self, x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return torch.stack([head(f) for head in self.styles], dim=1)


@register_encoder("ResNetBackboneEncoder")
class ResNetBackboneEncoder(BackboneEncoder):
    """:class:`BackboneEncoder` on a ResNet-34 trunk (``conv1``/``bn1``/``relu`` + ``body``)."""

    resnet = True


@register_encoder("ProgressiveBackboneEncoder")
class ProgressiveBackboneEncoder(ProgressiveEncoderMixin, BackboneEncoder):
    """ReStyle-e4e encoder: ``w0 = styles[0](f)`` for every row, plus ``styles[i](f)`` on the
    rows enabled by the progressive stage (all at inference)."""

    same_keys_as = "BackboneEncoder"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.combine(self.styles[0](f), lambda i: self.styles[i](f))


@register_encoder("ResNetProgressiveBackboneEncoder")
class ResNetProgressiveBackboneEncoder(ProgressiveBackboneEncoder):
    """:class:`ProgressiveBackboneEncoder` on a ResNet-34 trunk."""

    resnet = True
    same_keys_as = "ResNetBackboneEncoder"


@register_encoder("ResNetGradualStyleEncoder")
class ResNetGradualStyleEncoder(GradualStyleEncoder):
    """pSp's FPN encoder on a ResNet-34 trunk (taps after ``layer2``, ``layer3``, ``layer4``)."""

    families = ("restyle",)
    resnet = True
