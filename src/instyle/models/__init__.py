"""Model definitions: StyleGAN2 generator, pSp encoders, the pSp and HyperStyle models."""

from instyle.models.encoders import EncoderConfig
from instyle.models.hyperstyle import HyperStyle, HyperStyleConfig
from instyle.models.psp import PSP, PSPConfig
from instyle.models.registry import build_encoder, get_config, list_configs, list_encoders
from instyle.models.stylegan2 import Generator, GeneratorConfig


def create_psp(name: str = "psp_ffhq_1024", **overrides) -> PSP:
    """Build a randomly initialised pSp model from a registered config name.

    ``overrides`` replace ``PSPConfig`` fields, nested sections key by key (see
    :meth:`PSPConfig.with_overrides`): ``create_psp("psp_256", generator={"size": 128})``.
    """
    config = get_config(name)
    return PSP(config.with_overrides(**overrides) if overrides else config)


__all__ = [
    "PSP",
    "EncoderConfig",
    "Generator",
    "GeneratorConfig",
    "HyperStyle",
    "HyperStyleConfig",
    "PSPConfig",
    "build_encoder",
    "create_psp",
    "get_config",
    "list_configs",
    "list_encoders",
]
