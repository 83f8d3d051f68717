"""``instyle video`` with an encoder over StyleGAN3: stylegan3-editing's video workflow
(first-frame crop, per-frame landmark transforms smoothed with its five-tap kernel, renderings
under the transforms, the clip's codes post-processed as its ``post_processing.py``, PTI
fitted under the transforms with its ``run_pti_video.py`` settings) on a tiny model and a
synthetic clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("av")
pytest.importorskip("dlib")

from instyle.errors import InputError  # noqa: E402
from instyle.models.family import family_of, get_family  # noqa: E402
from instyle.video import ClipTuneConfig, VideoOptions, clip_tune_config, edit_video, probe  # noqa: E402
from instyle.video.track import FIVE_TAP, five_tap_smooth, postprocess_latents, quad_axes  # noqa: E402
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


def _original_postprocess(ws: np.ndarray) -> np.ndarray:
    """stylegan3-editing's ``postprocess_and_smooth_inversions`` on the latents, restated:
    the W+ rows from 9 on averaged over the frames, then ``smooth_ws`` (which keeps only the
    frames with two neighbours each side)."""
    ws = ws.copy()
    ws[:, 9:, :] = ws[:, 9:, :].mean(axis=0)
    return (ws[2:-2] + 0.75 * ws[3:-1] + 0.75 * ws[1:-3] + 0.25 * ws[:-4] + 0.25 * ws[4:]) / 3


def test_stylegan3_family_post_processes_clip_codes_as_the_original():
    """The published encoders' 16 W+ rows, synthetic codes of 8 frames."""
    codes = np.random.default_rng(1).normal(size=(8, 16, 5)).astype(np.float32)
    spec = get_family("restyle3").video_latents
    out = postprocess_latents(codes, spec)
    assert out.shape == codes.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[2:-2], _original_postprocess(codes.astype(np.float64)), atol=1e-6)
    # the fine rows are one code for the whole clip; the coarse ones still move
    np.testing.assert_allclose(out[:, 9:], np.broadcast_to(codes[:, 9:].mean(0), out[:, 9:].shape), atol=1e-6)
    assert np.abs(np.diff(out[:, :9], axis=0)).max() > 0.1
    # the ends repeat their edge frame (the original drops them)
    avg = codes.astype(np.float64).copy()
    avg[:, 9:] = avg[:, 9:].mean(0)
    np.testing.assert_allclose(out[0], (2 * avg[0] + 0.75 * avg[1] + 0.25 * avg[2]) / 3, atol=1e-6)
    # the other families' clips render as encoded
    assert get_family("psp").video_latents == {}
    np.testing.assert_array_equal(postprocess_latents(codes, {}), codes)
    with pytest.raises(ValueError, match="five-tap"):
        postprocess_latents(codes, {"smoothing": "gaussian"})


def test_stylegan3_clip_renders_post_processed_codes_and_edits_before_post_processing(tmp_path):
    """``_render``: the reconstruction renders the post-processed codes under each frame's
    transform; an edit (key-framed: it does not commute with the averaging) is applied to each
    frame's own code first and the edited codes are then post-processed, as the original's
    ``VideoEditor.postprocess_and_smooth_edits``."""
    from PIL import Image

    from instyle.utils.image import tensor_to_pil
    from instyle.video.keyframes import parse_timed_edit
    from instyle.video.pipeline import _render

    m = tiny_restyle3(seed=1)
    n = 6
    g = torch.Generator().manual_seed(0)
    codes = (m.latent_avg + 0.5 * torch.randn(n, m.n_styles, 8, generator=g)).numpy().astype(np.float32)
    angle = np.radians(np.linspace(0, 10, n))
    transforms = np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
    transforms[:, 0, 0], transforms[:, 0, 1] = np.cos(angle), -np.sin(angle)
    transforms[:, 1, 0], transforms[:, 1, 1] = np.sin(angle), np.cos(angle)
    direction = torch.randn(m.n_styles, 8, generator=g)

    class Shift:
        def edit(self, w, steps, component=None):
            return [w + s * direction for s in steps]

    timed = parse_timed_edit("shift=0:0,5:2")
    strengths = timed.strengths(n, 1)[None]
    spec = {"average_from": 2, "smoothing": "five-tap"}  # the tiny model has fewer than 9 rows
    _render(m, None, tmp_path, codes, [(Shift(), timed)], strengths, tmp_path, VideoOptions(batch_size=4),
            lambda *a: None, transforms, spec)
    edited_raw = codes + strengths[0][:, None, None] * direction.numpy()
    want_recon, want_edit = postprocess_latents(codes, spec), postprocess_latents(edited_raw, spec)
    # editing the post-processed codes instead would give other codes
    assert np.abs(want_edit - (want_recon + strengths[0][:, None, None] * direction.numpy())).max() > 1e-3
    for k in (0, 3, 5):
        for kind, w in (("recon", want_recon), ("edit", want_edit)):
            with torch.no_grad():
                y = m.decode(torch.from_numpy(w[k : k + 1]), transform=torch.from_numpy(transforms[k]), resize=True)
            got = np.asarray(Image.open(tmp_path / f"{kind}_{k:06d}.png").convert("RGB")).astype(int)
            assert np.abs(got - np.asarray(tensor_to_pil(y[0])).astype(int)).max() <= 1, (kind, k)


