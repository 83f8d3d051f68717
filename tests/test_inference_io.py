"""Image I/O: every kind of bad or unusual input gets a clear, file-naming result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.inference.io import (
    ImageLoadError,
    collect_inputs,
    load_image,
    make_grid,
    pil_to_tensor,
    save_image,
    tensor_to_pil,
)
from instyle.inference.latents import load_latent, save_latent

from .helpers import png_header_only, rgb


@pytest.fixture
def good_png(tmp_path) -> Path:
    p = tmp_path / "good.png"
    rgb().save(p)
    return p


def test_load_rgb_png(good_png):
    img = load_image(good_png)
    assert img.mode == "RGB" and img.size == (40, 30)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "1", "CMYK"])
def test_modes_are_converted_to_rgb(tmp_path, mode):
    p = tmp_path / f"img_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    img = rgb().convert(mode) if mode != "LA" else rgb().convert("L").convert("LA")
    img.save(p)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (40, 30)


def test_rgba_transparency_composited_over_white(tmp_path):
    p = tmp_path / "transparent.png"
    Image.new("RGBA", (32, 32), (10, 20, 30, 0)).save(p)
    assert np.asarray(load_image(p)).min() == 255


def test_16bit_png(tmp_path):
    p = tmp_path / "deep.png"
    arr = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    out = np.asarray(load_image(p))
    assert out.shape == (32, 32, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255  # full range kept, not clipped


def test_exif_orientation_applied(tmp_path):
    p = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgb((40, 20)).save(p, exif=exif)
    assert load_image(p).size == (20, 40)


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"this is not an image at all\n" * 10, "not an image"),
        ("notes.txt", b"hello", "not an image"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ImageLoadError) as e:
        load_image(p)
    assert str(p) in str(e.value) and reason in str(e.value)


def test_truncated_image(tmp_path, good_png):
    data = good_png.read_bytes()
    p = tmp_path / "truncated.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated|corrupt"):
        load_image(p)


def test_truncated_jpeg(tmp_path):
    src = tmp_path / "full.jpg"
    rgb((64, 64)).save(src, quality=95)
    p = tmp_path / "cut.jpg"
    p.write_bytes(src.read_bytes()[:300])
    with pytest.raises(ImageLoadError, match="truncated|corrupt"):
        load_image(p)


def test_tiny_and_huge_images(tmp_path):
    tiny = tmp_path / "tiny.png"
    rgb((8, 8)).save(tiny)
    with pytest.raises(ImageLoadError, match="too small"):
        load_image(tiny)
    huge = png_header_only(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(huge)


def test_folder_and_missing_path(tmp_path):
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError, match="cannot read"):
        load_image(tmp_path / "missing.png")


def test_collect_inputs_files_folders_globs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "sub").mkdir()
    for p in ["a/x.png", "a/sub/y.jpg", "a/notes.txt", "z.png"]:
        (tmp_path / p).write_bytes(b"x")
    paths, problems = collect_inputs(
        [tmp_path / "a", str(tmp_path / "*.png"), tmp_path / "a" / "x.png", tmp_path / "nope.png", str(tmp_path / "*.gif")]
    )
    names = [p.name for p in paths]
    assert names == ["y.jpg", "x.png", "z.png"]  # folder sorted recursively, duplicates dropped, .txt ignored
    assert len(problems) == 2 and "no such file" in problems[0] and "matched no files" in problems[1]


def test_tensor_roundtrip_and_grid(tmp_path):
    img = rgb((64, 64))
    t = pil_to_tensor(img, size=None)
    assert t.shape == (3, 64, 64) and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_pil(t)), np.asarray(img))
    resized = pil_to_tensor(img, size=32)
    assert resized.shape == (3, 32, 32)
    grid = make_grid([[img, t], [img]], cell=32, pad=2)
    assert grid.size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)
    out = save_image(grid, tmp_path / "grid")
    assert out.suffix == ".png" and Image.open(out).size == grid.size
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_save_image_is_atomic_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    rgb().save(target)
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(rgb(), target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp*"))


def test_latent_files(tmp_path):
    w = torch.randn(14, 512)
    save_latent(tmp_path / "a.npy", w)
    back, noise, meta = load_latent(tmp_path / "a.npy")
    assert back.shape == (1, 14, 512) and torch.equal(back[0], w) and noise is None and meta == {}
    assert np.load(tmp_path / "a.npy").shape == (14, 512)
    noises = [torch.randn(1, 1, 4, 4), torch.randn(1, 1, 8, 8)]
    save_latent(tmp_path / "b.npz", w[None], noise=noises, meta={"checkpoint": "x"})
    back, noise2, meta = load_latent(tmp_path / "b.npz")
    assert torch.equal(back, w[None]) and all(torch.equal(a, b) for a, b in zip(noise2, noises))
    assert meta == {"checkpoint": "x"}
    with pytest.raises(ValueError, match=".npy or .npz"):
        save_latent(tmp_path / "c.txt", w)
    with pytest.raises(ValueError, match="need a .npz"):
        save_latent(tmp_path / "d.npy", w, meta={"a": 1})
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.npy"):
        load_latent(tmp_path / "bad.npy")
