"""Locating and loading the dlib models shipped in ``face-recognition-models``.

That package imports ``pkg_resources`` (gone from current setuptools), so we never import
it: :func:`model_path` finds its folder with :func:`importlib.util.find_spec` and reads the
``.dat`` files directly. Models load lazily, once per thread: dlib's detectors keep scratch
state and release the GIL, so one object used by two threads at once crashes the process
(a segfault with ``encode --align``'s background loaders). Each thread gets its own copy.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path

from instyle.errors import InstyleError

__all__ = ["AlignmentUnavailable", "model_path", "require_dlib", "shape_predictor", "hog_detector", "cnn_detector"]

INSTALL_HINT = "install the face tools with: pip install 'instyle[faces]'  (dlib-bin, face-recognition-models)"

#: File names of the models used here, inside ``face_recognition_models/models/``.
LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
MMOD_DETECTOR = "mmod_human_face_detector.dat"


class AlignmentUnavailable(InstyleError, RuntimeError):
    """dlib or the face models are not installed; the message says what to install."""


def require_dlib():
    """Import and return ``dlib`` or raise :class:`AlignmentUnavailable` with an install hint."""
    try:
        import dlib
    except ImportError as e:
        raise AlignmentUnavailable(f"face alignment needs dlib ({e}); {INSTALL_HINT}") from None
    return dlib


def model_path(filename: str) -> Path:
    """Path of one ``.dat`` file shipped in ``face-recognition-models`` (without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise AlignmentUnavailable(f"the face landmark models are missing; {INSTALL_HINT}")
    for root in spec.submodule_search_locations:
        p = Path(root) / "models" / filename
        if p.is_file():
            return p
    raise AlignmentUnavailable(f"{filename} not found in face_recognition_models; reinstall it ({INSTALL_HINT})")


_thread_models = threading.local()


def _per_thread(key: str, build: Callable[[], object]):
    """This thread's instance of a dlib model, built on first use in the thread."""
    models = _thread_models.__dict__.setdefault("models", {})
    if key not in models:
        models[key] = build()
    return models[key]


def shape_predictor():
    """dlib's 68-point landmark model (iBUG 300-W point order), this thread's copy."""
    return _per_thread("landmarks", lambda: require_dlib().shape_predictor(str(model_path(LANDMARKS_68))))


def hog_detector():
    """dlib's HOG + linear SVM frontal face detector (fast; misses near-profile and tiny faces), this thread's copy."""
    return _per_thread("hog", lambda: require_dlib().get_frontal_face_detector())


def cnn_detector():
    """dlib's CNN (MMOD) face detector (slower on CPU; finds profile and rotated faces), this thread's copy."""
    return _per_thread("cnn", lambda: require_dlib().cnn_face_detection_model_v1(str(model_path(MMOD_DETECTOR))))
