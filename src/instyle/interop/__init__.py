"""Reading and writing model files: official pSp checkpoints, rosinality StyleGAN2
checkpoints, NVIDIA StyleGAN2-ADA pickles and instyle's own format.

Readers never execute code from a file; converters are pure key-mapping functions
(:mod:`instyle.interop.keymaps`).
"""

from instyle.errors import CheckpointError
from instyle.interop.loading import (
    cache_dir,
    detect_format,
    load_generator,
    load_own,
    load_psp,
    load_state_checked,
    read_official_psp,
    resolve_path,
    save_generator,
    save_psp,
)
from instyle.interop.safe_load import safe_torch_load

__all__ = [
    "CheckpointError",
    "cache_dir",
    "detect_format",
    "load_generator",
    "load_own",
    "load_psp",
    "load_state_checked",
    "read_official_psp",
    "resolve_path",
    "safe_torch_load",
    "save_generator",
    "save_psp",
]
