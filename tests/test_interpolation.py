"""W+ interpolation: exact endpoints, linear frames, paths through several codes, animations, CLI."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.cli.main import main
from instyle.inference.interpolation import interpolate, interpolate_path, interpolation_weights, save_animation
from instyle.inference.latents import save_latent
from instyle.inference.mixing import random_w_plus
from instyle.models import get_config
from instyle.models.init import random_psp


@pytest.fixture(scope="module")
def tiny():
    return random_psp(get_config("tiny"), seed=2, latent_samples=256)


def test_weights_run_from_one_to_zero():
    lam = interpolation_weights(5)
    assert lam.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError, match=">= 2"):
        interpolation_weights(1)


def test_interpolate_is_linear_with_exact_endpoints():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(10, 64, generator=g), torch.randn(1, 10, 64, generator=g)
    frames = interpolate(a, b, 5)
    assert frames.shape == (5, 10, 64)
    assert torch.equal(frames[0], a) and torch.equal(frames[-1], b[0])
    torch.testing.assert_close(frames[1], 0.75 * a + 0.25 * b[0])
    torch.testing.assert_close(frames[2], (a + b[0]) / 2)
    with pytest.raises(ValueError, match="differ in shape"):
        interpolate(a, torch.zeros(9, 64), 3)


def test_interpolation_endpoints_reproduce_the_endpoint_images(tiny):
    w = random_w_plus(tiny, 2, seed=3) + 0.1 * torch.randn(2, tiny.n_styles, 64, generator=torch.Generator().manual_seed(1))
    frames = interpolate(w[0], w[1], 4)
    with torch.no_grad():
        # one code per call: batch composition may change float rounding in the convolutions
        imgs = [tiny.decode(f[None]) for f in frames]
        ends = [tiny.decode(c[None]) for c in w]
    assert torch.equal(imgs[0], ends[0]) and torch.equal(imgs[-1], ends[1])
    assert not torch.equal(imgs[1], imgs[0])


def test_path_through_several_codes():
    ws = [torch.full((4, 8), float(v)) for v in (0, 1, 3)]
    path = interpolate_path(ws, 3)
    assert path.shape == (5, 4, 8)
    assert [float(f[0, 0]) for f in path] == [0.0, 0.5, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="at least two"):
        interpolate_path(ws[:1], 3)


def _frames(n=4, size=32):
    return [Image.new("RGB", (size, size), (60 * i, 255 - 60 * i, 100)) for i in range(n)]


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_save_animation_pillow(tmp_path, suffix):
    path = save_animation(_frames(), tmp_path / f"anim{suffix}", fps=5, boomerang=True)
    with Image.open(path) as im:
        assert im.n_frames == 6  # 4 forward + 2 back
        assert im.info.get("duration") == 200 or suffix == ".webp"
    assert not list(tmp_path.glob(".*.tmp*"))
    with pytest.raises(ValueError, match="animations are written"):
        save_animation(_frames(), tmp_path / "x.avi")


def test_save_animation_mp4(tmp_path):
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        with pytest.raises(RuntimeError, match="imageio-ffmpeg"):
            save_animation(_frames(), tmp_path / "a.mp4")
        return
    path = save_animation(_frames(size=33), tmp_path / "a.mp4", fps=4)
    assert path.stat().st_size > 0


def test_cli_interpolate_images_and_latents(tiny, tmp_path, capsys):
    ckpt = tmp_path / "tiny"
    tiny.save_pretrained(ckpt)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    w_b = random_w_plus(tiny, 1, seed=9)[0]
    save_latent(tmp_path / "b.npy", w_b)
    out = tmp_path / "out"
    rc = main(["interpolate", str(tmp_path / "a.png"), str(tmp_path / "b.npy"), str(tmp_path / "missing.png"),
               "-c", str(ckpt), "-o", str(out), "--steps", "4", "--device", "cpu", "--save-latents"])
    captured = capsys.readouterr()
    assert rc == 1 and "missing.png" in captured.err
    assert len(list((out / "frames").glob("frame_*.png"))) == 4
    with Image.open(out / "interpolation.gif") as im:
        assert im.n_frames == 4
    lat = torch.from_numpy(np.load(out / "latents.npy"))
    assert torch.equal(lat[-1], w_b)
    with torch.no_grad():
        last = tiny.decode(w_b[None])[0]
    from instyle.inference.io import tensor_to_pil

    frame = np.asarray(Image.open(out / "frames" / "frame_0003.png")).astype(int)
    # decoded in a batch of 4 there: equal up to float rounding of batched convolutions
    assert np.abs(frame - np.asarray(tensor_to_pil(last)).astype(int)).max() <= 1
