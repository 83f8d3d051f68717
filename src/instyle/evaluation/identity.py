"""Identity similarity between face images (prediction vs target).

Two measuring networks:

* :class:`DlibIdentity` (default, offline): cosine similarity of dlib's 128-D face
  descriptors (``dlib_face_recognition_resnet_model_v1.dat`` from ``face-recognition-models``).
  The face is located once, on the *target*: with ``face_box="aligned"`` the known box of an
  FFHQ/CelebA-HQ-aligned crop is used without any detection, with ``"detect"`` dlib's detector
  runs on the target; the prediction is measured in the same box. 68 landmarks are then
  fitted in that box on each image and dlib aligns its own 150x150 chip. dlib's detector
  also runs on each prediction: an output without a detectable face gets no value
  (:data:`NO_FACE_IN_OUTPUT`) -- in the aligned box a random texture scores 0.83-0.87, inside
  the range of two different people, so a number there would describe a non-face.

* :class:`ArcFaceIdentity`: an ArcFace / CurricularFace IR(-SE) network from a weights file
  (e.g. ``model_ir_se50.pth`` or ``CurricularFace_Backbone.pth``), the paper's protocol:
  MTCNN (``facenet-pytorch``, which ships its weights) finds 5 landmarks on each image, each
  is warped to the standard 112x112 ArcFace template with its own similarity transform and
  embedded; a pair where either image has no face gets no value, as pSp's
  ``scripts/calc_id_loss_parallel.py`` skips it. Without ``facenet-pytorch`` the pSp
  training crop (``[35:223, 32:220]`` of 256 px, pooled to 112) is used instead, no face
  check is possible, and :attr:`name` says so.

Both return cosine similarities in [-1, 1] (1 = same embedding); :meth:`scores` also says
why a pair has none.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from instyle.alignment import detect_faces
from instyle.alignment.models import AlignmentUnavailable, model_path, require_dlib, shape_predictor
from instyle.errors import InstyleError
from instyle.inference.io import pil_to_tensor
from instyle.interop.loading import load_state_checked
from instyle.losses.identity import fill_num_batches_tracked
from instyle.losses.weights import find_weights, read_state_dict
from instyle.models.encoders import Backbone
from instyle.models.encoders.backbone import UNITS
from instyle.utils.config import ConfigError

__all__ = [
    "ALIGNED_FACE_BOX",
    "ARCFACE_TEMPLATE_112",
    "ArcFaceIdentity",
    "DlibIdentity",
    "IdentityScore",
    "IdentityUnavailable",
    "NO_FACE_IN_OUTPUT",
    "NO_FACE_IN_TARGET",
    "build_identity",
    "cosine",
    "roc_auc",
]

#: Face box ``(left, top, right, bottom)`` as fractions of the side of an FFHQ- or
#: CelebA-HQ-aligned square crop: the median dlib HOG detection over such crops (72 faces,
#: spread < 0.04 of the side).
ALIGNED_FACE_BOX = (0.18, 0.316, 0.785, 0.922)

#: InsightFace's 5-point template for 112x112 ArcFace inputs: eyes, nose tip, mouth corners.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)

DLIB_DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"

#: Why a pair has no identity value (the report counts each and excludes the pair).
NO_FACE_IN_TARGET = "no face in target"
NO_FACE_IN_OUTPUT = "no face in output"


@dataclass(frozen=True)
class IdentityScore:
    """One pair's similarity, or ``value=None`` with the reason in ``missing``."""

    value: float | None
    missing: str | None = None


