"""Model definitions: StyleGAN2 generator, pSp / e4e / ReStyle encoders and the pSp model
(one class for the three families, see ``PSPConfig.family``)."""

from instyle.models.encoders import EncoderConfig
from instyle.models.psp import FAMILIES, PSP, PSPConfig
from instyle.models.registry import build_encoder, get_config, list_configs, list_encoders
from instyle.models.stylegan2 import Generator, GeneratorConfig


def create_psp(name: str = "psp_ffhq_1024", **overrides) -> PSP:
    """Build a randomly initialised pSp model from a registered config name.

    ``overrides`` replace top-level ``PSPConfig`` fields (e.g. ``task="sketch2face"``).
    """
    config = get_config(name)
    if overrides:
        config = PSPConfig.from_dict({**config.to_dict(), **overrides})
    return PSP(config)


__all__ = [
    "FAMILIES",
    "PSP",
    "EncoderConfig",
    "Generator",
    "GeneratorConfig",
    "PSPConfig",
    "build_encoder",
    "create_psp",
    "get_config",
    "list_configs",
    "list_encoders",
]
