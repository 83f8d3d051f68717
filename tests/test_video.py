"""``instyle video``: clip I/O, tracking and smoothing, key-framed edits, the cached pipeline,
its report, resuming, and bad input -- on synthetic clips made from a shared face photo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")
pytest.importorskip("dlib")

from instyle.errors import InputError  # noqa: E402
from instyle.video import (  # noqa: E402
    ClipTuneConfig,
    Selection,
    StitchConfig,
    VideoError,
    VideoOptions,
    edit_video,
    fill_missing,
    gaussian_smooth,
    parse_timed_edit,
    probe,
    write_mp4,
)
from instyle.video.track import quad_axes  # noqa: E402
from tests.video_clips import audio_seconds, frames, motion, read_frames, write_clip  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
N, SIZE, FPS, BLANK = 24, 256, 24, 7


@pytest.fixture(scope="module")
def photo(faces_dir):
    from PIL import Image

    return Image.open(faces_dir / "ffhq_aligned" / "0143.png").convert("RGB")


@pytest.fixture(scope="module")
def clip(photo, tmp_path_factory):
    """24 frames of 256 px, pan + zoom + turn, the face removed from frame 7, a 440 Hz tone."""
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames(photo, N, SIZE, blank=(BLANK,)), FPS)


@pytest.fixture(scope="module")
def model():
    from instyle.models import create_psp

    torch.manual_seed(0)
    m = create_psp("tiny")
    m.set_latent_avg(m.decoder.mean_latent(512, seed=0))
    return m.eval()


@pytest.fixture(scope="module")
def direction(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("dir") / "age.npy"
    np.save(path, np.random.RandomState(0).randn(model.config.generator.style_dim).astype(np.float32))
    return path


def _options(direction, **kw):
    base = dict(directions=(f"age={direction}",), edits=("age=0:0,0.5s:3",), side_by_side=True, pti=True,
                pti_config=ClipTuneConfig(steps=2), stitch=True, stitch_config=StitchConfig(steps=2), batch_size=4)
    return VideoOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def baseline(model, clip, direction, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    lines = []
    report = edit_video(model, clip, out, _options(direction), log=lines.append)
    return out, report, lines


# --------------------------------------------------------------------------- small pieces


def test_timed_edit_constant_and_keyframes():
    fps = Fraction(24)
    assert parse_timed_edit("age=2").strengths(5, fps).tolist() == [2.0] * 5
    s = parse_timed_edit("age=0:0,2s:3,4s:3").strengths(100, fps)
    assert s[0] == 0 and s[24] == pytest.approx(1.5) and s[48] == 3 and s[99] == 3
    g = parse_timed_edit("ganspace:54,7,8=10:1,20:2")
    assert g.component == (54, 7, 8) and g.strengths(30, fps)[[0, 15, 29]].tolist() == [1.0, 1.5, 2.0]
    for bad in ("age", "age=x", "age=1s", "age=0:0,zz:1", "age=-1:0"):
        with pytest.raises(InputError):
            parse_timed_edit(bad)


def test_gaussian_smooth_is_scipys_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.RandomState(1).randn(23, 2)
    for sigma in (1.0, 3.0, 7.5):  # 7.5: a kernel longer than the sequence
        np.testing.assert_allclose(gaussian_smooth(x, sigma), ndimage.gaussian_filter1d(x, sigma, axis=0), atol=1e-12)


def test_fill_missing_interpolates_between_and_holds_at_ends():
    lm = np.zeros((6, 68, 2))
    lm[1], lm[4] = 10.0, 40.0
    found = np.array([False, True, False, False, True, False])
    out = fill_missing(lm, found)
    assert out[:, 0, 0].tolist() == [10.0, 10.0, 20.0, 30.0, 40.0, 40.0]


def test_media_keeps_frames_fps_and_audio(clip, tmp_path):
    info = probe(clip)
    assert (info.frames, info.fps, info.width, info.audio) == (N, FPS, SIZE, True)
    sel = Selection.make(info, start=0.25, every=2)  # frames 6, 8, ..., 22
    assert len(sel) == 9 and sel.fps(info) == 12
    images = [np.zeros((SIZE, SIZE, 3), np.uint8) for _ in range(len(sel))]
    out = write_mp4(tmp_path / "o.mp4", images, sel.fps(info), clip, sel.span(info))
    back = probe(out)
    assert (back.frames, back.fps, back.audio) == (9, 12, True)
    assert audio_seconds(out) == pytest.approx(0.75, abs=0.03)
    assert [p.name for p in tmp_path.iterdir()] == ["o.mp4"]  # no temporary file left
    whole = Selection.make(info)
    copied = write_mp4(tmp_path / "c.mp4", images, whole.fps(info), clip, whole.span(info), copy_audio=True)
    import av

    packets = [[bytes(p) for p in av.open(str(f)).demux(audio=0) if p.size] for f in (clip, copied)]
    assert packets[0] == packets[1] and audio_seconds(copied) == audio_seconds(clip)  # the track as it was


# --------------------------------------------------------------------------- bad input


def _one_line_error(fn, match, kind=VideoError):
    with pytest.raises(kind, match=match) as e:
        fn()
    assert "\n" not in str(e.value)


def test_bad_clips_one_line_each(model, tmp_path, photo):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    _one_line_error(lambda: probe(text), "not a video")
    still = tmp_path / "still.png"
    photo.save(still)
    _one_line_error(lambda: probe(still), "not a video")
    vfr = write_clip(tmp_path / "vfr.mp4", [np.full((64, 64, 3), 9 * i, np.uint8) for i in range(8)], audio=False, vfr=True)
    _one_line_error(lambda: probe(vfr), "variable frame rate")
    huge = write_clip(tmp_path / "huge.mp4", [np.zeros((64, 4352, 3), np.uint8)] * 2, audio=False)
    _one_line_error(lambda: probe(huge), "exceed the largest side")
    out = tmp_path / "out"
    for bad in (text, still, vfr, huge):
        _one_line_error(lambda b=bad: edit_video(model, b, out, VideoOptions()), str(bad.name))
    good = write_clip(tmp_path / "good.mp4", [np.zeros((64, 64, 3), np.uint8)] * 2, audio=False)
    d = tmp_path / "d.npy"
    np.save(d, np.ones(model.config.generator.style_dim, np.float32))
    for edit, match in (("age=1", "no loaded direction"), ("d:3=1", "takes no component"), ("d=0:1,0:2", "same frame")):
        _one_line_error(lambda e=edit: edit_video(model, good, out, VideoOptions(directions=(str(d),), edits=(e,))), match,
                        InputError)
    assert not out.exists()  # nothing written, not even the cache


def test_clip_without_a_face(model, tmp_path):
    clip = write_clip(tmp_path / "empty.mp4", [np.full((128, 128, 3), 128, np.uint8)] * 4)
    out = tmp_path / "out"
    _one_line_error(lambda: edit_video(model, clip, out, VideoOptions(detector="hog")), "no face found in any of the 4 frames")
    assert not (out / "result.mp4").exists() and not (out / "report.json").exists()


def test_clip_without_audio(model, photo, tmp_path):
    clip = write_clip(tmp_path / "mute.mp4", frames(photo, 6, 128), audio=False)
    lines = []
    report = edit_video(model, clip, tmp_path / "out", VideoOptions(detector="hog", workers=2), log=lines.append)
    assert any("no audio track" in line for line in lines)
    assert probe(tmp_path / "out" / "result.mp4").frames == 6 and audio_seconds(tmp_path / "out" / "result.mp4") is None
    assert report["output"]["audio"] is False and report["output"]["audio_mode"] is None
    one = edit_video(model, clip, tmp_path / "one", VideoOptions(detector="hog", workers=1, end=0.1), log=lambda line: None)
    assert one["quads"]["raw"] == report["quads"]["raw"][:3]  # detection threads change nothing (frames 0-2 of 6)


@pytest.mark.slow
def test_optional_lpips_and_identity_per_frame(model, photo, tmp_path):
    import torchvision

    torch.manual_seed(0)  # a random AlexNet in torchvision's file format: LPIPS runs, its values mean nothing
    weights = tmp_path / "alexnet-features.pth"
    torch.save({k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")}, weights)
    clip = write_clip(tmp_path / "short.mp4", frames(photo, 6, 128))
    opts = VideoOptions(detector="hog", lpips_weights=str(weights), identity="dlib")
    report = edit_video(model, clip, tmp_path / "out", opts, log=lambda line: None)
    per_frame = report["reconstruction"]["per_frame"]
    assert len(per_frame["lpips"]) == 6 and min(per_frame["lpips"]) > 0
    assert len(per_frame["identity"]) == 6  # None where the random model's output shows no face


# --------------------------------------------------------------------------- the whole run


@pytest.mark.slow
def test_result_keeps_frames_fps_audio(baseline, clip):
    out, report, _ = baseline
    for name, width in (("result.mp4", SIZE), ("side_by_side.mp4", 3 * SIZE)):
        info = probe(out / name)
        assert (info.frames, info.fps, info.width, info.height, info.audio) == (N, FPS, width, SIZE, True)
        assert audio_seconds(out / name) == pytest.approx(audio_seconds(clip), abs=0.03)
    saved = json.loads((out / "report.json").read_text())
    assert saved["output"] == {"frames": N, "fps": "24/1", "audio": True, "audio_mode": "copied"}
    assert len(saved["reconstruction"]["per_frame"]["mse"]) == N and saved["pti"]["passes"] == 2
    assert (out / "report.png").stat().st_size > 1000


@pytest.mark.slow
def test_smoothed_quads_follow_the_known_motion(baseline, photo):
    from instyle.alignment import align_face

    _, report, _ = baseline
    face = align_face(photo.resize((512, 512)), size=64)
    quads = np.array(report["quads"]["smoothed"])
    expected = np.stack([(motion(k, N, SIZE) @ np.c_[face.quad, np.ones(4)].T).T[:, :2] for k in range(N)])
    c, x, _ = quad_axes(quads)
    ce, xe, _ = quad_axes(expected)
    assert np.abs(c - ce).max() < 4.0  # pixels, on a face ~100 px wide
    np.testing.assert_allclose(np.hypot(*x.T), np.hypot(*xe.T), rtol=0.06)
    angle = np.degrees(np.arctan2(x[:, 1], x[:, 0]) - np.arctan2(xe[:, 1], xe[:, 0]))
    assert np.abs(angle).max() < 2.5
    moved = report["crop_motion"]
    assert moved["smoothed"]["centre"]["max"] < moved["raw"]["centre"]["max"]


@pytest.mark.slow
def test_faceless_frame_is_interpolated_and_reported(baseline):
    out, report, lines = baseline
    assert report["interpolated_frames"] == [BLANK]
    assert any("1 frame(s) 7" in line for line in lines)
    raw = np.array(report["quads"]["raw"])
    # landmarks are blended linearly; the quad (normalised axes) of the blend lies within rounding of the blend
    np.testing.assert_allclose(raw[BLANK], (raw[BLANK - 1] + raw[BLANK + 1]) / 2, atol=0.05)


@pytest.mark.slow
def test_paste_back_lands_on_the_face(baseline, clip):
    out, report, _ = baseline
    src, res = read_frames(clip), read_frames(out / "result.mp4")
    quads = np.array(report["quads"]["smoothed"])
    for k in (0, N // 2, N - 1):
        diff = np.abs(res[k].astype(float) - src[k].astype(float)).mean(-1)
        c, x, y = quad_axes(quads[k : k + 1])
        yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
        rel = np.stack([xx - c[0, 0], yy - c[0, 1]], -1) @ np.linalg.inv(np.stack([x[0], y[0]], 1)).T
        r = np.abs(rel).max(-1)  # 0 at the crop centre, 1 on its edge
        assert diff[r < 0.5].mean() > 10 * max(diff[r > 1.05].mean(), 0.5)
        assert diff[r > 1.05].mean() < 2.0  # outside the crop: the source, up to compression


@pytest.mark.slow
def test_stopped_in_every_stage_resumes_to_the_same_result(baseline, model, clip, direction, tmp_path):
    out0, report0, _ = baseline
    out = tmp_path / "resumed"
    stops = ["track", "align", "encode", "pti", "render", "stitch", "write"]

    class Stop(Exception):
        pass

    def stop_in(stage):
        def hook(s, k):
            if s == stage:
                raise Stop(stage)
        return hook

    for stage in stops:
        with pytest.raises(Stop):
            edit_video(model, clip, out, _options(direction), on_step=stop_in(stage), log=lambda line: None)
        assert not (out / "result.mp4").exists()
    report = edit_video(model, clip, out, _options(direction), log=lambda line: None)
    for a, b in zip(read_frames(out0 / "result.mp4"), read_frames(out / "result.mp4")):
        np.testing.assert_array_equal(a, b)
    for key in ("quads", "flicker", "reconstruction", "interpolated_frames"):
        assert report[key] == report0[key]
    assert report["pti"]["loss_last"] == report0["pti"]["loss_last"] and report["stitch"] == report0["stitch"]


def test_cli_video_errors_are_one_line(tmp_path, capsys):
    from instyle.cli.main import main

    bad = tmp_path / "x.mp4"
    bad.write_text("nope")
    assert main(["video", "-c", str(tmp_path / "missing"), str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("instyle: error:") and "\n" not in err


def test_stitching_masks_and_tuning_meet_the_frame(model):
    from instyle.video.stitch import face_mask, paste_mask, render_code, stitch_frame, stitch_masks

    size = model.config.resize_to
    t = np.linspace(0, 2 * np.pi, 17, endpoint=False)
    lm = np.zeros((68, 2))
    lm[:17] = np.c_[32 + 14 * np.cos(t), 36 + 16 * np.sin(t)]  # a rough face outline; the rest inside it
    lm[17:] = np.c_[32 + 6 * np.cos(np.arange(51)), 34 + 8 * np.sin(np.arange(51))]
    face = face_mask(lm, size)
    content, border, full = stitch_masks(face, StitchConfig())
    assert face[36, 32] == 1 and face[2, 2] == 0 and full.sum() > face.sum()
    assert float((border[0, 0] * torch.from_numpy(face)).sum()) == 0  # the band lies outside the face here
    blend = paste_mask(full, StitchConfig())
    assert blend[36, 32] > 0.99 and blend[1, 1] == 0
    torch.manual_seed(1)
    w = model.decoder.mean_latent(64, seed=1)[None].repeat(1, model.n_styles, 1)
    with torch.no_grad():
        edited = render_code(model, model.decoder, w)
    source = torch.rand(1, 3, size, size) * 2 - 1
    first = stitch_frame(model, model.decoder, w, source, edited, (content, border, full), StitchConfig(steps=1))[2]
    _, steps, last = stitch_frame(model, model.decoder, w, source, edited, (content, border, full), StitchConfig(steps=8, lr=3e-3))
    assert steps == 8 and last < first
    stopped = stitch_frame(model, model.decoder, w, source, edited, (content, border, full), StitchConfig(steps=8, border_threshold=1e9))
    assert stopped[1] == 0  # STIT's early stop on the border loss


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(path)
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "instyle.cli.main", "video", *args]


@pytest.mark.slow
def test_cli_sigkilled_during_pti_resumes_to_the_same_result(model_dir, photo, direction, tmp_path):
    """The command run uninterrupted, and again SIGKILLed after PTI's first checkpoint, then
    rerun: the same result frames and report."""
    clip = write_clip(tmp_path / "short.mp4", frames(photo, 8, 128, blank=(3,)))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    args = ["-c", str(model_dir), str(clip), "-d", f"age={direction}", "--edit", "age=0:0,0.5s:3", "--pti", "--pti-steps", "4",
            "--detector", "hog"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = subprocess.run(_cli(*args, "--out", str(full)), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "interpolated" in done.stderr
    proc = subprocess.Popen(_cli(*args, "--out", str(killed)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "cache" / "pti" / "state.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "result.mp4").exists(), "the run was not killed mid-way"
    again = subprocess.run(_cli(*args, "--out", str(killed)), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    for a, b in zip(read_frames(full / "result.mp4"), read_frames(killed / "result.mp4"), strict=True):
        np.testing.assert_array_equal(a, b)
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (full, killed))
    assert ra["reconstruction"] == rb["reconstruction"] and ra["pti"]["loss_last"] == rb["pti"]["loss_last"]


@pytest.mark.parametrize("family", ["e4e", "restyle", "hyperstyle"])
def test_other_families_run_the_pipeline(family, photo, tmp_path):
    from tests.test_families import tiny
    from tests.test_hyperstyle import tiny_model

    m = tiny_model() if family == "hyperstyle" else tiny(family, {"e4e": "Encoder4Editing", "restyle": "BackboneEncoder"}[family])
    m.eval()
    clip = write_clip(tmp_path / "short.mp4", frames(photo, 5, 128))
    direction = tmp_path / "d.npy"
    np.save(direction, np.ones(m.config.generator.style_dim, np.float32))
    opts = VideoOptions(detector="hog", directions=(f"s={direction}",), edits=("s=0:0,4:1",))
    report = edit_video(m, clip, tmp_path / "out", opts, log=lambda line: None)
    assert probe(tmp_path / "out" / "result.mp4").frames == 5 and report["edit_strengths"] == [[0, 0.25, 0.5, 0.75, 1.0]]
    if family == "hyperstyle":  # one generator per frame already: tuning one is refused, in one line, before any work
        for flag in ("pti", "stitch"):
            _one_line_error(lambda f=flag: edit_video(m, clip, tmp_path / f, VideoOptions(detector="hog", **{f: True})), "HyperStyle", InputError)
            assert not (tmp_path / flag).exists()


@pytest.mark.slow
def test_real_size_model_on_a_short_clip(photo, tmp_path):
    """The full-size pSp (IR-SE50 encoder, 1024 px generator, random weights) through every
    stage on three 512 px frames: crops at 256, the generator's output pooled to them."""
    from instyle.models import create_psp

    torch.manual_seed(0)
    m = create_psp().eval()
    clip = write_clip(tmp_path / "real.mp4", frames(photo, 3, 512))
    report = edit_video(m, clip, tmp_path / "out", VideoOptions(detector="hog", batch_size=1), log=lambda line: None)
    info = probe(tmp_path / "out" / "result.mp4")
    assert (info.frames, info.width, info.fps, info.audio) == (3, 512, FPS, True)
    assert report["interpolated_frames"] == [] and len(report["reconstruction"]["per_frame"]["mse"]) == 3
    from PIL import Image

    with Image.open(tmp_path / "out" / "cache" / "render" / "recon_000000.png") as im:
        assert im.size == (256, 256)