class IdentityUnavailable(InstyleError, RuntimeError):
    """The identity network cannot be used here (missing package or weights); the message says why."""


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (probability that a positive outscores a negative; ties 1/2)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        raise ValueError("roc_auc needs at least one positive and one negative")
    greater = (pos[:, None] > neg[None]).sum()
    ties = (pos[:, None] == neg[None]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


# --------------------------------------------------------------------------- dlib


@functools.cache
def _dlib_descriptor_net():
    try:
        return require_dlib().face_recognition_model_v1(str(model_path(DLIB_DESCRIPTOR)))
    except AlignmentUnavailable as e:
        raise IdentityUnavailable(str(e)) from None


class DlibIdentity:
    """dlib 128-D descriptor similarity.

    Args:
        face_box: ``"aligned"`` (known box of an aligned crop, no detection), ``"detect"``
            (dlib detector on the target; pairs without a detected face get ``None``), or a
            fixed box ``(left, top, right, bottom)`` in fractions of the image side.
        detector: dlib detector for ``"detect"``: ``auto``, ``hog`` or ``cnn``.
        detect_max_side: detection runs on a copy at most this large (speed; landmarks and
            descriptors always use the full image).
        check_output: run the detector on each prediction too; one without a face gets no
            value (:data:`NO_FACE_IN_OUTPUT`) instead of a score of a non-face.
    """

    def __init__(
        self,
        face_box: str | tuple[float, float, float, float] = "aligned",
        detector: str = "auto",
        detect_max_side: int = 512,
        check_output: bool = True,
    ):
        if isinstance(face_box, str) and face_box not in ("aligned", "detect"):
            raise ConfigError(f"face_box={face_box!r}; choose 'aligned', 'detect' or a (left, top, right, bottom) box")
        self.face_box = face_box
        self.detector = detector
        self.detect_max_side = detect_max_side
        self.check_output = check_output
        self._net = _dlib_descriptor_net()

    @property
    def name(self) -> str:
        box = self.face_box if isinstance(self.face_box, str) else "fixed"
        check = f"outputs without a face ({self.detector} detector) excluded" if self.check_output else "outputs not checked for a face"
        return f"dlib ResNet 128-D face descriptor (face-recognition-models), cosine similarity, face box: {box}, {check}"

    def detect(self, image: Image.Image) -> tuple[float, float, float, float] | None:
        """The box of the largest face dlib's detector finds in ``image`` (pixels), or None."""
        # "auto": HOG (upsampled once), then the CNN at its own scale -- evaluation photos
        # show large faces, and the CNN is ~5x slower when upsampled.
        tries = [("hog", 1), ("cnn", 0)] if self.detector == "auto" else [(self.detector, 1)]
        for kind, upsample in tries:
            found = detect_faces(image, detector=kind, upsample=upsample, max_side=self.detect_max_side)
            if found:
                return found[0].box
        return None

    def find_box(self, image: Image.Image) -> tuple[float, float, float, float] | None:
        """The face box ``(left, top, right, bottom)`` in pixels of ``image``, or None."""
        w, h = image.size
        if self.face_box == "detect":
            return self.detect(image)
        fr = ALIGNED_FACE_BOX if self.face_box == "aligned" else self.face_box
        return (fr[0] * w, fr[1] * h, fr[2] * w, fr[3] * h)

    def descriptor(self, image: Image.Image, box: tuple[float, float, float, float]) -> np.ndarray:
        """``[128]`` float64 descriptor of the face in ``box`` (pixels)."""

        dlib = require_dlib()
        arr = _rgb_array(image)
        rect = dlib.rectangle(*(int(round(v)) for v in box))
        shape = shape_predictor()(arr, rect)
        return np.asarray(self._net.compute_face_descriptor(arr, shape), dtype=np.float64)

    def scores(self, predictions: Sequence[Image.Image], targets: Sequence[Image.Image]) -> list[IdentityScore]:
        """Per pair: cosine similarity of descriptors, or no value and why (no face box on the
        target, or no face detected in the prediction)."""
        out: list[IdentityScore] = []
        for pred, target in zip(predictions, targets, strict=True):
            box = self.find_box(target)
            if box is None:
                out.append(IdentityScore(None, NO_FACE_IN_TARGET))
                continue
            if pred.size != target.size:
                pred = pred.resize(target.size, Image.Resampling.BICUBIC)
            if self.check_output and self.detect(pred) is None:
                out.append(IdentityScore(None, NO_FACE_IN_OUTPUT))
                continue
            out.append(IdentityScore(cosine(self.descriptor(pred, box), self.descriptor(target, box))))
        return out

    def similarity(self, predictions: Sequence[Image.Image], targets: Sequence[Image.Image]) -> list[float | None]:
        """Per pair: the value of :meth:`scores` (None where it has none)."""
        return [s.value for s in self.scores(predictions, targets)]


# --------------------------------------------------------------------------- ArcFace / CurricularFace


def _infer_backbone(state: dict[str, torch.Tensor]) -> dict:
    """Architecture of an IR / IR-SE backbone state dict: depth, SE, input size, BN1d affine."""
    units = {int(k.split(".")[1]) for k in state if k.startswith("body.")}
    n_units = max(units) + 1 if units else 0

    depth = next((d for d, u in UNITS.items() if sum(u) == n_units), None)
    if depth is None:
        raise IdentityUnavailable(
            f"the face network has {n_units} residual units; expected an IR/IR-SE 50, 100 or 152 "
            f"({', '.join(f'{sum(u)} for {d}' for d, u in UNITS.items())})"
        )
    se = any(".fc1." in k for k in state if k.startswith("body."))
    lin = state.get("output_layer.3.weight")
    side = int(round((lin.shape[1] / 512) ** 0.5)) if lin is not None else 7
    return {
        "num_layers": depth,
        "mode": "ir_se" if se else "ir",
        "input_size": 112 if side == 7 else 224,
        "affine": "output_layer.4.weight" in state,
    }


def _similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``[2, 3]`` mapping points ``src -> dst`` (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1
    rot = u @ fix @ vt
    scale = (sig * np.diag(fix)).sum() / s.var(0).sum()
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def _warp(image: Image.Image, m: np.ndarray, size: int) -> Image.Image:
    """Warp ``image`` by the forward affine ``m`` (source -> output pixels) into ``size`` x ``size``."""
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    return image.convert("RGB").transform((size, size), Image.Transform.AFFINE, inv.flatten().tolist(), Image.Resampling.BILINEAR)


class ArcFaceIdentity:
    """Cosine similarity of ArcFace / CurricularFace embeddings (paper protocol with MTCNN).

    Args:
        weights: a state dict of an IR / IR-SE 50/100/152 backbone in the ArcFace layout
            (``input_layer.*``, ``body.N.*``, ``output_layer.*``; a ``module.`` prefix is fine).
        device: where the network runs.
        use_mtcnn: find landmarks with ``facenet-pytorch``'s MTCNN when it is installed.
        mtcnn: a ready landmark finder with facenet-pytorch's ``detect(image, landmarks=True)``
            (default: built here when ``use_mtcnn``).
    """

    def __init__(
        self, weights: str | os.PathLike, device: str | torch.device = "cpu", use_mtcnn: bool = True, mtcnn=None
    ):
        path = find_weights(weights, (), "face recognition", "Give an ArcFace/CurricularFace IR(-SE) state dict.")
        state = read_state_dict(path, "face recognition")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        arch = _infer_backbone(state)
        self.arch = arch
        self.device = torch.device(device)
        self.net = Backbone(**arch)
        load_state_checked(self.net, fill_num_batches_tracked(self.net, state), path)
        self.net.eval().requires_grad_(False).to(self.device)
        self.weights = str(path)
        if mtcnn is not None:
            self.mtcnn, self._no_mtcnn = mtcnn, ""
        else:
            self.mtcnn, self._no_mtcnn = _make_mtcnn(self.device) if use_mtcnn else (None, "MTCNN switched off")

    @property
    def name(self) -> str:
        net = f"{self.arch['mode'].upper().replace('_', '-')}-{self.arch['num_layers']} from {os.path.basename(self.weights)}"
        crop = (
            "MTCNN 5-point alignment of each image (facenet-pytorch), pairs without a face in either excluded"
            if self.mtcnn is not None
            else f"pSp training crop [35:223, 32:220] of 256 px pooled to 112, outputs not checked for a face "
            f"(no MTCNN: {self._no_mtcnn})"
        )
        return f"ArcFace-style {net}, cosine similarity, face crop: {crop}"

    def _aligned(self, image: Image.Image) -> Image.Image | None:
        """``image`` warped to the ArcFace template by its own MTCNN landmarks, or None (no face)."""
        size = self.arch["input_size"]
        _, _, points = self.mtcnn.detect(image.convert("RGB"), landmarks=True)
        if points is None or not len(points) or points[0] is None:
            return None
        m = _similarity_transform(np.asarray(points[0], np.float64), ARCFACE_TEMPLATE_112 * size / 112)
        return _warp(image, m, size)

    def _crops(self, pred: Image.Image, target: Image.Image) -> tuple[Image.Image, Image.Image] | str:
        """The two network inputs, or why there are none."""
        size = self.arch["input_size"]
        if pred.size != target.size:
            pred = pred.resize(target.size, Image.Resampling.BICUBIC)
        if self.mtcnn is not None:
            target_crop = self._aligned(target)
            if target_crop is None:
                return NO_FACE_IN_TARGET
            pred_crop = self._aligned(pred)
            return NO_FACE_IN_OUTPUT if pred_crop is None else (pred_crop, target_crop)
        w, h = target.size
        box = (32 * w / 256, 35 * h / 256, 220 * w / 256, 223 * h / 256)
        return tuple(im.convert("RGB").resize((size, size), Image.Resampling.BOX, box=box) for im in (pred, target))

    @torch.no_grad()
    def scores(self, predictions: Sequence[Image.Image], targets: Sequence[Image.Image]) -> list[IdentityScore]:
        """Per pair: cosine similarity of the embeddings, or no value and why."""
        out: list[IdentityScore] = []
        for pred, target in zip(predictions, targets, strict=True):
            crops = self._crops(pred, target)
            if isinstance(crops, str):
                out.append(IdentityScore(None, crops))
                continue
            x = torch.stack([pil_to_tensor(c, None) for c in crops]).to(self.device)
            e = self.net(x).double().cpu()
            out.append(IdentityScore(float((e[0] * e[1]).sum() / (e[0].norm() * e[1].norm()))))
        return out

    def similarity(self, predictions: Sequence[Image.Image], targets: Sequence[Image.Image]) -> list[float | None]:
        """Per pair: the value of :meth:`scores` (None where it has none)."""
        return [s.value for s in self.scores(predictions, targets)]


def _make_mtcnn(device: torch.device) -> tuple[object | None, str]:
    """``(MTCNN or None, why not)``."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as e:
        return None, f"facenet-pytorch not importable: {e}"
    return MTCNN(select_largest=True, post_process=False, device=device), ""


def build_identity(spec: str | None = "dlib", face_box="aligned", device: str | torch.device = "cpu"):
    """``"dlib"`` -> :class:`DlibIdentity`; ``"arcface:PATH"`` (or a bare weights path) ->
    :class:`ArcFaceIdentity`; None or ``"none"`` -> None."""
    if spec is None or spec == "none":
        return None
    if spec == "dlib":
        return DlibIdentity(face_box=face_box)
    spec = str(spec)
    if spec.startswith("arcface:") and not os.path.exists(spec):
        spec = spec.removeprefix("arcface:")
        if not spec:
            raise ConfigError("identity='arcface:' needs the weights file: 'arcface:PATH'")
    return ArcFaceIdentity(spec, device=device)
