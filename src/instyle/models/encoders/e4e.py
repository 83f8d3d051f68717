"""e4e (encoder4editing, Tov et al. 2021): one base code ``w0`` plus per-style offsets.

``Encoder4Editing`` has exactly the tensors of pSp's ``GradualStyleEncoder`` (same
IR-SE-50 trunk, FPN and map2style heads) but combines the heads differently:
``w[:, 0] = w0 = styles[0](c3)``, and every other row is ``w0 + styles[i](features_i)``
for the styles enabled by the progressive stage. Rows beyond the stage stay ``w0``.
Only ``opts['encoder_type']`` tells the two apart in an official checkpoint.

``SingleStyleCodeEncoder`` is e4e's name for pSp's W encoder whose one code is repeated
over all styles (``[B, n_styles, 512]``; the average latent is then added row by row).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from instyle.models.encoders.psp_encoders import (
    BackboneEncoderUsingLastLayerIntoW,
    GradualStyleEncoder,
)
from instyle.models.registry import register_encoder

__all__ = ["INFERENCE_STAGE", "ProgressiveEncoderMixin", "Encoder4Editing", "SingleStyleCodeEncoder"]

#: ``ProgressiveStage.Inference`` of the originals: every offset is applied (for up to 18 styles).
INFERENCE_STAGE = 18


class ProgressiveEncoderMixin:
    """The progressive stage of e4e-style encoders: stage ``k`` trains / applies the offsets
    of styles ``1..k`` (stage 0 = one w for every style). Not saved in checkpoints: a
    freshly built or loaded encoder is at :data:`INFERENCE_STAGE`, as in the originals."""

    progressive_stage: int = INFERENCE_STAGE
    same_keys_as: str = ""

    def set_progressive_stage(self, stage: int) -> None:
        stage = int(getattr(stage, "value", stage))  # also accepts an enum with .value
        if not 0 <= stage <= INFERENCE_STAGE:
            raise ValueError(f"progressive stage {stage} is outside 0..{INFERENCE_STAGE}")
        self.progressive_stage = stage

    def combine(self, w0: torch.Tensor, delta: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """``[B, D]`` base code + ``delta(i) -> [B, D]`` for the enabled styles -> ``[B, n_styles, D]``."""
        n = self.config.n_styles
        rows = [w0]
        for i in range(1, n):
            rows.append(w0 + delta(i) if i < self.progressive_stage + 1 else w0)
        return torch.stack(rows, dim=1)


@register_encoder("Encoder4Editing")
class Encoder4Editing(ProgressiveEncoderMixin, GradualStyleEncoder):
    """e4e's encoder: ``forward(x [B, 3, S, S]) -> [B, n_styles, style_dim]`` (before latent_avg).

    Style ``i`` reads ``c3`` for ``i < coarse``, the middle FPN map for ``i < middle`` and
    the fine one after that (bilinear, ``align_corners=True``); the FPN maps are only
    computed when a style of that level is enabled, as in the original.
    """

    families = ("e4e",)
    same_keys_as = "GradualStyleEncoder"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.pyramid_inputs(x)
        maps: dict[str, torch.Tensor] = {}

        def features(i: int) -> torch.Tensor:
            if i < self.coarse_ind:
                return c3
            if "p2" not in maps:
                maps["p2"] = self._upsample_add(c3, self.latlayer1(c2))
            if i < self.middle_ind:
                return maps["p2"]
            if "p1" not in maps:
                maps["p1"] = self._upsample_add(maps["p2"], self.latlayer2(c1))
            return maps["p1"]

        return self.combine(self.styles[0](c3), lambda i: self.styles[i](features(i)))


@register_encoder("SingleStyleCodeEncoder")
class SingleStyleCodeEncoder(BackboneEncoderUsingLastLayerIntoW):
    """e4e's single-code ablation: pSp's W encoder, its code repeated over the styles.

    ``forward(x [B, 3, S, S]) -> [B, n_styles, style_dim]``.
    """

    families = ("e4e",)
    same_keys_as = "BackboneEncoderUsingLastLayerIntoW"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = super().forward(x)
        return w.unsqueeze(1).repeat(1, self.config.n_styles, 1)
