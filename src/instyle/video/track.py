"""Following one face through a clip and cropping it without jitter.

* :func:`detect_landmarks`: the 68 dlib landmarks of one frame's face (the detection nearest
  the previous frame's face, else the largest), or None.
* :func:`fill_missing`: frames where detection failed get landmarks interpolated linearly
  between the nearest detected frames (held at the clip's ends): no frame is dropped.
* :func:`quad_axes` / :func:`axes_quad`: an FFHQ quad as centre ``c`` and half-axes ``x, y``.
* :func:`smooth_quads`: STIT's temporal smoothing: a Gaussian over time on the centre
  (sigma 1 frame) and, more strongly, on the axes (sigma 3 frames), which carry scale and
  rotation; the ends are mirrored (the sequence is reflected about its first and last frame).
"""

from __future__ import annotations

import numpy as np

from instyle.alignment.detect import Detection, detect_faces, face_landmarks
from instyle.alignment.ffhq import ffhq_quad

__all__ = [
    "CENTER_SIGMA",
    "AXES_SIGMA",
    "axes_quad",
    "crop_motion",
    "detect_landmarks",
    "fill_missing",
    "follow_face",
    "gaussian_smooth",
    "postprocess_latents",
    "quad_axes",
    "smooth_quads",
]

#: STIT's defaults (``center_sigma``, ``xy_sigma``), in frames.
CENTER_SIGMA = 1.0
AXES_SIGMA = 3.0


def follow_face(frame: np.ndarray, detections: list[Detection], previous: np.ndarray | None = None) -> np.ndarray | None:
    """``[68, 2]`` landmarks (continuous pixel coordinates) of the followed face among ``detections``, or None.

    Args:
        frame: ``[H, W, 3]`` uint8 RGB.
        detections: the frame's faces, largest first (:func:`~instyle.alignment.detect.detect_faces`).
        previous: the previous frame's landmarks: with several faces, the one whose box
            centre is nearest theirs is followed (a face walking past does not steal the crop).
    """
    if not detections:
        return None
    det = detections[0]
    if previous is not None and len(detections) > 1:
        centre = previous.mean(0)
        det = min(detections, key=lambda d: np.hypot((d.box[0] + d.box[2]) / 2 - centre[0], (d.box[1] + d.box[3]) / 2 - centre[1]))
    return face_landmarks(frame, det.box) + 0.5


def detect_landmarks(frame: np.ndarray, previous: np.ndarray | None = None, detector: str = "auto") -> np.ndarray | None:
    """:func:`follow_face` on ``frame``'s detected faces."""
    return follow_face(frame, detect_faces(frame, detector=detector), previous)


