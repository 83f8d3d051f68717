"""OpenVINO 16-bit inference with the precision-sensitive operations kept in float32.

With ``INFERENCE_PRECISION_HINT`` ``bf16`` alone, OpenVINO's CPU plugin computes nearly every
operation in bfloat16: the convolutions, but also the style affines and demodulation of
StyleGAN's modulated convolutions (``[B, 512] @ [512, C]`` products that it turns into
``FullyConnected`` layers), the per-channel scales, biases and activations. On the 1024-px
pSp generator (random weights of the real size, Zen 4 with ``avx512_bf16``) that gave
38.9 dB PSNR against float32. Rounding each of those in PyTorch showed where it comes from:
a style vector or demodulation factor rounded to 8 bits scales a whole feature map, so its
error does not average out over the pixels the way rounding of activations does.

:func:`mixed_precision_model` reads an ONNX graph into OpenVINO and

* rewrites each ``[B, K] @ [K, N]`` product with a constant-shaped right side and at most
  :data:`MAX_REWRITTEN_WEIGHTS` weights as ``ReduceSum(Multiply)`` (the same arithmetic;
  OpenVINO offers no way to keep a ``FullyConnected`` layer in float32, it drops the mark
  when it converts a ``MatMul``), and
* rewrites ``c / sqrt(x)`` (demodulation) as ``c * x ** -0.5``, which OpenVINO would fuse
  into an ``rsqrt`` layer that drops the mark, and
* marks every operation but the convolutions to keep its original (float32) precision,

so only the convolutions, where the time goes, run in 16 bits. Measured on that generator,
8 images: 42.8-44.2 dB (mean 43.6) instead of 38.2-39.7 dB (mean 39.2), at the same speed
within the noise (the benchmark's ``openvino bf16-all`` rows are the plain hint). OpenVINO
honours the marks only in a model it reads from its own IR, so the model is written to a
temporary folder and read back.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from instyle.export.onnx import openvino_core, require

__all__ = ["CONVOLUTIONS", "KEEP_PRECISION", "MAX_REWRITTEN_WEIGHTS", "mixed_precision_model"]

#: The operations left to 16-bit arithmetic (OpenVINO opset type names).
CONVOLUTIONS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData"})
#: The run-time attribute that keeps an operation's precision (OpenVINO's legacy name of
#: ``DisablePrecisionConversion``, converted when the model is written as IR).
KEEP_PRECISION = "precise_0"
#: Largest right side (K * N) of a product rewritten as ``ReduceSum(Multiply)``: its
#: ``[B, K, N]`` intermediate is B MiB at 2**18 (a 512 x 512 style affine); larger products
#: stay ``FullyConnected`` (16-bit).
MAX_REWRITTEN_WEIGHTS = 1 << 20
_UNMARKED = CONVOLUTIONS | {"Parameter", "Result", "Constant"}


def _replace(op, out) -> None:
    """Put ``out`` where ``op``'s output was, under ``op``'s name."""
    out.set_friendly_name(op.get_friendly_name())
    op.output(0).replace(out.output(0))


def _rewrite_products(model) -> None:
    """Replace the small ``[B, K] @ [K, N]`` products of ``model`` in place."""
    ops = require("openvino.opset13")
    for op in list(model.get_ordered_ops()):
        if op.get_type_name() != "MatMul":
            continue
        left, right = op.get_input_partial_shape(0), op.get_input_partial_shape(1)
        attrs = op.get_attributes()
        if (left.rank.is_dynamic or right.rank.is_dynamic or left.rank.get_length() != 2
                or right.rank.get_length() != 2 or not right.is_static or attrs["transpose_a"]):
            continue
        k, n = right.to_shape()
        if k * n > MAX_REWRITTEN_WEIGHTS:
            continue
        a, b = op.input_value(0), op.input_value(1)
        if attrs["transpose_b"]:  # b is [N, K]
            product = ops.multiply(ops.unsqueeze(a, ops.constant([1])), b)
            out = ops.reduce_sum(product, ops.constant([2]), False)
        else:  # b is [K, N]
            product = ops.multiply(ops.unsqueeze(a, ops.constant([2])), b)
            out = ops.reduce_sum(product, ops.constant([1]), False)
        _replace(op, out)


def _rewrite_reciprocal_roots(model) -> None:
    """Replace ``c / sqrt(x)`` (demodulation) by ``c * x ** -0.5`` in place.
    OpenVINO fuses the former into an ``rsqrt`` layer that drops the float32 mark: the
    demodulation factors then ran in bfloat16 (41.5 dB instead of 43.1 dB on the 1024-px
    generator, the image of the module's text)."""
    ops = require("openvino.opset13")
    for op in list(model.get_ordered_ops()):
        if op.get_type_name() != "Divide" or op.input_value(1).get_node().get_type_name() != "Sqrt":
            continue
        x = op.input_value(1).get_node().input_value(0)
        _replace(op, ops.multiply(op.input_value(0), ops.power(x, ops.constant(np.float32(-0.5)))))


def mixed_precision_model(path: Path | str):
    """``path`` (ONNX) as an OpenVINO model whose non-convolution operations keep float32
    under a 16-bit ``INFERENCE_PRECISION_HINT`` (see the module's text). Compile it at once:
    its weights may be mapped from a file that is already deleted (POSIX keeps it)."""
    ov = require("openvino")
    core = openvino_core()
    model = core.read_model(str(path))
    _rewrite_products(model)
    _rewrite_reciprocal_roots(model)
    for op in model.get_ops():
        if op.get_type_name() not in _UNMARKED:
            op.get_rt_info()[KEEP_PRECISION] = ""
    with tempfile.TemporaryDirectory(prefix="instyle-openvino-", ignore_cleanup_errors=True) as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return core.read_model(str(xml))
