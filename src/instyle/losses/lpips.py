"""LPIPS perceptual distance through the PyPI ``lpips`` package.

The linear calibration layers are the v0.1 weights shipped inside the package
(byte-identical to the file the original pSp downloads). The backbone (AlexNet or
VGG16 features) is built with ``pnet_rand=True`` -- so ``lpips`` never downloads
anything -- and then loaded explicitly from a file: a state dict with the
``features.*`` entries of torchvision's model (``alexnet-owt-7be5be79.pth``,
``vgg16-397923af.pth`` or just those entries), given by path or found in
torchvision's hub cache.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from instyle.errors import MissingExtraError
from instyle.losses.crop import face_crop
from instyle.losses.weights import LossWeightsError, find_weights, read_state_dict
from instyle.utils.config import ConfigError

__all__ = ["LPIPS_NETS", "LPIPSLoss", "lpips_backbone_state"]

#: Per backbone: which ``features`` indices each of the 5 LPIPS slices holds and the
#: file names of torchvision's ImageNet weights.
LPIPS_NETS: dict[str, dict] = {
    "alex": {
        "slices": ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)),
        "hub_names": ("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth"),
        "torchvision": "torchvision.models.alexnet(weights='IMAGENET1K_V1')",
    },
    "vgg": {
        "slices": ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),
        "hub_names": ("vgg16-397923af.pth",),
        "torchvision": "torchvision.models.vgg16(weights='IMAGENET1K_V1')",
    },
}


def lpips_backbone_state(features: dict[str, torch.Tensor], net: str, source: object = "weights") -> dict:
    """Rename torchvision ``features.{i}.*`` entries to the ``lpips`` package's
    ``slice{s}.{i}.*`` names. Entries outside ``features`` (the classifier) are ignored;
    keys without the ``features.`` prefix (a saved ``model.features``) are accepted too."""
    slices = LPIPS_NETS[net]["slices"]
    out = {}
    for key, value in features.items():
        name = key[len("features.") :] if key.startswith("features.") else key
        head, _, leaf = name.partition(".")
        if not head.isdigit() or key.startswith("classifier."):
            continue
        i = int(head)
        s = next((n for n, (a, b) in enumerate(slices, start=1) if a <= i < b), None)
        if s is not None:
            out[f"slice{s}.{i}.{leaf}"] = value
    if not out:
        raise LossWeightsError(f"{source}: no torchvision '{net}' features.* entries found in this file")
    return out


class LPIPSLoss(nn.Module):
    """LPIPS distance, averaged over the batch (the original's ``sum / N``).

    Args:
        net: ``"alex"`` (pSp's choice) or ``"vgg"``.
        weights: file with the backbone's ``features.*`` weights; None looks in
            torchvision's hub cache.
        random_backbone: keep a randomly initialised backbone instead (tests only:
            the distance is then not perceptually meaningful).
        hint: how the caller's user gives the weights (e.g. a command's flags), said when
            they are missing.

    ``forward(y_hat, y)``: images ``[B, 3, H, W]`` in [-1, 1] (H, W >= 32; 256 in pSp)
    -> 0-d tensor. Gradients flow into the inputs only; every weight is frozen.
    """

    def __init__(
        self, net: str = "alex", weights: str | os.PathLike | None = None, random_backbone: bool = False, hint: str | None = None
    ):
        super().__init__()
        if net not in LPIPS_NETS:
            raise ConfigError(f"lpips net={net!r} is not supported; choose one of {sorted(LPIPS_NETS)}")
        try:
            import lpips
        except ImportError:
            raise MissingExtraError("the LPIPS loss needs the 'lpips' package: pip install 'instyle[train]'") from None
        self.net = net
        path = None
        if not random_backbone:  # find the file first: a missing file fails fast
            info = LPIPS_NETS[net]
            path = find_weights(
                weights,
                info["hub_names"],
                f"LPIPS {net} backbone",
                f"Give the ImageNet weights of torchvision's {net} (e.g. the file {info['hub_names'][0]} that "
                f"{info['torchvision']} downloads into torch.hub.get_dir()/checkpoints, or a state dict with its "
                "features.* entries): "
                + (hint or "`instyle train --set lpips_weights=PATH`, `instyle evaluate --lpips-weights PATH`, "
                   "or LPIPSLoss(weights=PATH)."),
            )
            state = lpips_backbone_state(read_state_dict(path, f"LPIPS {net}"), net, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notes about `pretrained`
            self.model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        if path is not None:
            missing, _ = self.model.net.load_state_dict(state, strict=False)
            if missing:
                raise LossWeightsError(f"{path}: {len(missing)} backbone tensors missing, e.g. {missing[:3]}")
        self.model.eval()
        self.model.requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPSLoss:
        # The perceptual network always runs in eval mode (dropout off).
        super().train(mode)
        self.model.eval()
        return self

    def per_sample(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[B]`` distances."""
        if y_hat.shape != y.shape or y_hat.ndim != 4 or y_hat.shape[1] != 3:
            raise ValueError(f"LPIPS expects two [B, 3, H, W] batches, got {tuple(y_hat.shape)} and {tuple(y.shape)}")
        return self.model(y_hat, y, normalize=False).flatten()

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor, crop: bool = False) -> torch.Tensor:
        """Batch mean of LPIPS; ``crop=True`` compares the inner-face windows (256x256 only)."""
        if crop:
            y_hat, y = face_crop(y_hat), face_crop(y)
        return self.per_sample(y_hat, y).mean()
