"""Encoders: IR / IR-SE backbones and the pSp encoders built on them."""

from instyle.models.encoders.backbone import Backbone, BottleneckIR, BottleneckIRSE, make_body
from instyle.models.encoders.psp_encoders import (
    ENCODER_TYPES,
    BackboneEncoderUsingLastLayerIntoW,
    BackboneEncoderUsingLastLayerIntoWPlus,
    EncoderConfig,
    GradualStyleBlock,
    GradualStyleEncoder,
)

__all__ = [
    "ENCODER_TYPES",
    "Backbone",
    "BackboneEncoderUsingLastLayerIntoW",
    "BackboneEncoderUsingLastLayerIntoWPlus",
    "BottleneckIR",
    "BottleneckIRSE",
    "EncoderConfig",
    "GradualStyleBlock",
    "GradualStyleEncoder",
    "make_body",
]
