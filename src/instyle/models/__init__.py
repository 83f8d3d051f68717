"""Model definitions: StyleGAN2 generator, pSp / e4e / ReStyle encoders, the pSp model (one
class for the three families, see ``PSPConfig.family``) and HyperStyle."""

from instyle.models.encoders import EncoderConfig
from instyle.models.hyperstyle import HyperStyle, HyperStyleConfig
from instyle.models.psp import FAMILIES, PSP, PSPConfig
from instyle.models.registry import build_encoder, get_config, list_configs, list_encoders
from instyle.models.restyle3 import ReStyle3, ReStyle3Config
from instyle.models.sfe import SFE, SFEConfig  # noqa: F401  (registers its family)
from instyle.models.stylegan2 import Generator, GeneratorConfig
from instyle.models.stylegan3 import StyleGAN3Config, StyleGAN3Generator


def create_psp(name: str = "psp_ffhq_1024", **overrides) -> PSP:
    """Build a randomly initialised pSp model from a registered config name.

    ``overrides`` replace ``PSPConfig`` fields, nested sections key by key (see
    :meth:`PSPConfig.with_overrides`): ``create_psp("psp_256", generator={"size": 128})``.
    """
    config = get_config(name)
    return PSP(config.with_overrides(**overrides) if overrides else config)


__all__ = [
    "FAMILIES",
    "PSP",
    "EncoderConfig",
    "Generator",
    "GeneratorConfig",
    "HyperStyle",
    "HyperStyleConfig",
    "PSPConfig",
    "ReStyle3",
    "ReStyle3Config",
    "StyleGAN3Config",
    "StyleGAN3Generator",
    "build_encoder",
    "create_psp",
    "get_config",
    "list_configs",
    "list_encoders",
]
