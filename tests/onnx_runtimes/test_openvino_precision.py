"""OpenVINO in 16 bits with everything but the convolutions in float32
(``instyle.export.openvino_precision``): the rewrites compute the same, the marks land where
they should, and on a CPU with native bfloat16 only convolutions run in 16 bits and the tiny
generator stays >= 40 dB at batch 1 and 3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

ov = pytest.importorskip("openvino", reason="needs the deploy extra (pip install 'instyle[deploy]')")
onnx = pytest.importorskip("onnx", reason="needs the deploy extra (pip install 'instyle[deploy]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from instyle.export import openvino_precision  # noqa: E402
from instyle.export.onnx import openvino_core  # noqa: E402
from instyle.export.openvino_precision import mixed_precision_model  # noqa: E402

K, N = 8, 6


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "A": rng.standard_normal((K, N)).astype(np.float32),       # x @ A
        "B": rng.standard_normal((N, K)).astype(np.float32),       # Gemm(x, B, transB=1)
        "C": rng.standard_normal((4, N, 1, 1)).astype(np.float32),  # a 1x1 convolution
    }


def _graph(path) -> dict[str, np.ndarray]:
    """x [batch, K] -> x @ A, Gemm(x, B^T), their sum / sqrt(1 + energy), a 1x1 conv, ReLU."""
    w = _weights()
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["p"], name="affine"),
        helper.make_node("Gemm", ["x", "B"], ["q"], name="affine_t", transB=1),
        helper.make_node("Add", ["p", "q"], ["s"]),
        helper.make_node("Mul", ["s", "s"], ["s2"]),
        helper.make_node("ReduceSum", ["s2", "axis"], ["e"], keepdims=1),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Sqrt", ["e1"], ["r"]),
        helper.make_node("Div", ["s", "r"], ["d"], name="demodulate"),
        helper.make_node("Reshape", ["d", "shape"], ["m"]),
        helper.make_node("Conv", ["m", "C"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()] + [
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array([-1, N, 1, 1], np.int64), "shape"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 1, 1])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return w


def _reference(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    s = x @ w["A"] + x @ w["B"].T
    d = s / np.sqrt((s * s).sum(1, keepdims=True) + 1)
    return np.maximum(d @ w["C"][:, :, 0, 0].T, 0)[:, :, None, None]


def test_the_rewritten_graph_computes_the_same_and_only_convolutions_are_left_unmarked(tmp_path):
    w = _graph(tmp_path / "g.onnx")
    model = mixed_precision_model(tmp_path / "g.onnx")
    types = [op.get_type_name() for op in model.get_ops()]
    assert "MatMul" not in types and types.count("ReduceSum") >= 2  # both products rewritten
    assert "Sqrt" not in types and "Power" in types                # c / sqrt(x) -> c * x ** -0.5
    for op in model.get_ops():
        marked = any(key.startswith("DisablePrecisionConversion") for key in op.get_rt_info())
        expected = op.get_type_name() not in ("Convolution", "Parameter", "Result", "Constant")
        assert marked == expected, (op.get_type_name(), op.get_friendly_name(), list(op.get_rt_info()))
    compiled = openvino_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, K)).astype(np.float32)
        np.testing.assert_allclose(compiled(x)[0], _reference(x, w), rtol=1e-5, atol=1e-6)


def test_products_too_large_for_the_rewrite_stay_matrix_products(tmp_path, monkeypatch):
    _graph(tmp_path / "g.onnx")
    monkeypatch.setattr(openvino_precision, "MAX_REWRITTEN_WEIGHTS", K * N - 1)
    types = [op.get_type_name() for op in mixed_precision_model(tmp_path / "g.onnx").get_ops()]
    assert types.count("MatMul") == 2


def _native_bf16() -> bool:
    return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    pytest.importorskip("onnxscript", reason="needs the deploy extra")
    from instyle.export import export_onnx
    from tests.test_families import tiny

    model = tiny("psp", "GradualStyleEncoder")
    folder = tmp_path_factory.mktemp("generator")
    export_onnx(model, folder, graphs=("generator",))
    return model, folder / "generator.onnx"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.clip(a, -1, 1).astype(np.float64), np.clip(b, -1, 1).astype(np.float64)
    return 10 * math.log10(4 / float(((a - b) ** 2).mean()))


@pytest.mark.skipif(not _native_bf16(), reason="OpenVINO computes bfloat16 natively only with avx512_bf16 / AMX here")
def test_bf16_runs_only_the_convolutions_in_16_bits_and_keeps_the_images(tiny_generator):
    from instyle.export.backends import GraphSession

    model, path = tiny_generator
    config = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": 1}

    def precisions(source) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for op in openvino_core().compile_model(source, "CPU", config).get_runtime_model().get_ops():
            info = op.get_rt_info()
            out.setdefault(info["layerType"].astype(str), set()).add(info["runtimePrecision"].astype(str))
        return out

    plain, mixed = precisions(str(path)), precisions(mixed_precision_model(path))
    assert "bf16" in plain["FullyConnected"] and "bf16" in plain["Eltwise"]  # what the hint alone does
    assert "FullyConnected" not in mixed and mixed["Eltwise"] == {"f32"} and mixed["Reduce"] == {"f32"}
    assert "bf16" in mixed["Convolution"]
    session = GraphSession(path, "openvino", "bf16")
    for batch in (1, 3):
        x = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch)) * 2 - 1
        with torch.no_grad():
            w = model.encode(x)
            expected = model.decode(w).numpy()
        got = session({"w_plus": w.numpy()})[0]
        assert min(_psnr(got[i], expected[i]) for i in range(batch)) >= 40
