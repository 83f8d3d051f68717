"""Ops against naive loop formulas: ``upfirdn2d`` and fused bias + leaky ReLU.

The naive ``upfirdn2d`` below is written straight from the definition (zero insertion,
padding where a negative pad crops, a true convolution with the kernel, decimation),
one output sample at a time, in float64 -- deliberately nothing like the tensor code.
Both the reference implementation and the dispatching function (which may use a fast
path) are compared against it.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from instyle.ops import (
    FusedLeakyReLU,
    UpFirDn2d,
    _backend,
    fused_leaky_relu,
    fused_leaky_relu_reference,
    get_backend,
    make_kernel,
    register_fast_path,
    set_backend,
    upfirdn2d,
    upfirdn2d_reference,
    use_backend,
)

UPFIRDN_IMPLS = {"reference": upfirdn2d_reference, "dispatch": upfirdn2d}
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
    ),
]
# Tolerances for low-precision dtypes against a float32 reference computed from the same
# (already rounded) inputs: a few units of the dtype's epsilon at values of order 1.
TOLERANCES = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 1e-2, "rtol": 1e-2},
    torch.bfloat16: {"atol": 6e-2, "rtol": 3e-2},
}


# --------------------------------------------------------------------------- naive formulas


def naive_upfirdn_1axis_index(n_in: int, up: int, pad0: int, pad1: int, k: int, down: int):
    """Length of the padded, upsampled signal and of the output along one axis."""
    length = n_in * up + pad0 + pad1
    return length, (length - k) // down + 1


def naive_upfirdn2d(x: np.ndarray, kernel: np.ndarray, up_x, up_y, down_x, down_y, px0, px1, py0, py1) -> np.ndarray:
    """``x [B, C, H, W]``, ``kernel [kh, kw]`` (float64), one output sample at a time."""
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    len_y, out_h = naive_upfirdn_1axis_index(h, up_y, py0, py1, kh, down_y)
    len_x, out_w = naive_upfirdn_1axis_index(w, up_x, px0, px1, kw, down_x)

    def sample(plane: np.ndarray, qy: int, qx: int) -> float:
        """Value of the upsampled + padded signal at (qy, qx): padding is an index shift."""
        uy, ux = qy - py0, qx - px0
        if not (0 <= uy < h * up_y and 0 <= ux < w * up_x):
            return 0.0
        if uy % up_y or ux % up_x:
            return 0.0  # an inserted zero
        return float(plane[uy // up_y, ux // up_x])

    out = np.zeros((b, c, out_h, out_w))
    for bi in range(b):
        for ci in range(c):
            plane = x[bi, ci]
            for oy in range(out_h):
                for ox in range(out_w):
                    # Decimation picks sample (oy*down, ox*down) of the "valid" convolution
                    # c[n] = sum_t v[n + k - 1 - t] * kernel[t] (a true convolution).
                    ny, nx = oy * down_y, ox * down_x
                    acc = 0.0
                    for ty in range(kh):
                        for tx in range(kw):
                            acc += sample(plane, ny + kh - 1 - ty, nx + kw - 1 - tx) * kernel[ty, tx]
                    out[bi, ci, oy, ox] = acc
    assert len_y >= kh and len_x >= kw
    return out


def naive_fused_leaky_relu(x: np.ndarray, bias: np.ndarray | None, slope: float, scale: float) -> np.ndarray:
    if bias is not None:
        x = x + bias.reshape(1, -1, *([1] * (x.ndim - 2)))
    return np.where(x >= 0, x, x * slope) * scale


# --------------------------------------------------------------------------- cases


def _random_cases(n: int, seed: int) -> list[tuple]:
    """(up_x, up_y, down_x, down_y, (x0, x1, y0, y1), (kh, kw), (h, w)) with a valid output."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        up_x, up_y, down_x, down_y = (rng.randint(1, 4) for _ in range(4))
        pad = tuple(rng.randint(-3, 4) for _ in range(4))
        kh, kw = rng.randint(1, 5), rng.randint(1, 5)
        h, w = rng.randint(2, 6), rng.randint(2, 6)
        len_x = w * up_x + pad[0] + pad[1]
        len_y = h * up_y + pad[2] + pad[3]
        if len_x >= kw and len_y >= kh:
            cases.append((up_x, up_y, down_x, down_y, pad, (kh, kw), (h, w)))
    return cases


