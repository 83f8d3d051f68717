"""Pixel metrics of reconstructions: MSE, PSNR, SSIM.

Convention: images are float tensors ``[B, C, H, W]`` (or one image ``[C, H, W]``) whose
values span ``data_range``. The default ``data_range=2.0`` is for pSp's ``[-1, 1]`` images;
pass ``data_range=1.0`` for ``[0, 1]`` or ``255.0`` for 8-bit values. PSNR and SSIM are
invariant to that choice when ``data_range`` matches the values (``[-1, 1]`` with 2 equals
``[0, 1]`` with 1). MSE is not: the paper's Table 1 reports MSE on ``[-1, 1]`` images (the
original ``calc_losses_on_images.py``), which is what :func:`mse` gives by default.

Batched inputs give one value per image (``[B]``, float64); a single image gives a 0-d tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mse", "psnr", "ssim", "gaussian_window"]


def _pair(a: torch.Tensor, b: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor, bool]:
    if a.shape != b.shape:
        raise ValueError(f"{name}: images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    single = a.ndim == 3
    if single:
        a, b = a[None], b[None]
    if a.ndim != 4:
        raise ValueError(f"{name}: expected images [B, C, H, W] or [C, H, W], got {tuple(a.shape)}")
    return a.double(), b.double(), single


def _out(v: torch.Tensor, single: bool) -> torch.Tensor:
    return v[0] if single else v


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: ``mean((a - b)**2)`` over C, H, W."""
    a, b, single = _pair(a, b, "mse")
    return _out(((a - b) ** 2).flatten(1).mean(1), single)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: ``10·log10(data_range² / MSE)``
    (``inf`` for identical images)."""
    if not data_range > 0:
        raise ValueError(f"data_range={data_range} must be > 0")
    m = mse(a, b)
    return 10.0 * torch.log10(data_range**2 / m)  # 1/0 -> inf, as intended


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian ``[size]`` (float64), the SSIM paper's window."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float = 2.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image.

    Local statistics with an ``window_size`` x ``window_size`` Gaussian window (σ = 1.5),
    "valid" filtering (no padding), ``C1 = (k1·L)²``, ``C2 = (k2·L)²`` with ``L = data_range``;
    the SSIM map is averaged over channels and positions. Images smaller than the window
    use the largest odd window that fits. Identical images give exactly 1. Computed in
    float64 for float64 inputs, otherwise in float32.
    """
    if not data_range > 0:
        raise ValueError(f"data_range={data_range} must be > 0")
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32  # float64 convolutions are slow on CPU
    a, b, single = _pair(a, b, "ssim")
    a, b = a.to(dtype), b.to(dtype)
    c = a.shape[1]
    size = min(window_size, a.shape[-1], a.shape[-2])
    size -= 1 - size % 2  # keep it odd
    g = gaussian_window(size, sigma).to(a.device, dtype)
    kh = g.view(1, 1, size, 1).repeat(c, 1, 1, 1)
    kw = g.view(1, 1, 1, size).repeat(c, 1, 1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return _out((num / den).double().flatten(1).mean(1), single)