@pytest.mark.slow
def test_a_changed_edit_redoes_only_the_stages_after_it(baseline, model, clip, direction, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(baseline[0], out)
    worked = set()
    report = edit_video(model, clip, out, _options(direction, edits=("age=-2",)), on_step=lambda s, k: worked.add(s),
                        log=lambda line: None)
    assert worked == {"render", "stitch", "write"}
    assert report["edit_strengths"] == [[-2.0] * N] and report["reconstruction"] == baseline[1]["reconstruction"]
    assert report["flicker"] != baseline[1]["flicker"]


def test_truncated_clip_is_one_line(clip, tmp_path):
    from instyle.video import iter_frames

    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the index at the end is lost: FFmpeg cannot open it
    with pytest.raises(VideoError) as e:
        info = probe(cut)
        list(iter_frames(cut, Selection.make(info)))
    assert str(cut) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_pti_time_budget_stops_and_a_rerun_continues(model, clip, direction, tmp_path):
    opts = _options(direction, pti_config=ClipTuneConfig(steps=3, time_budget=1e-6), stitch=False, side_by_side=False)
    first = edit_video(model, clip, tmp_path / "out", opts, log=lambda line: None)
    assert first["pti"]["stopped_by_time_budget"] and first["pti"]["passes"] == 1  # one pass, then the budget was spent
    again = edit_video(model, clip, tmp_path / "out", opts, log=lambda line: None)
    assert again["pti"]["passes"] == 2 and again["reconstruction"] != first["reconstruction"]
    full = edit_video(model, clip, tmp_path / "out", _options(direction, pti_config=ClipTuneConfig(steps=3), stitch=False,
                                                                side_by_side=False), log=lambda line: None)
    assert full["pti"]["passes"] == 3 and not full["pti"]["stopped_by_time_budget"]
