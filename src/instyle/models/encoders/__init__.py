"""Encoders: IR / IR-SE and ResNet-34 trunks and the pSp, e4e and ReStyle encoders built on
them (each registered under its official ``encoder_type`` name)."""

from instyle.models.encoders.backbone import Backbone, BottleneckIR, BottleneckIRSE, make_body
from instyle.models.encoders.e4e import Encoder4Editing, SingleStyleCodeEncoder
from instyle.models.encoders.psp_encoders import (
    ENCODER_TYPES,
    BackboneEncoderUsingLastLayerIntoW,
    BackboneEncoderUsingLastLayerIntoWPlus,
    EncoderConfig,
    GradualStyleBlock,
    GradualStyleEncoder,
)
from instyle.models.encoders.restyle import (
    BackboneEncoder,
    ProgressiveBackboneEncoder,
    ResNetBackboneEncoder,
    ResNetGradualStyleEncoder,
    ResNetProgressiveBackboneEncoder,
)

__all__ = [
    "ENCODER_TYPES",
    "Backbone",
    "BackboneEncoder",
    "BackboneEncoderUsingLastLayerIntoW",
    "BackboneEncoderUsingLastLayerIntoWPlus",
    "BottleneckIR",
    "BottleneckIRSE",
    "Encoder4Editing",
    "EncoderConfig",
    "GradualStyleBlock",
    "GradualStyleEncoder",
    "ProgressiveBackboneEncoder",
    "ResNetBackboneEncoder",
    "ResNetGradualStyleEncoder",
    "ResNetProgressiveBackboneEncoder",
    "SingleStyleCodeEncoder",
    "make_body",
]