def test_stylegan3_video_pti_defaults_are_run_pti_videos():
    """stylegan3-editing's run_pti_video.py: 350 steps, lr 3e-4, batches of 4 shuffled, LPIPS 1 + L2 1;
    the other families keep STIT's."""
    m = tiny_restyle3()
    cfg = clip_tune_config(m)
    assert (cfg.steps, cfg.unit, cfg.batch_size, cfg.shuffle, cfg.lr) == (350, "step", 4, True, 3e-4)
    assert (cfg.lpips_weight, cfg.l2_weight, cfg.locality_weight) == (1.0, 1.0, 0.0)
    assert family_of(m).refine_defaults["video_pti"]["steps"] == 350
    assert clip_tune_config(m, steps=7, lr=None).steps == 7 and clip_tune_config(m, lr=None).lr == 3e-4
    from types import SimpleNamespace

    assert clip_tune_config(SimpleNamespace(family="psp")) == ClipTuneConfig() and ClipTuneConfig().unit == "pass"
    with pytest.raises(InputError, match="unit"):
        ClipTuneConfig(unit="epoch")


def test_clip_pti_in_steps_visits_shuffled_batches_and_resumes(tmp_path, monkeypatch):
    """unit "step": each step one batch of a seeded shuffled pass (5 frames, batches of 4:
    4 + 1 frames a pass), the last batch of a pass smaller, as the original's DataLoader
    (shuffle=True, drop_last=False); a resumed run ends with the same weights."""
    import instyle.video.tune as tune

    m = tiny_restyle3(seed=2)
    n = 5
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(n, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    pivots = m.latent_avg + 0.3 * torch.randn(n, m.n_styles, 8, generator=g)
    extras = torch.eye(3).repeat(n, 1, 1)
    seen = []
    real = tune._render

    def spy(model, generator, w, noise=None, extra=None):
        seen.append([int(i) for i in torch.cdist(w.flatten(1), pivots.flatten(1)).argmin(1)])
        return real(model, generator, w, noise=noise, extra=extra)

    monkeypatch.setattr(tune, "_render", spy)
    cfg = ClipTuneConfig(steps=3, unit="step", batch_size=4, shuffle=True, lr=1e-3, lpips_weight=0.0)
    delta, summary = tune.tune_clip(m, targets, pivots, cfg, tmp_path / "a.pt", extras=extras)
    assert [len(b) for b in seen] == [4, 1, 4] and summary["passes"] == 3 and summary["unit"] == "step"
    assert sorted(seen[0] + seen[1]) == list(range(n))  # one pass covers every frame once
    assert seen[2] != sorted(seen[2]) or seen[0] != sorted(seen[0])  # shuffled
    first = seen[:]
    seen.clear()
    tune.tune_clip(m, targets, pivots, ClipTuneConfig(**{**cfg.__dict__, "steps": 2}), tmp_path / "b.pt", extras=extras)
    resumed, _ = tune.tune_clip(m, targets, pivots, cfg, tmp_path / "b.pt", extras=extras)
    assert seen == first  # the resumed step drew the same batch
    for name in delta:
        torch.testing.assert_close(resumed[name], delta[name])


def _original_expander(decode, w, landmark_t, res, left, right, top, bottom):
    """stylegan3-editing's utils/fov_expansion.py ``Expander.generate_expanded_image``, restated
    in numpy around ``decode(w, transform) -> [1, 3, res, res]``."""
    def make_transform(translate, angle):
        m = np.eye(3)
        s, c = np.sin(angle / 360.0 * np.pi * 2), np.cos(angle / 360.0 * np.pi * 2)
        m[0][0], m[0][1], m[0][2], m[1][0], m[1][1], m[1][2] = c, s, translate[0], -s, c, translate[1]
        return m

    def shift(h, v):
        return None if (h is None or v is None) else make_transform((h / res, v / res), 0)

    lf, rt, tp, bt = (left or None), (-right or None), (top or None), (-bottom or None)
    transforms = [make_transform((0, 0), 0), shift(lf, 0), shift(0, tp), shift(rt, 0), shift(0, bt),
                  shift(lf, tp), shift(rt, tp), shift(rt, bt), shift(lf, bt)]
    images = [None if t is None else decode(w, landmark_t @ np.linalg.inv(t)).numpy() for t in transforms]
    out = np.zeros((1, 3, top + res + bottom, left + res + right))
    out[:, :, top:top + res, left:left + res] = images[0]
    if left > 0:
        out[:, :, top:top + res, :left] = images[1][:, :, :, 0:left]
    if top > 0:
        out[:, :, :top, left:left + res] = images[2][:, :, 0:top, :]
    if right > 0:
        out[:, :, top:top + res, left + res:] = images[3][:, :, :, res - right:]
    if bottom > 0:
        out[:, :, top + res:, left:left + res] = images[4][:, :, res - bottom:, :]
    if top > 0 and left > 0:
        out[:, :, :top, :left] = images[5][:, :, :top, :left]
    if top > 0 and right > 0:
        out[:, :, :top, res + left:] = images[6][:, :, :top, res - right:]
    if bottom > 0 and right > 0:
        out[:, :, res + top:, res + left:] = images[7][:, :, res - bottom:, res - right:]
    if bottom > 0 and left > 0:
        out[:, :, res + top:, :left] = images[8][:, :, res - bottom:, :left]
    return out


@pytest.mark.parametrize("amounts", [(3, 2, 4, 1), (0, 5, 0, 2), (2, 0, 0, 0)])
def test_field_of_view_expansion_is_the_originals_expander(amounts):
    from instyle.video.expand import expanded_render

    m = tiny_restyle3(seed=4)
    res = m.output_size
    w = m.latent_avg + 0.5 * torch.randn(1, m.n_styles, 8, generator=torch.Generator().manual_seed(1))
    a = np.radians(7.0)
    t = np.array([[np.cos(a), -np.sin(a), 0.05], [np.sin(a), np.cos(a), -0.03], [0, 0, 1]])
    with torch.no_grad():
        got = expanded_render(lambda v, tr: m.synthesize(v, tr), w, torch.from_numpy(t), res, amounts)
        want = _original_expander(lambda v, tr: m.decode(v, transform=torch.from_numpy(tr).float()), w, t, res, *amounts)
    left, right, top, bottom = amounts
    assert got.shape == (1, 3, top + res + bottom, left + res + right)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    with torch.no_grad():  # the generator renders more than the crop: the added strips are not blank
        assert got[..., :, :left].abs().mean() > 0.01 if left else got[..., :, res:].abs().mean() > 0.01


def test_expanded_canvas_lies_around_the_crop_quad_and_is_pasted_over_its_rectangle():
    from instyle.video.expand import canvas_mask, expanded_quad

    quad = np.array([[10.0, 20.0], [10.0, 120.0], [110.0, 120.0], [110.0, 20.0]])  # a 100 px axis-aligned crop
    q = expanded_quad(quad, 16, (4, 0, 2, 0))  # canvas 20 x 18 generator px, padded to 20 square
    np.testing.assert_allclose(q, [[-15.0, 7.5], [-15.0, 132.5], [110.0, 132.5], [110.0, 7.5]])
    np.testing.assert_allclose(expanded_quad(quad, 16, (0, 0, 0, 0)), quad)
    mask = canvas_mask(40, 16, (4, 0, 2, 0), 0.1)
    assert mask.shape == (40, 40) and mask[36:].max() == 0 and mask[:36].max() == pytest.approx(1.0)
    assert mask[18, 20] == pytest.approx(1.0) and mask[0, 20] < 0.1


def test_expand_renders_wide_canvases_whose_centre_is_the_crop(tmp_path):
    from PIL import Image

    from instyle.video.pipeline import _render

    m = tiny_restyle3(seed=5)
    n = 2
    codes = (m.latent_avg + 0.4 * torch.randn(n, m.n_styles, 8, generator=torch.Generator().manual_seed(2))).numpy()
    transforms = np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
    transforms[1, 0, 2] = 0.1
    opts = VideoOptions(expand=(2, 0, 4, 2))
    _render(m, None, tmp_path, codes, [], np.zeros((0, n)), tmp_path, opts, lambda *a: None, transforms, {})
    scale = m.pooled_size // m.output_size  # the tiny model pools 16 px renderings to 32
    for k in range(n):
        recon = np.asarray(Image.open(tmp_path / f"recon_{k:06d}.png")).astype(int)
        wide = np.asarray(Image.open(tmp_path / f"wide_recon_{k:06d}.png")).astype(int)
        assert wide.shape == (22 * scale, 22 * scale, 3)  # 18 wide, 22 high: padded on the right
        centre = wide[4 * scale : 4 * scale + m.pooled_size, 2 * scale : 2 * scale + m.pooled_size]
        assert np.abs(centre - recon).max() <= 1
        assert wide[:, 18 * scale :].max() == 0
    with pytest.raises(InputError, match="expand"):
        VideoOptions(expand=(1, 2, 3))


def test_expand_is_refused_for_a_generator_without_input_transform_and_parsed_by_the_command(tmp_path):
    import argparse

    from instyle.cli.video import _expansion
    from instyle.models import create_psp

    clip = write_clip(tmp_path / "c.mp4", [np.full((64, 64, 3), 90, np.uint8)] * 2, audio=False)
    with pytest.raises(InputError, match="--expand") as e:
        edit_video(create_psp("tiny").eval(), clip, tmp_path / "out", VideoOptions(expand=(8, 8, 0, 0)), log=lambda line: None)
    assert "\n" not in str(e.value) and not (tmp_path / "out" / "result.mp4").exists()
    assert _expansion("4,0,2,1") == (4, 0, 2, 1) and _expansion("16") == (16,) * 4
    with pytest.raises(argparse.ArgumentTypeError):
        _expansion("1,2,-3,4")


@pytest.mark.slow
def test_stylegan3_clip_renders_each_frame_under_its_transform_and_tunes_under_them(faces_dir, tmp_path, monkeypatch):
    from PIL import Image

    import instyle.video.pipeline as pipeline
    from instyle.inference.refine import apply_generator_delta, load_generator_delta
    from instyle.inference.unaligned import crop_transform
    from instyle.utils.image import tensor_to_pil

    photo = Image.open(faces_dir / "ffhq_aligned" / "0143.png").convert("RGB")
    clip = write_clip(tmp_path / "c.mp4", frames(photo, 5, 128))
    m = tiny_restyle3(seed=3)
    # unsmoothed crops: the aligned crops follow the clip's 8 degree turn, the first frame's crop does not
    # stylegan3-editing's video PTI (batches of 4 shuffled frames), one step
    # with the field of view expanded on the left and at the top (stylegan3-editing's expansion_amounts)
    opts = VideoOptions(detector="hog", center_sigma=0.0, axes_sigma=0.0, pti=True,
                        pti_config=clip_tune_config(m, steps=1, lpips_weight=0.0), side_by_side=True, expand=(4, 0, 2, 0))
    fitted = {}

    def spy(model, targets, pivots, config, *a, extras=None, **kw):
        fitted.update(pivots=pivots.numpy().copy(), extras=extras.numpy().copy(), config=config)
        return tune_clip(model, targets, pivots, config, *a, extras=extras, **kw)

    tune_clip = pipeline.tune_clip
    monkeypatch.setattr(pipeline, "tune_clip", spy)
    report = edit_video(m, clip, tmp_path / "out", opts, log=lambda line: None)
    assert probe(tmp_path / "out" / "result.mp4").frames == 5
    assert probe(tmp_path / "out" / "side_by_side.mp4").frames == 5
    inverse = np.array(report["transforms"]["inverse"])
    quads = np.array(report["quads"]["smoothed"])
    np.testing.assert_allclose(report["transforms"]["fixed_quad"], quads[0], atol=1e-3)
    assert report["transforms"]["latents"] == {"average_from": 9, "smoothing": "five-tap"}
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
    # PTI fitted the encoder's codes under the unsmoothed transforms (run_pti_video.py's inputs)
    cache = tmp_path / "out" / "cache"
    codes = np.concatenate([np.load(p) for p in sorted((cache / "encode").glob("*.npy"))])
    np.testing.assert_allclose(fitted["extras"], np.stack([t.inverse_transform for t in raw]), atol=1e-5)
    np.testing.assert_array_equal(fitted["pivots"], codes)
    assert (fitted["config"].unit, fitted["config"].batch_size, report["pti"]["batch_size"]) == ("step", 4, 4)
    # each frame rendered on the clip-tuned generator under its own transform, from the
    # post-processed codes (post_processing.py: fine rows averaged, five-tap smoothing)
    codes = postprocess_latents(codes, family_of(m).video_latents)
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
    # the expanded canvases (20 x 18 generator px, padded square) are what was pasted back
    wide = np.asarray(Image.open(cache / "render" / "wide_recon_000004.png").convert("RGB")).astype(int)
    side = m.pooled_size * 20 // m.output_size
    assert wide.shape == (side, side, 3)
    scale = m.pooled_size // m.output_size
    np.testing.assert_allclose(wide[2 * scale : 2 * scale + m.pooled_size, 4 * scale : 4 * scale + m.pooled_size], got, atol=1)
    # the renderings show the first frame's crop: that is what the report compares them with
    assert (cache / "align" / "fixed" / "000004.png").is_file()
    with pytest.raises(InputError, match="--stitch") as e:
        edit_video(m, clip, tmp_path / "stitch", VideoOptions(detector="hog", stitch=True), log=lambda line: None)
    assert "\n" not in str(e.value)


def _landmarks(cache) -> np.ndarray:
    chunks = sorted((cache / "track").glob("*.npz"))
    return np.concatenate([np.load(p)["landmarks"] for p in chunks])
