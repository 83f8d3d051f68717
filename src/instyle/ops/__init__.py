"""Low-level ops: reference implementations first, optional fast paths behind the same
functions (see :mod:`instyle.ops._backend`)."""

# Importing the fast modules registers their fast paths (cheap: nothing is compiled).
from instyle.ops import fast_act, fast_filtered_lrelu, fast_modconv, fast_upfirdn2d, stylegan3_conv  # noqa: F401
from instyle.ops._backend import get_backend, register_fast_path, set_backend, use_backend
from instyle.ops.filtered_lrelu import filtered_lrelu, filtered_lrelu_reference
from instyle.ops.fused_act import FusedLeakyReLU, fused_leaky_relu, fused_leaky_relu_reference
from instyle.ops.modulated_conv import modulated_conv2d, modulated_conv2d_reference, to_rgb, to_rgb_reference
from instyle.ops.upfirdn2d import UpFirDn2d, make_kernel, upfirdn2d, upfirdn2d_reference

__all__ = [
    "FusedLeakyReLU",
    "UpFirDn2d",
    "filtered_lrelu",
    "filtered_lrelu_reference",
    "fused_leaky_relu",
    "fused_leaky_relu_reference",
    "get_backend",
    "make_kernel",
    "modulated_conv2d",
    "modulated_conv2d_reference",
    "register_fast_path",
    "set_backend",
    "to_rgb",
    "to_rgb_reference",
    "upfirdn2d",
    "upfirdn2d_reference",
    "use_backend",
]
