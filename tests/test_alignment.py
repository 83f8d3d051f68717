"""Face alignment: FFHQ geometry, detection on real photos, no-face handling, paste-back."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from instyle.alignment import crop_to_source, feather_mask, ffhq_quad, paste_back, source_to_crop, warp_quad

from .conftest import shared_path

#: FFHQ's canonical eye centres (fractions of the side), measured with dlib's 68-point model
#: on FFHQ-aligned faces; their spread there is about +-0.005.
CANONICAL_EYES = np.array([0.375, 0.475, 0.623, 0.475])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def upright_landmarks(cx=200.0, cy=220.0, eye_dist=60.0) -> np.ndarray:
    """Synthetic 68 points of an upright face: only eyes (36-47) and mouth corners (48, 54) matter."""
    lm = np.zeros((68, 2))
    lm[36:42] = [cx - eye_dist / 2, cy]
    lm[42:48] = [cx + eye_dist / 2, cy]
    lm[48:60] = [cx, cy + 0.9 * eye_dist]
    lm[48] = [cx - 25, cy + 0.9 * eye_dist]
    lm[54] = [cx + 25, cy + 0.9 * eye_dist]
    return lm


def smooth_image(w=400, h=360, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 20, w // 20, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


# ---------------------------------------------------------------- geometry (no dlib needed)


def test_quad_of_upright_face_is_axis_aligned_square_with_ffhq_proportions():
    lm = upright_landmarks()
    q = ffhq_quad(lm)
    side = np.hypot(*(q[3] - q[0]))
    np.testing.assert_allclose(q[3] - q[0], [side, 0], atol=1e-9)  # top edge horizontal
    np.testing.assert_allclose(q[1] - q[0], [0, side], atol=1e-9)  # left edge vertical, pointing down
    # Half side = max(2 * eye distance, 1.8 * eye-to-mouth) = 120 here -> side 240.
    assert side == pytest.approx(240.0)
    eyes_in_crop = source_to_crop(np.array([[170.0, 220.0], [230.0, 220.0]]), q, 1024) / 1024
    np.testing.assert_allclose(eyes_in_crop[:, 1], 0.5 - 0.1 * 54 / 240, atol=1e-9)  # centre is 0.1 eye->mouth below the eyes


def test_quad_follows_rotation_and_maps_are_inverse():
    lm = upright_landmarks()
    angle = np.deg2rad(30)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([200.0, 220.0])
    q0, q1 = ffhq_quad(lm), ffhq_quad((lm - centre) @ rot.T + centre)
    np.testing.assert_allclose(q1, (q0 - centre) @ rot.T + centre, atol=1e-9)
    pts = np.random.default_rng(0).uniform(0, 512, (20, 2))
    np.testing.assert_allclose(source_to_crop(crop_to_source(pts, q1, 512), q1, 512), pts, atol=1e-9)


def test_warp_and_paste_back_roundtrip_on_synthetic_image():
    img = smooth_image()
    quad = ffhq_quad(upright_landmarks(cx=190, cy=170, eye_dist=40))  # lies inside the image
    crop = warp_quad(img, quad, 256)
    assert crop.size == (256, 256)
    back = np.asarray(paste_back(img, crop, quad))
    x0, y0 = np.ceil(quad.min(0)).astype(int) + 10
    x1, y1 = np.floor(quad.max(0)).astype(int) - 10
    assert psnr(back[y0:y1, x0:x1], np.asarray(img)[y0:y1, x0:x1]) > 35
    # Outside the quad nothing changes.
    np.testing.assert_array_equal(back[:, : int(quad[:, 0].min()) - 1], np.asarray(img)[:, : int(quad[:, 0].min()) - 1])


def test_warp_pads_where_the_quad_leaves_the_photo():
    img = Image.new("RGB", (200, 200), (200, 30, 30))
    quad = ffhq_quad(upright_landmarks(cx=20, cy=20, eye_dist=40))  # mostly outside
    crop = np.asarray(warp_quad(img, quad, 64)).astype(int)
    # Reflected + faded padding: no black corners, colour stays near the photo's.
    assert np.abs(crop - [200, 30, 30]).max() < 30


def test_feather_mask_shape_and_range():
    m = feather_mask(64, 0.1)
    assert m.shape == (64, 64) and m.max() == pytest.approx(1.0) and m[0, 0] < 0.01
    np.testing.assert_allclose(m, m[::-1, ::-1], atol=1e-6)
    with pytest.raises(ValueError, match="feather"):
        feather_mask(8, 0.7)


def test_models_are_found_without_importing_the_package(monkeypatch):
    import importlib.util

    from instyle.alignment.models import AlignmentUnavailable, model_path

    pytest.importorskip("dlib")
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face-recognition-models not installed")
    assert model_path("shape_predictor_68_face_landmarks.dat").is_file()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AlignmentUnavailable, match=r"pip install 'instyle\[faces\]'"):
        model_path("shape_predictor_68_face_landmarks.dat")


# ---------------------------------------------------------------- real photos (dlib)


@pytest.fixture(scope="module")
def unaligned():
    pytest.importorskip("dlib")
    folder = shared_path("data", "faces", "unaligned")
    return sorted(folder.glob("*.jpg"))


@pytest.fixture(scope="module")
def aligned_256(unaligned):
    from instyle.alignment import align_faces

    out, seconds = {}, []
    for path in unaligned:
        t0 = time.perf_counter()
        out[path.name] = align_faces(Image.open(path), size=256)
        seconds.append(time.perf_counter() - t0)
    print(f"aligned {sum(bool(v) for v in out.values())}/{len(out)} photos, {np.mean(seconds):.2f} s per photo")
    return out


def test_every_face_of_the_folder_is_found(aligned_256):
    missing = [name for name, faces in aligned_256.items() if not faces]
    assert len(aligned_256) == 12
    assert not missing, f"no face found in {missing}"
    for faces in aligned_256.values():
        assert faces[0].image.size == (256, 256)


def test_aligned_eyes_are_at_ffhq_canonical_positions(aligned_256):
    from instyle.alignment import detect_faces, face_landmarks

    measured = []
    for faces in aligned_256.values():
        arr = np.asarray(faces[0].image)
        det = detect_faces(arr, detector="hog")
        assert det, "the aligned crop should still contain a detectable face"
        lm = face_landmarks(arr, det[0].box) + 0.5
        measured.append(np.r_[lm[36:42].mean(0), lm[42:48].mean(0)] / 256)
    measured = np.array(measured)
    # Tolerances: mean over the faces within 0.005 (FFHQ's own spread); each face within
    # 0.015 (about 4 px at 256 px: landmark noise on the crop plus on the photo).
    np.testing.assert_allclose(measured.mean(0), CANONICAL_EYES, atol=0.005)
    assert np.abs(measured - CANONICAL_EYES).max() < 0.015


def test_image_without_face_is_reported_not_crashed_on():
    pytest.importorskip("dlib")
    from instyle.alignment import align_face, align_faces

    flat = Image.new("RGB", (160, 120), (128, 128, 128))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8))
    assert align_faces(flat, size=64) == []
    assert align_face(noise, size=64) is None


@pytest.mark.parametrize("name", ["img5.jpg", "img62.jpg"])
def test_paste_back_of_unchanged_crop_reproduces_the_photo(unaligned, name):
    from instyle.alignment import align_faces

    path = next(p for p in unaligned if p.name == name)
    photo = Image.open(path).convert("RGB")
    face = align_faces(photo, size=512)[0]
    back = np.asarray(face.paste_into(photo))
    left, top, right, bottom = (int(round(v)) for v in face.detection.box)
    left, top = max(left, 0), max(top, 0)
    value = psnr(back[top:bottom, left:right], np.asarray(photo)[top:bottom, left:right])
    assert value >= 35, f"PSNR inside the face box {value:.1f} dB"


def test_all_faces_keeps_only_confident_extra_faces(unaligned):
    from instyle.alignment import align_faces

    path = next(p for p in unaligned if p.name == "img67.jpg")  # HOG also fires on a background blob (score ~0.2)
    faces = align_faces(Image.open(path), size=64, all_faces=True)
    assert len(faces) == 1 and faces[0].detection.score > 1