def fill_missing(landmarks: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Interpolate the landmarks of frames where ``found`` is False.

    Args:
        landmarks: ``[N, 68, 2]`` (rows of missing frames are ignored).
        found: ``[N]`` bool; at least one True.

    Returns:
        ``[N, 68, 2]``: detected rows unchanged; a missing row is the linear blend of the nearest
        detected rows before and after it by frame distance, or the nearest one at either end.
    """
    found = np.asarray(found, dtype=bool)
    if not found.any():
        raise ValueError("no frame has landmarks to interpolate from")
    out = np.array(landmarks, dtype=np.float64, copy=True)
    known = np.flatnonzero(found)
    flat = out.reshape(len(out), -1)
    for j in range(flat.shape[1]):
        flat[~found, j] = np.interp(np.flatnonzero(~found), known, flat[known, j])
    return flat.reshape(out.shape)


def quad_axes(quads: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[N, 4, 2]`` quads (top-left, bottom-left, bottom-right, top-right) -> centres ``c``,
    half-axes ``x`` (towards the right edge) and ``y`` (towards the bottom), each ``[N, 2]``."""
    q = np.asarray(quads, dtype=np.float64)
    return q.mean(1), (q[:, 3] - q[:, 0]) / 2, (q[:, 1] - q[:, 0]) / 2


def axes_quad(c: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quad_axes`: ``[N, 4, 2]`` quads."""
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y], axis=1)


def gaussian_smooth(values: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """A normalised Gaussian filter along axis 0 (``sigma`` in samples; 0 returns a copy).

    The sequence is extended by mirroring with its end samples repeated (``d c b a | a b c d |
    d c b a``), the kernel cut at ``truncate`` sigmas -- the same filter as
    ``scipy.ndimage.gaussian_filter1d``'s default, which STIT uses.
    """
    v = np.asarray(values, dtype=np.float64)
    if sigma < 0 or not np.isfinite(sigma):
        raise ValueError(f"sigma={sigma!r} must be a finite number >= 0")
    if sigma == 0 or len(v) == 0:
        return v.copy()
    radius = int(truncate * sigma + 0.5)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(v, [(radius, radius)] + [(0, 0)] * (v.ndim - 1), mode="symmetric")
    out = np.zeros_like(v)
    for k, w in enumerate(kernel):
        out += w * padded[k : k + len(v)]
    return out


#: stylegan3-editing's temporal kernel (inversion/video/post_processing.py, ``smooth_ws``):
#: ``(w[i-2] / 4 + 3 w[i-1] / 4 + w[i] + 3 w[i+1] / 4 + w[i+2] / 4) / 3``.
FIVE_TAP = np.array([0.25, 0.75, 1.0, 0.75, 0.25]) / 3.0


def five_tap_smooth(values: np.ndarray) -> np.ndarray:
    """stylegan3-editing's smoothing of the per-frame latents and landmark transforms along
    axis 0 (:data:`FIVE_TAP`). The original keeps only the frames with two neighbours each
    side (its output is 4 frames shorter); here the ends repeat their edge frame, so every
    frame of the clip has a smoothed value."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return v.copy()
    padded = np.pad(v, [(2, 2)] + [(0, 0)] * (v.ndim - 1), mode="edge")
    out = np.zeros_like(v)
    for k, w in enumerate(FIVE_TAP):
        out += w * padded[k : k + len(v)]
    return out


#: The temporal smoothings a family's ``video_latents`` may name.
LATENT_SMOOTHINGS = ("five-tap",)


def postprocess_latents(codes: np.ndarray, spec: dict) -> np.ndarray:
    """A clip's ``[N, n_styles, D]`` codes post-processed as a family's ``video_latents``
    asks (:class:`~instyle.models.family.Family`; empty: returned unchanged, as float32).

    stylegan3-editing (inversion/video/post_processing.py, ``postprocess_and_smooth_inversions``;
    and ``VideoEditor.postprocess_and_smooth_edits`` for the edited codes): the W+ rows from
    ``average_from`` on are replaced by their mean over all frames, then every row is smoothed
    over time with ``smooth_ws`` (:func:`five_tap_smooth`: here every frame keeps a value, the
    original drops the first and last two).

    Raises:
        ValueError: an unknown key or smoothing (naming the accepted ones).
    """
    unknown = set(spec) - {"average_from", "smoothing"}
    if unknown:
        raise ValueError(f"video_latents keys {sorted(unknown)} are not among: average_from, smoothing")
    out = np.array(codes, dtype=np.float64, copy=True)
    start = spec.get("average_from")
    if start is not None and len(out):
        out[:, start:, :] = out[:, start:, :].mean(axis=0)
    smoothing = spec.get("smoothing")
    if smoothing is not None:
        if smoothing not in LATENT_SMOOTHINGS:
            raise ValueError(f"video_latents smoothing={smoothing!r} is not one of: {', '.join(LATENT_SMOOTHINGS)}")
        out = five_tap_smooth(out)
    return out.astype(np.float32)


def smooth_quads(quads: np.ndarray, center_sigma: float = CENTER_SIGMA, axes_sigma: float = AXES_SIGMA) -> np.ndarray:
    """``[N, 4, 2]`` quads smoothed over time: the centres with ``center_sigma``, the half-axes with ``axes_sigma``."""
    c, x, y = quad_axes(quads)
    return axes_quad(gaussian_smooth(c, center_sigma), gaussian_smooth(x, axes_sigma), gaussian_smooth(y, axes_sigma))


def crop_motion(quads: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame change of the crop from the previous frame (0 for the first): ``centre``
    (pixels the centre moved), ``scale`` (relative change of the side) and ``rotation`` (degrees)."""
    c, x, _ = quad_axes(quads)
    side = np.hypot(x[:, 0], x[:, 1])
    angle = np.degrees(np.arctan2(x[:, 1], x[:, 0]))
    d_angle = (np.diff(angle) + 180.0) % 360.0 - 180.0
    return {
        "centre": np.concatenate([[0.0], np.hypot(*np.diff(c, axis=0).T)]),
        "scale": np.concatenate([[0.0], np.abs(np.diff(side)) / side[:-1]]),
        "rotation": np.concatenate([[0.0], np.abs(d_angle)]),
    }


def landmark_quads(landmarks: np.ndarray) -> np.ndarray:
    """``[N, 68, 2]`` landmarks -> ``[N, 4, 2]`` FFHQ quads."""
    return np.stack([ffhq_quad(lm) for lm in landmarks])
