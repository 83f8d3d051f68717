"""Every fast path against the reference path it replaces (CPU, float32).

Ops are compared on random inputs of typical magnitude over sizes, kernels, up/down
factors, paddings, batch sizes and memory formats; the StyleGAN2 layers and whole
generators / pSp models are compared with ``use_backend("reference")`` vs ``"auto"``,
including gradients (the training loop back-propagates through the generator).
No timings here: speed is measured by ``benchmarks/run.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from instyle.models.stylegan2 import Generator, GeneratorConfig, ModulatedConv2d, ToRGB
from instyle.ops import _backend, fused_leaky_relu_reference, make_kernel, upfirdn2d_reference, use_backend
from instyle.ops import fast_modconv as fast
from instyle.ops.fast_act import fused_leaky_relu_fast
from instyle.ops.fast_memory import is_retaining, retained_memory
from instyle.ops.fast_upfirdn2d import upfirdn2d_fast

TOL = 1e-4
CL = torch.channels_last


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------- registry


def test_fast_paths_are_registered_and_switchable():
    with use_backend("auto"):
        assert _backend.fast_path("upfirdn2d") is upfirdn2d_fast
        assert _backend.fast_path("fused_leaky_relu") is fused_leaky_relu_fast
        assert _backend.fast_path("modulated_conv2d") is fast.modulated_conv2d_fast
        assert _backend.fast_path("to_rgb") is fast.to_rgb_fast
    with use_backend("reference"):
        for op in ("upfirdn2d", "fused_leaky_relu", "modulated_conv2d", "to_rgb"):
            assert _backend.fast_path(op) is None


def test_reference_backend_never_calls_the_fast_layers(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("fast path used under INSTYLE_OPS=reference")

    monkeypatch.setitem(_backend._fast_paths, "modulated_conv2d", boom)
    monkeypatch.setitem(_backend._fast_paths, "to_rgb", boom)
    g = Generator(GeneratorConfig(size=8, style_dim=16, n_mlp=1, channels={4: 8, 8: 8})).eval()
    with use_backend("reference"), torch.no_grad():
        g.synthesize(torch.randn(1, g.n_latent, 16))
    with use_backend("auto"), pytest.raises(AssertionError, match="fast path used"):
        g.synthesize(torch.randn(1, g.n_latent, 16))


# --------------------------------------------------------------------------- upfirdn2d

KERNELS = {"1331": [1, 3, 3, 1], "121": [1, 2, 1], "11": [1, 1], "2d": [[1.0, 2.0, 0.5], [3.0, 4.0, 1.0]]}
UPFIRDN_CASES = [
    # up, down, kernel, pad
    (1, 1, "1331", (1, 1)),  # ModulatedConv2d's blur after the transposed conv
    (2, 1, "1331", (2, 1)),  # ToRGB skip upsampling
    (1, 2, "1331", (2, 2)),  # discriminator-style downsampling
    (2, 1, "121", (1, 2)),
    (2, 2, "1331", (3, 0, 1, 2)),
    (3, 1, "11", (-1, 1)),
    ((2, 1), (1, 2), "2d", (1, 2, 0, 1)),
    (1, 1, "2d", (0, 2, 1, 0)),
    (1, 3, "121", 0),
    (2, 1, "1331", (6, 5)),  # padding wider than the kernel
    (4, 1, "11", (0, 0)),
]


@pytest.mark.parametrize("up, down, kernel, pad", UPFIRDN_CASES)
@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (2, 5, 7, 9)])
def test_upfirdn2d_matches_reference(up, down, kernel, pad, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    k = make_kernel(KERNELS[kernel]) * 4
    ref = upfirdn2d_reference(x, k, up=up, down=down, pad=pad)
    assert max_diff(upfirdn2d_fast(x, k, up=up, down=down, pad=pad), ref) < 1e-5
    out_cl = upfirdn2d_fast(x.contiguous(memory_format=CL), k, up=up, down=down, pad=pad)
    assert max_diff(out_cl, ref) < 1e-5


def test_upfirdn2d_gradients_match_reference():
    torch.manual_seed(0)
    k = make_kernel([1, 3, 3, 1]) * 4
    g = torch.randn(2, 4, 12, 12)
    grads = []
    for fn in (upfirdn2d_reference, upfirdn2d_fast):
        x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
        (fn(x, k, up=2, pad=(2, 1)) * g).sum().backward()
        grads.append(x.grad)
    assert max_diff(*grads) < 1e-5


def test_upfirdn2d_dispatches_to_the_fast_path():
    from instyle.ops import upfirdn2d

    x = torch.randn(1, 2, 5, 5)
    k = make_kernel([1, 3, 3, 1])
    with use_backend("auto"):
        assert max_diff(upfirdn2d(x, k, up=2, pad=(2, 1)), upfirdn2d_reference(x, k, up=2, pad=(2, 1))) < 1e-5


# --------------------------------------------------------------------------- fused leaky ReLU


@pytest.mark.parametrize("shape", [(3, 7), (2, 6, 5, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_leaky_relu_matches_reference(shape, with_bias):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    bias = torch.randn(shape[1], requires_grad=True) if with_bias else None
    ref = fused_leaky_relu_reference(x, bias)
    out = fused_leaky_relu_fast(x, bias)
    assert max_diff(out, ref) < 1e-5
    g = torch.randn(shape)
    inputs = [x] + ([bias] if with_bias else [])
    ga = torch.autograd.grad((ref * g).sum(), inputs)
    gb = torch.autograd.grad((out * g).sum(), inputs)
    for a, b in zip(ga, gb):
        assert max_diff(a, b) < 1e-5


def test_fused_leaky_relu_keeps_channels_last_and_rejects_bad_bias():
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=CL)
    assert fused_leaky_relu_fast(x, torch.zeros(4)).is_contiguous(memory_format=CL)
    with pytest.raises(ValueError, match="does not match dim 1"):
        fused_leaky_relu_fast(x, torch.zeros(3))


# --------------------------------------------------------------------------- StyleGAN2 layers


def both_backends(fn):
    with use_backend("reference"):
        ref = fn()
    with use_backend("auto"):
        out = fn()
    return ref, out


@pytest.mark.parametrize(
    "batch, k, upsample, demodulate",
    [(1, 3, False, True), (3, 3, False, True), (1, 3, True, True), (2, 3, True, True), (2, 1, False, False),
     (1, 1, False, False), (2, 3, False, False)],
)
def test_modulated_conv_matches_reference(batch, k, upsample, demodulate):
    torch.manual_seed(0)
    layer = ModulatedConv2d(12, 10, k, 16, demodulate=demodulate, upsample=upsample).eval()
    with torch.no_grad():
        layer.modulation.bias.add_(torch.randn(12) * 0.3)
    x = torch.randn(batch, 12, 8, 8)
    style = torch.randn(batch, 16)
    with torch.no_grad():
        ref, out = both_backends(lambda: layer(x, style))
    assert out.shape == ref.shape == (batch, 10, 16 if upsample else 8, 16 if upsample else 8)
    assert max_diff(out, ref) < TOL * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("batch, upsample", [(1, True), (3, False)])
def test_modulated_conv_gradients_match_reference(batch, upsample):
    torch.manual_seed(0)
    layer = ModulatedConv2d(6, 5, 3, 8, upsample=upsample)
    x0 = torch.randn(batch, 6, 6, 6)
    s0 = torch.randn(batch, 8)
    g = torch.randn(batch, 5, 12 if upsample else 6, 12 if upsample else 6)

    def grads():
        x, s = x0.clone().requires_grad_(), s0.clone().requires_grad_()
        (layer(x, s) * g).sum().backward()
        out = [x.grad, s.grad, layer.weight.grad.clone(), layer.modulation.weight.grad.clone()]
        layer.zero_grad()
        return out

    for a, b in zip(*both_backends(grads)):
        assert max_diff(a, b) < 1e-4 * max(1.0, a.abs().max().item())


def test_fast_modulated_conv_follows_in_place_weight_updates():
    torch.manual_seed(0)
    layer = ModulatedConv2d(4, 4, 3, 8).eval()
    x, s = torch.randn(1, 4, 5, 5), torch.randn(2, 8)
    with torch.no_grad():
        layer(x, s[:1])  # nothing may be kept from this call
        layer.weight.mul_(torch.rand_like(layer.weight) + 0.5)  # an optimizer-style in-place update
        ref, out = both_backends(lambda: layer(torch.cat([x, x]), s))
    assert max_diff(out, ref) < 1e-5


@pytest.mark.parametrize("batch, with_skip, clamp", [(1, True, None), (2, True, None), (2, False, None), (1, True, 0.5)])
def test_to_rgb_matches_reference(batch, with_skip, clamp):
    torch.manual_seed(0)
    layer = ToRGB(8, 16, upsample=with_skip, conv_clamp=clamp).eval()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(batch, 8, 8, 8)
    style = torch.randn(batch, 16)
    skip = torch.randn(batch, 3, 4, 4) if with_skip else None
    with torch.no_grad():
        ref, out = both_backends(lambda: layer(x, style, skip))
        with use_backend("auto"):
            out_cl = layer(x.contiguous(memory_format=CL), style, skip)
    assert out.is_contiguous()
    assert max_diff(out, ref) < 1e-5
    assert max_diff(out_cl, ref) < 1e-5


# --------------------------------------------------------------------------- whole models


def small_generator(size: int, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    widths = {4: 32, 8: 32, 16: 24, 32: 16, 64: 16, 128: 8}
    g = Generator(GeneratorConfig(size=size, style_dim=32, n_mlp=2, channels={r: widths[r] for r in widths if r <= size}))
    return g.eval()


def random_w_plus(g: Generator, batch: int) -> torch.Tensor:
    """W+ codes from the mapping network: ``[batch, n_latent, style_dim]``."""
    with torch.no_grad():
        return g.style(torch.randn(batch * g.n_latent, g.style_dim)).view(batch, g.n_latent, g.style_dim)


@pytest.mark.parametrize("size, batch", [(16, 1), (64, 1), (64, 3), (128, 2)])
def test_generator_matches_reference(size, batch, monkeypatch):
    # Channels-last from 16x16 up so that the small maps exercise that branch too.
    monkeypatch.setattr(fast, "CHANNELS_LAST_MIN_PIXELS", 16 * 16)
    g = small_generator(size)
    torch.manual_seed(1)
    w = random_w_plus(g, batch)
    with torch.no_grad():
        ref, out = both_backends(lambda: g.synthesize(w))
    assert out.is_contiguous()
    assert ref.abs().max() > 0.1  # a real signal, not a vanishing one
    assert max_diff(out, ref) < TOL


def test_generator_with_random_noise_and_mixing_matches_reference():
    g = small_generator(32)
    z = [torch.randn(2, 32), torch.randn(2, 32)]
    noise = [torch.randn(2, 1, n.shape[-1], n.shape[-1]) for n in g.fixed_noise()]
    with torch.no_grad():
        ref, out = both_backends(lambda: g(z, noise=noise, inject_index=3, truncation=0.7,
                                           truncation_latent=g.mean_latent(64))[0])
    assert max_diff(out, ref) < TOL


def test_published_width_generator_matches_reference():
    """config-f channel widths (512 at low resolution), 32 px to keep it quick."""
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(size=32)).eval()
    w = random_w_plus(g, 2)
    with torch.no_grad():
        ref, out = both_backends(lambda: g.synthesize(w))
    assert max_diff(out, ref) < TOL


def test_generator_gradients_match_reference():
    g = small_generator(32)
    w0 = random_w_plus(g, 2)
    target = torch.randn(2, 3, 32, 32)

    def grad():
        w = w0.clone().requires_grad_()
        ((g.synthesize(w) - target) ** 2).mean().backward()
        return w.grad

    ref, out = both_backends(grad)
    assert max_diff(out, ref) < 1e-5 + 1e-4 * ref.abs().max().item()


def test_psp_encode_decode_matches_reference(tiny_psp):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64).clamp(-1, 1)
    with torch.no_grad():
        ref, out = both_backends(lambda: tiny_psp(x, randomize_noise=False, resize=False))
    assert max_diff(out, ref) < TOL


# --------------------------------------------------------------------------- allocator


def test_retained_memory_restores_the_previous_setting():
    before = is_retaining()
    with retained_memory(True) as applied:
        if not applied:
            pytest.skip("glibc malloc tuning is unavailable here (or INSTYLE_MALLOC=default)")
        assert is_retaining()
    assert is_retaining() == before


RETENTION_SCRIPT = """
import os, sys
import torch
from instyle.ops.fast_memory import retained_memory