# Hand-picked: every StyleGAN2 use (blur, 2x up on the skip path, 2x down), plus the
# extremes of the ranges on each axis separately.
NAMED_CASES = [
    (1, 1, 1, 1, (2, 1, 2, 1), (4, 4), (6, 6)),  # Blur after transposed conv
    (2, 2, 1, 1, (2, 1, 2, 1), (4, 4), (4, 5)),  # Upsample (ToRGB skip)
    (1, 1, 2, 2, (1, 1, 1, 1), (4, 4), (6, 6)),  # Downsample
    (4, 1, 1, 1, (0, 0, 0, 0), (1, 5), (3, 2)),
    (1, 4, 1, 1, (0, 0, 0, 0), (5, 1), (3, 2)),
    (1, 1, 4, 1, (-1, -2, 0, 0), (2, 3), (5, 6)),
    (1, 1, 1, 4, (0, 0, -2, -1), (3, 2), (6, 5)),
    (3, 2, 2, 3, (-3, 4, 4, -3), (5, 4), (4, 3)),
    (1, 1, 1, 1, (0, 0, 0, 0), (1, 1), (2, 2)),  # identity
]
CASES = NAMED_CASES + _random_cases(90, seed=1234)


def _kernel(kh: int, kw: int, seed: int) -> torch.Tensor:
    """A non-symmetric kernel (random, then made asymmetric on purpose)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.rand(kh, kw, generator=g, dtype=torch.float64) + 0.1
    k[0, -1] += 1.0  # break every flip symmetry when kh > 1 or kw > 1
    return k


def _input(shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


# --------------------------------------------------------------------------- upfirdn2d


@pytest.mark.parametrize("impl", sorted(UPFIRDN_IMPLS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "u{}{}_d{}{}_p{}_k{}_in{}".format(*c[:4], *c[4:]))
def test_upfirdn2d_matches_naive_formula(impl, case):
    up_x, up_y, down_x, down_y, pad, (kh, kw), (h, w) = case
    x = _input((2, 2, h, w), seed=hash(case) % 2**31)
    k = _kernel(kh, kw, seed=kh * 10 + kw)
    expected = naive_upfirdn2d(x.numpy(), k.numpy(), up_x, up_y, down_x, down_y, *pad)
    out = UPFIRDN_IMPLS[impl](x, k, up=(up_x, up_y), down=(down_x, down_y), pad=pad)
    assert out.shape == expected.shape
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_upfirdn2d_output_size_formula():
    x = torch.zeros(1, 1, 7, 5)
    k = torch.ones(3, 4)
    out = upfirdn2d(x, k, up=(2, 3), down=(3, 2), pad=(1, -1, 2, 0))
    # H' = (7*3 + 2 + 0 - 3)//2 + 1 = 11 ; W' = (5*2 + 1 - 1 - 4)//3 + 1 = 3
    assert out.shape == (1, 1, 11, 3)


@pytest.mark.parametrize(
    "short, full",
    [
        ({"up": 2, "down": 1, "pad": 1}, {"up": (2, 2), "down": (1, 1), "pad": (1, 1, 1, 1)}),
        ({"up": 1, "down": 2, "pad": (2, -1)}, {"up": (1, 1), "down": (2, 2), "pad": (2, -1, 2, -1)}),
        ({"up": 3, "down": (2,), "pad": (0, 1)}, {"up": (3, 3), "down": (2, 2), "pad": (0, 1, 0, 1)}),
    ],
)
def test_upfirdn2d_argument_forms_are_equivalent(short, full):
    x = _input((1, 3, 5, 6), seed=3)
    k = _kernel(3, 4, seed=3)
    torch.testing.assert_close(upfirdn2d(x, k, **short), upfirdn2d(x, k, **full), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pad": (1, 2, 3)}, "pad must be"),
        ({"up": 0}, "up and down must be >= 1"),
        ({"down": (1, 2, 3)}, "expected an int or a pair"),
    ],
)
def test_upfirdn2d_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        upfirdn2d_reference(torch.zeros(1, 1, 4, 4), torch.ones(2, 2), **kwargs)


def test_upfirdn2d_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        upfirdn2d_reference(torch.zeros(1, 4, 4), torch.ones(2, 2))
    with pytest.raises(ValueError, match="2-D kernel"):
        upfirdn2d_reference(torch.zeros(1, 1, 4, 4), torch.ones(4))


def test_make_kernel_separable_and_2d():
    k = make_kernel([1, 3, 3, 1])
    assert k.shape == (4, 4) and k.dtype == torch.float32
    torch.testing.assert_close(k, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)
    k2 = make_kernel([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(k2, torch.tensor([[0.1, 0.2], [0.3, 0.4]]))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        make_kernel(torch.ones(2, 2, 2))


def test_upfirdn2d_module_matches_function():
    mod = UpFirDn2d([1, 2, 1], up=2, down=1, pad=(2, 1), gain=4.0)
    assert set(dict(mod.named_buffers())) == {"kernel"}
    torch.testing.assert_close(mod.kernel, make_kernel([1, 2, 1]) * 4.0)
    x = _input((2, 3, 5, 5), seed=5, dtype=torch.float32)
    torch.testing.assert_close(mod(x), upfirdn2d(x, mod.kernel, up=2, down=1, pad=(2, 1)), rtol=0, atol=0)
    # Upsampling a constant by zero insertion with gain up**2 keeps the mean in the interior.
    const = torch.ones(1, 1, 6, 6)
    out = mod(const)
    torch.testing.assert_close(out[..., 3:-3, 3:-3], torch.ones_like(out[..., 3:-3, 3:-3]))


def _skip_if_unsupported(fn, dtype, device):
    """Run ``fn``; skip honestly when this PyTorch build lacks a kernel for the dtype/device."""
    try:
        return fn()
    except (RuntimeError, NotImplementedError) as e:
        if "not implemented" in str(e).lower():
            pytest.skip(f"{dtype} is not supported by this PyTorch on {device}: {str(e).splitlines()[0]}")
        raise


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("impl", sorted(UPFIRDN_IMPLS))
@pytest.mark.parametrize("case", NAMED_CASES[:3] + CASES[-3:], ids=lambda c: "u{}{}_d{}{}_p{}_k{}_in{}".format(*c[:4], *c[4:]))
def test_upfirdn2d_dtypes_and_devices(impl, case, dtype, device):
    up_x, up_y, down_x, down_y, pad, (kh, kw), (h, w) = case
    x = _input((2, 4, h + 4, w + 4), seed=11, dtype=dtype).to(device)
    k = _kernel(kh, kw, seed=12).float().to(device)
    kwargs = {"up": (up_x, up_y), "down": (down_x, down_y), "pad": pad}
    out = _skip_if_unsupported(lambda: UPFIRDN_IMPLS[impl](x, k, **kwargs), dtype, device)
    assert out.dtype == dtype and out.device.type == device
    # The float32 reference from the same (rounded) low-precision input.
    ref = upfirdn2d_reference(x.float().cpu(), k.cpu(), **kwargs)
    torch.testing.assert_close(out.float().cpu(), ref, **TOLERANCES[dtype])


def test_upfirdn2d_gradcheck():
    x = _input((1, 2, 3, 4), seed=21).requires_grad_()
    k = _kernel(3, 2, seed=22).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: upfirdn2d(a, b, up=(2, 3), down=(2, 1), pad=(1, -1, 2, 0)), (x, k)
    )
    assert torch.autograd.gradcheck(lambda a, b: upfirdn2d_reference(a, b, up=2, pad=(2, 1)), (x, k))


# --------------------------------------------------------------------------- fused leaky ReLU


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 7), (2, 3, 4, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("slope, scale", [(0.2, math.sqrt(2.0)), (0.01, 1.0), (0.5, 3.0)])
@pytest.mark.parametrize("fn", [fused_leaky_relu, fused_leaky_relu_reference], ids=["dispatch", "reference"])
def test_fused_leaky_relu_matches_formula(fn, shape, with_bias, slope, scale):
    x = _input(shape, seed=31)
    bias = _input((shape[1],), seed=32) if with_bias else None
    out = fn(x, bias, slope, scale)
    expected = naive_fused_leaky_relu(x.numpy(), None if bias is None else bias.numpy(), slope, scale)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_fused_leaky_relu_defaults_are_stylegan2():
    x = torch.tensor([[-1.0, 0.0, 2.0]])
    expected = torch.tensor([[-0.2, 0.0, 2.0]]) * math.sqrt(2.0)
    torch.testing.assert_close(fused_leaky_relu(x), expected)


def test_fused_leaky_relu_rejects_mismatched_bias():
    with pytest.raises(ValueError, match="does not match dim 1"):
        fused_leaky_relu_reference(torch.zeros(2, 3, 4), torch.zeros(4))


def test_fused_leaky_relu_module():
    mod = FusedLeakyReLU(4, negative_slope=0.1, scale=2.0)
    assert [n for n, _ in mod.named_parameters()] == ["bias"]
    assert torch.equal(mod.bias, torch.zeros(4))
    with torch.no_grad():
        mod.bias.copy_(torch.tensor([0.5, -0.5, 1.0, -2.0]))
    x = _input((2, 4, 3, 3), seed=41, dtype=torch.float32)
    torch.testing.assert_close(mod(x), fused_leaky_relu(x, mod.bias, 0.1, 2.0), rtol=0, atol=0)
    expected = naive_fused_leaky_relu(x.double().numpy(), mod.bias.detach().double().numpy(), 0.1, 2.0)
    np.testing.assert_allclose(mod(x).detach().numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_fused_leaky_relu_dtypes_and_devices(dtype, device):
    x = _input((2, 5, 4, 4), seed=51, dtype=dtype).to(device)
    bias = _input((5,), seed=52, dtype=torch.float32).to(device)  # float32 bias, as in a model
    out = _skip_if_unsupported(lambda: fused_leaky_relu(x, bias), dtype, device)
    assert out.dtype == dtype and out.device.type == device
    ref = fused_leaky_relu_reference(x.float().cpu(), bias.cpu().to(dtype).float())
    torch.testing.assert_close(out.float().cpu(), ref, **TOLERANCES[dtype])


def test_fused_leaky_relu_gradcheck():
    x = _input((2, 3, 2, 2), seed=61).requires_grad_()
    b = _input((3,), seed=62).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, c: fused_leaky_relu(a, c), (x, b))
    mod = FusedLeakyReLU(3).double()
    out = mod(x).sum()
    out.backward()
    assert mod.bias.grad is not None and mod.bias.grad.abs().sum() > 0


# --------------------------------------------------------------------------- backend switch


@pytest.fixture
def spy_fast_paths(monkeypatch):
    """Register counting fast paths (that delegate to the reference) for both ops."""
    monkeypatch.setattr(_backend, "_fast_paths", {})
    monkeypatch.setattr(_backend, "_backend", "auto")
    calls = {"upfirdn2d": 0, "fused_leaky_relu": 0}

    def fast_upfirdn2d(x, kernel, up=1, down=1, pad=0):
        calls["upfirdn2d"] += 1
        return upfirdn2d_reference(x, kernel, up=up, down=down, pad=pad)

    def fast_flrelu(x, bias, negative_slope, scale):
        calls["fused_leaky_relu"] += 1
        return fused_leaky_relu_reference(x, bias, negative_slope, scale)

    register_fast_path("upfirdn2d", fast_upfirdn2d)
    register_fast_path("fused_leaky_relu", fast_flrelu)
    return calls


def test_backend_auto_uses_registered_fast_paths(spy_fast_paths):
    x = torch.randn(1, 2, 4, 4)
    upfirdn2d(x, torch.ones(2, 2), pad=1)
    fused_leaky_relu(x, torch.zeros(2))
    assert spy_fast_paths == {"upfirdn2d": 1, "fused_leaky_relu": 1}


def test_use_backend_reference_bypasses_fast_paths_and_restores(spy_fast_paths):
    x = torch.randn(1, 2, 4, 4)
    with use_backend("reference"):
        assert get_backend() == "reference"
        upfirdn2d(x, torch.ones(2, 2), pad=1)
        fused_leaky_relu(x, torch.zeros(2))
    assert spy_fast_paths == {"upfirdn2d": 0, "fused_leaky_relu": 0}
    assert get_backend() == "auto"
    with pytest.raises(RuntimeError), use_backend("reference"):
        raise RuntimeError("boom")
    assert get_backend() == "auto"  # restored after an exception too


def test_backend_invalid_name_lists_accepted_values(monkeypatch):
    monkeypatch.setattr(_backend, "_backend", "auto")
    for bad in ("fast", "cuda", ""):
        with pytest.raises(ValueError, match=r"auto.*reference") as info:
            set_backend(bad)
        assert repr(bad) in str(info.value)
        with pytest.raises(ValueError, match="accepted"), use_backend(bad):
            pass
    assert get_backend() == "auto"


def test_backend_from_environment(monkeypatch):
    monkeypatch.setattr(_backend, "_backend", None)
    monkeypatch.setenv("INSTYLE_OPS", " Reference ")
    assert get_backend() == "reference"
    monkeypatch.setattr(_backend, "_backend", None)
    monkeypatch.setenv("INSTYLE_OPS", "turbo")
    with pytest.raises(ValueError, match="'turbo'.*accepted: auto, reference"):
        get_backend()
