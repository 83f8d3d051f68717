"""Identity loss: cosine distance of ArcFace (IR-SE-50) face embeddings.

As the original: the 188x188 inner-face window ``[35:223, 32:220]`` of a 256x256
image is average-pooled to 112x112 (no other normalisation: images stay in
[-1, 1]) and embedded by the ArcFace network in eval mode; embeddings are
l2-normalised. The weights are the official ``model_ir_se50.pth`` (a plain state
dict of ``Backbone(112, 50, 'ir_se')``), given by path.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from instyle.interop.loading import cache_dir, load_state_checked
from instyle.losses.crop import face_crop
from instyle.losses.similarity import SimilarityOutput, similarity_terms
from instyle.losses.weights import LossWeightsError, find_weights, read_state_dict
from instyle.models.encoders import Backbone
from instyle.utils.config import ConfigError

__all__ = ["IR_SE50_HELP", "IDLoss", "read_ir_se50", "fill_num_batches_tracked"]

IR_SE50_HELP = (
    "The identity loss and the encoder initialisation need the ArcFace IR-SE-50 weights "
    "'model_ir_se50.pth' (linked from the pixel2style2pixel README, 'Pretrained Models' -> 'IR-SE50 Model'); "
    "give them with --id-weights PATH (config key ir_se50_weights)."
)


def fill_num_batches_tracked(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the ``num_batches_tracked`` counters a file may lack (PyTorch's own rule)."""
    out = dict(state)
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = torch.zeros_like(value)
    return out


def read_ir_se50(path: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    """The state dict of ``model_ir_se50.pth``.

    Without a path, ``model_ir_se50.pth`` in instyle's cache folder (``$INSTYLE_CACHE``,
    default ``~/.cache/instyle``) is used if present. Raises :class:`LossWeightsError`
    with instructions when there is no file.
    """
    if path is None:
        cached = cache_dir() / "model_ir_se50.pth"
        if not cached.is_file():
            raise LossWeightsError(f"no ArcFace IR-SE-50 weights given and none in {cached}. {IR_SE50_HELP}")
        path = cached
    return read_state_dict(find_weights(path, (), "ArcFace IR-SE-50", IR_SE50_HELP), "ArcFace IR-SE-50")


class IDLoss(nn.Module):
    """ArcFace identity loss of pSp.

    Args:
        weights: path of ``model_ir_se50.pth``.
        random_init: build the network with random weights instead (tests only).

    ``forward(y_hat, y, x)``: output, target and input images ``[B, 3, 256, 256]`` in
    [-1, 1] (``y_hat`` unclamped) -> :class:`SimilarityOutput`. Gradients flow into
    ``y_hat`` only; embeddings of ``y`` and ``x`` are computed without autograd.
    """

    def __init__(self, weights: str | os.PathLike | None = None, random_init: bool = False):
        super().__init__()
        self.facenet = Backbone(input_size=112, num_layers=50, mode="ir_se", drop_ratio=0.6, affine=True)
        if not random_init:
            state = read_ir_se50(weights)
            try:
                load_state_checked(self.facenet, fill_num_batches_tracked(self.facenet, state), weights)
            except ValueError as e:
                raise LossWeightsError(f"{e}. {IR_SE50_HELP}") from None
        self.face_pool = nn.AdaptiveAvgPool2d((112, 112))
        self.facenet.eval()
        self.facenet.requires_grad_(False)

    def train(self, mode: bool = True) -> IDLoss:
        # ArcFace always runs in eval mode (BatchNorm running stats, dropout off).
        super().train(mode)
        self.facenet.eval()
        return self

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 256, 256] -> [B, 3, 112, 112]``: the network input."""
        return self.face_pool(face_crop(images))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 256, 256] -> [B, 512]`` l2-normalised ArcFace embeddings."""
        return self.facenet(self.pooled(images))

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> SimilarityOutput:
        if x.shape[1] != 3:
            raise ConfigError(
                f"the identity loss compares the input x with the output, so x must be an RGB image; got "
                f"{x.shape[1]} channels (set id_lambda=0 for label-map or sketch inputs)"
            )
        with torch.no_grad():
            e_x = self.embed(x)
            e_y = self.embed(y)
        return similarity_terms(self.embed(y_hat), e_y, e_x)