def resident_after_free():
    x = torch.ones(32 << 20)  # 128 MiB: above glibc's mmap threshold
    x.add_(1)
    del x
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

released = resident_after_free()
with retained_memory(True) as applied:
    kept = resident_after_free()
print(applied, kept - released)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident size from /proc (Linux)")
def test_retained_memory_keeps_freed_pages_in_the_process():
    """Observed in a fresh process: a freed 128 MiB tensor leaves the resident size only
    while retention is on (glibc returns it to the kernel by default)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    env.pop("INSTYLE_MALLOC", None)
    out = subprocess.run([sys.executable, "-c", RETENTION_SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, grown = out.stdout.split()
    if applied != "True":
        pytest.skip("glibc malloc tuning is unavailable here")
    assert int(grown) > 100 << 20


def test_large_maps_go_channels_last_small_maps_stay_nchw(monkeypatch):
    monkeypatch.setattr(fast, "CHANNELS_LAST_MIN_PIXELS", 8 * 8)
    layer = ModulatedConv2d(4, 4, 3, 8).eval()
    with torch.no_grad(), use_backend("auto"):
        big = layer(torch.randn(1, 4, 8, 8), torch.randn(1, 8))
        small = layer(torch.randn(1, 4, 4, 4), torch.randn(1, 8))
    assert big.is_contiguous(memory_format=CL)
    assert small.is_contiguous()
