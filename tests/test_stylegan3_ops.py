"""StyleGAN3's filtered_lrelu: reference vs fast path vs an independent float64 formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instyle.ops import filtered_lrelu, filtered_lrelu_reference, use_backend
from instyle.ops.fast_filtered_lrelu import filtered_lrelu_fast

convolve2d = pytest.importorskip("scipy.signal").convolve2d  # the dev extra


def formula64(x, fu, fd, b, up, down, pad, gain, slope, clamp):
    """Direct float64 definition: zero insertion, pad/crop, full 2-D convolutions (numpy/scipy)."""
    x = x.double().numpy()
    x0, x1, y0, y1 = pad

    def as2d(f):
        if f is None:
            return np.ones((1, 1))
        f = f.double().numpy()
        return np.outer(f, f) if f.ndim == 1 else f

    ku, kd = as2d(fu) * up * up, as2d(fd)
    n, c, h, w = x.shape
    out = []
    for i in range(n):
        chans = []
        for j in range(c):
            v = x[i, j] + (0 if b is None else float(b[j]))
            z = np.zeros((h * up, w * up))
            z[::up, ::up] = v
            z = np.pad(z, ((max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
            z = z[max(-y0, 0): z.shape[0] - max(-y1, 0), max(-x0, 0): z.shape[1] - max(-x1, 0)]
            z = convolve2d(z, ku, mode="valid")
            z = np.where(z >= 0, z, z * slope) * gain
            if clamp is not None:
                z = np.clip(z, -clamp, clamp)
            z = convolve2d(z, kd, mode="valid")[::down, ::down]
            chans.append(z)
        out.append(np.stack(chans))
    return torch.from_numpy(np.stack(out))


CASES = [  # (up, down, pad, fu taps, fd taps or (k, k) for a 2-D radial filter, slope, gain, clamp)
    (2, 2, (5, 6, 5, 6), 12, (12, 12), 0.2, 2**0.5, 256.0),  # R layer, radial down filter
    (4, 2, (13, 14, 13, 14), 24, 12, 0.2, 2**0.5, 256.0),  # T layer: sampling rate doubles
    (2, 2, (-3, -2, -3, -2), 4, 4, 0.2, 2**0.5, 0.5),  # cropping + clamp active
    (1, 1, 0, None, None, 1.0, 1.0, 256.0),  # ToRGB: bias + clamp only
    (2, 1, (1, 2, 0, 1), 6, None, 0.2, 1.3, None),
    (1, 3, (2, 2, 1, 1), None, (5, 4), 0.1, 2**0.5, None),
]


def _filters(spec, gen):
    if spec is None:
        return None
    f = torch.rand(spec, generator=gen, dtype=torch.float64) + 0.1  # [k] separable or (kh, kw)
    return (f / f.sum()).float()


@pytest.mark.parametrize("case", CASES, ids=[f"up{c[0]}down{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_reference_and_fast_match_float64_formula(case):
    up, down, pad, fu_spec, fd_spec, slope, gain, clamp = case
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 11, 13, generator=gen) * 2
    b = torch.randn(3, generator=gen)
    fu, fd = _filters(fu_spec, gen), _filters(fd_spec, gen)
    pad4 = pad if isinstance(pad, tuple) else (pad,) * 4
    want = formula64(x, fu, fd, b, up, down, pad4, gain, slope, clamp)
    ref = filtered_lrelu_reference(x, fu, fd, b, up, down, pad, gain, slope, clamp)
    fast = filtered_lrelu_fast(x, fu, fd, b, up, down, pad, gain, slope, clamp)
    assert ref.shape == want.shape == fast.shape
    torch.testing.assert_close(ref.double(), want, atol=2e-5, rtol=0)
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=0)
    # the float64 reference agrees with the formula to float64 rounding
    fu64, fd64 = (None if f is None else f.double() for f in (fu, fd))
    ref64 = filtered_lrelu_reference(x.double(), fu64, fd64, b.double(), up, down, pad, gain, slope, clamp)
    torch.testing.assert_close(ref64, want, atol=1e-10, rtol=0)


def test_dispatch_uses_the_backend():
    x = torch.randn(1, 2, 8, 8)
    f = torch.ones(4) / 4
    with use_backend("reference"):
        a = filtered_lrelu(x, f, f, None, 2, 2, (2, 1, 2, 1))
    with use_backend("auto"):
        c = filtered_lrelu(x, f, f, None, 2, 2, (2, 1, 2, 1))
    torch.testing.assert_close(a, c, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [dict(up=0), dict(down=1.5), dict(b=torch.zeros(5)), dict(padding=(1, 2, 3)), dict(padding=-20)],
)
def test_bad_arguments_are_named(kwargs):
    with pytest.raises(ValueError):
        filtered_lrelu_reference(torch.zeros(1, 2, 8, 8), **kwargs)


def test_fast_path_leaves_its_input_alone_and_has_the_reference_gradient():
    x = torch.randn(1, 2, 6, 6) * 300
    before = x.clone()
    out = filtered_lrelu_fast(x, None, None, None, 1, 1, 0, 1.0, 1.0, 256.0)  # ToRGB without bias: clamp only
    assert torch.equal(x, before) and out.abs().max() <= 256
    f = torch.tensor([0.25, 0.5, 0.25])
    grads = []
    for fn in (filtered_lrelu_reference, filtered_lrelu_fast):
        xi = (before / 100).requires_grad_()
        b = torch.zeros(2, requires_grad=True)
        fn(xi, f, f, b, 2, 2, (1, 2, 1, 2), 2**0.5, 0.2, 1.0).square().sum().backward()
        grads.append((xi.grad, b.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-5, rtol=0)
