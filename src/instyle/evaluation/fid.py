"""Fréchet Inception Distance, only with Inception weights the user provides.

Nothing is downloaded. :class:`InceptionFeatures` loads torchvision's Inception-v3 state
dict (the file ``inception_v3_google-0cc3c7bd.pth`` that
``torchvision.models.inception_v3(weights="IMAGENET1K_V1")`` stores in its hub cache) and
takes the 2048-D pool features of 299x299 inputs. These are not the TensorFlow FID weights
used by most papers, so values are comparable between instyle runs with the same file, not
with published FIDs; the report names the file. With few images (< 2048) the covariance is
rank-deficient and the FID is biased upwards.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from instyle.interop.loading import load_state_checked
from instyle.losses.weights import find_weights, read_state_dict

__all__ = ["FID_HELP", "InceptionFeatures", "frechet_distance", "feature_stats"]

FID_HELP = (
    "FID needs Inception-v3 weights: give torchvision's 'inception_v3_google-0cc3c7bd.pth' "
    "(what torchvision.models.inception_v3(weights='IMAGENET1K_V1') downloads into torch.hub.get_dir()/checkpoints) "
    "with --inception-weights PATH. Nothing is downloaded automatically."
)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, D]`` features -> mean ``[D]`` and covariance ``[D, D]`` (float64, unbiased)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"FID statistics need features [N >= 2, D], got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½)`` between two Gaussians."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError("the two feature statistics differ in dimension")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular products are handled below
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        # Singular product (few samples): regularise as the reference implementation does.
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


#: Below this many images FID is strongly biased upwards (its estimate of the 2048x2048
#: covariance is poor); published FIDs use 50,000 generated or all test images.
FID_MIN_COMPARABLE = 2000


def fid_caveat(n_images: int) -> str | None:
    """The warning to print beside an FID computed over ``n_images``, or None."""
    if n_images >= FID_MIN_COMPARABLE:
        return None
    return (
        f"FID over only {n_images} images is NOT comparable to published values (biased upwards below "
        f"~{FID_MIN_COMPARABLE:,} images; papers use 50,000 or the whole test set); compare it only with FIDs "
        "computed over the same images"
    )


class InceptionFeatures(torch.nn.Module):
    """torchvision Inception-v3 from a weights file -> ``[B, 2048]`` pool features.

    ``forward(images [B, 3, H, W] in [-1, 1])``: resized to 299 (bilinear), ImageNet-normalised.
    """

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        from torchvision.models import inception_v3

        path = find_weights(weights, (), "Inception-v3", FID_HELP)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
        load_state_checked(net, read_state_dict(path, "Inception-v3"), path)
        net.fc = torch.nn.Identity()
        self.net = net.eval().requires_grad_(False)
        self.weights = str(path)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float().clamp(-1, 1) + 1) / 2
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        return self.net(x)
