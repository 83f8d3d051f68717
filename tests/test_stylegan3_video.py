"""``instyle video`` with an encoder over StyleGAN3: stylegan3-editing's video workflow
(first-frame crop, per-frame landmark transforms smoothed with its five-tap kernel, renderings
under the transforms, PTI fitted under them) on a tiny model and a synthetic clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("av")
pytest.importorskip("dlib")

from instyle.errors import InputError  # noqa: E402
from instyle.video import ClipTuneConfig, VideoOptions, edit_video, probe  # noqa: E402
from instyle.video.track import FIVE_TAP, five_tap_smooth, quad_axes  # noqa: E402
from tests.test_stylegan3 import tiny_restyle3  # noqa: E402
from tests.video_clips import frames, write_clip  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def test_rotation_of_parallel_eye_lines_is_zero_not_nan():
    """A frame's own crop: the eye vectors are equal, and their normalised inner product rounds
    to just above 1 for this one (arccos gave NaN and the transform failed)."""
    from instyle.alignment.stylegan3_transform import rotation_from_eyes

    eyes = np.array([86.45471331263877, 54.60466080466008])
    n = eyes / np.linalg.norm(eyes)
    assert np.inner(n, n) > 1.0  # the rounding this case is about
    assert rotation_from_eyes([0.0, 0.0], eyes, [0.0, 0.0], eyes) in (0.0, 360.0)


def test_five_tap_smooth_is_the_originals_kernel_inside_and_keeps_every_frame():
    v = np.random.default_rng(0).normal(size=(9, 3, 3))
    out = five_tap_smooth(v)
    # stylegan3-editing's smooth_ws, verbatim, on the frames with two neighbours each side
    want = (v[2:-2] + 0.75 * v[3:-1] + 0.75 * v[1:-3] + 0.25 * v[:-4] + 0.25 * v[4:]) / 3
    np.testing.assert_allclose(out[2:-2], want, atol=1e-12)
    assert out.shape == v.shape and FIVE_TAP.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(out[0], (v[0] * 2 + v[1] * 0.75 + v[2] * 0.25) / 3, atol=1e-12)  # the edge frame repeats
    np.testing.assert_allclose(five_tap_smooth(np.ones((2, 3, 3))), np.ones((2, 3, 3)))


@pytest.mark.slow
def test_stylegan3_clip_renders_each_frame_under_its_transform_and_tunes_under_them(faces_dir, tmp_path):
    from PIL import Image

    from instyle.inference.refine import apply_generator_delta, load_generator_delta
    from instyle.inference.unaligned import crop_transform
    from instyle.utils.image import tensor_to_pil

    photo = Image.open(faces_dir / "ffhq_aligned" / "0143.png").convert("RGB")
    clip = write_clip(tmp_path / "c.mp4", frames(photo, 5, 128))
    m = tiny_restyle3(seed=3)
    # unsmoothed crops: the aligned crops follow the clip's 8 degree turn, the first frame's crop does not
    opts = VideoOptions(detector="hog", center_sigma=0.0, axes_sigma=0.0, pti=True, pti_config=ClipTuneConfig(steps=1, lpips_weight=0.0), side_by_side=True)
    report = edit_video(m, clip, tmp_path / "out", opts, log=lambda line: None)
    assert probe(tmp_path / "out" / "result.mp4").frames == 5
    assert probe(tmp_path / "out" / "side_by_side.mp4").frames == 5
    inverse = np.array(report["transforms"]["inverse"])
    quads = np.array(report["quads"]["smoothed"])
    np.testing.assert_allclose(report["transforms"]["fixed_quad"], quads[0], atol=1e-3)
    # the transforms are the landmark transforms between each frame's aligned crop and the first
    # frame's crop, smoothed: the clip turns, so the later frames rotate against frame 0
    landmarks = _landmarks(tmp_path / "out" / "cache")
    raw = [crop_transform(landmarks[k], quads[k], quads[0]) for k in range(5)]
    np.testing.assert_allclose(raw[0].inverse_transform, np.eye(3), atol=1e-6)  # frame 0 is its own crop
    _, x, _ = quad_axes(quads)
    turned = np.degrees(np.arctan2(x[:, 1], x[:, 0]) - np.arctan2(x[0, 1], x[0, 0]))
    assert abs(turned[-1]) > 5.0
    for k in range(5):
        angle = (raw[k].rotation_angle + 180.0) % 360.0 - 180.0  # the original reports it in [0, 360)
        assert abs(angle) == pytest.approx(abs(turned[k]), abs=0.05)
    np.testing.assert_allclose(inverse, five_tap_smooth(np.stack([t.inverse_transform for t in raw])), atol=1e-5)
    # each frame rendered on the clip-tuned generator under its own transform
    cache = tmp_path / "out" / "cache"
    codes = np.concatenate([np.load(p) for p in sorted((cache / "encode").glob("*.npy"))])
    tuned = apply_generator_delta(m.decoder, load_generator_delta(cache / "pti" / "generator_delta.safetensors", m.decoder))
    assert report["pti"]["passes"] == 1
    base = m.decoder
    m.decoder = tuned
    try:
        for k in (0, 4):
            with torch.no_grad():
                y = m.decode(torch.from_numpy(codes[k : k + 1]), transform=torch.from_numpy(inverse[k]).float(), resize=True)
                plain = m.decode(torch.from_numpy(codes[k : k + 1]), resize=True)
            got = np.asarray(Image.open(cache / "render" / f"recon_{k:06d}.png").convert("RGB")).astype(int)
            assert np.abs(got - np.asarray(tensor_to_pil(y[0])).astype(int)).max() <= 1
        assert np.abs(got - np.asarray(tensor_to_pil(plain[0])).astype(int)).mean() > 2  # frame 4 is turned
    finally:
        m.decoder = base
    # the renderings show the first frame's crop: that is what the report compares them with
    assert (cache / "align" / "fixed" / "000004.png").is_file()
    with pytest.raises(InputError, match="--stitch") as e:
        edit_video(m, clip, tmp_path / "stitch", VideoOptions(detector="hog", stitch=True), log=lambda line: None)
    assert "\n" not in str(e.value)


def _landmarks(cache) -> np.ndarray:
    chunks = sorted((cache / "track").glob("*.npz"))
    return np.concatenate([np.load(p)["landmarks"] for p in chunks])
