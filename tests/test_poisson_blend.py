"""``--blend poisson``: StyleFeatureEditor's optional Poisson blend after paste-back
(``runners/simple_runner.py``, ``unalign``), run by the ``fpie`` package (extra ``poisson``).

The original pastes the crop hard over every pixel its perspective warp covers (``unaligned > 0``),
writes ``(1 - mask) * 255`` as fpie's mask and calls
``fpie -s PHOTO -m mask.jpg -t edited.png -o OUT -n 5000 -b taichi-gpu -g src``. The tests restate
that mask from the original's own code and run fpie's own command on the same files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from instyle.errors import MissingExtraError
from instyle.inference import pasteback
from instyle.inference.pasteback import paste_result, poisson_paste


def _photo_crop_quad():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:72, 0:96].astype(np.float32)
    photo = np.stack([xx * 2, yy * 3, 120 + 40 * np.sin(xx / 7)], -1) + rng.normal(0, 4, (72, 96, 3))
    photo = Image.fromarray(np.clip(np.rint(photo), 0, 255).astype(np.uint8))
    # no black pixel in the crop: the original's mask is "any channel > 0" of the warped crop
    crop = Image.fromarray(rng.integers(30, 226, (40, 40, 3), dtype=np.uint8))
    c, x = np.array([47.3, 35.6]), np.array([17.2, 3.1])  # an FFHQ quad: a rotated square
    y = np.array([-x[1], x[0]])
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return photo, crop, quad


def _original_mask(photo: Image.Image, crop: Image.Image, quad: np.ndarray) -> np.ndarray:
    """``simple_runner.unalign``'s mask, restated (no shrink / crop / pad in the record)."""
    cv2 = pytest.importorskip("cv2")
    s = crop.width
    source_quad = [(0, 0), (s, 0), (s, s), (0, s)]
    dest_quad = np.array([quad[3], quad[0], quad[1], quad[2]])
    m = cv2.getPerspectiveTransform(dest_quad.astype(np.float32), np.array(source_quad).astype(np.float32))
    unaligned = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT).transform(
        photo.size, Image.Transform.PERSPECTIVE, m.reshape(-1), Image.Resampling.BILINEAR
    )
    mask = np.asarray(unaligned) > 0
    return mask[:, :, 0] | mask[:, :, 1] | mask[:, :, 2]


def test_poisson_blend_is_fpie_on_the_originals_mask(tmp_path, monkeypatch):
    pytest.importorskip("fpie", reason="fpie is not installed (pip install 'instyle[poisson]')")
    photo, crop, quad = _photo_crop_quad()
    n = 40
    ours = np.asarray(poisson_paste(photo, crop, quad, iterations=n, backend="numpy"))

    # what we hand fpie, caught at its door
    seen = {}
    from fpie import process

    reset = process.EquProcessor.reset

    def spy(self, src, mask, tgt, on_src, on_tgt):
        seen.update(src=src.copy(), mask=mask.copy(), tgt=tgt.copy(), offsets=(on_src, on_tgt), grad=self.gradient)
        return reset(self, src, mask, tgt, on_src, on_tgt)

    monkeypatch.setattr(process.EquProcessor, "reset", spy)
    poisson_paste(photo, crop, quad, iterations=1, backend="numpy")
    inside = _original_mask(photo, crop, quad)
    assert 200 < inside.sum() < inside.size - 200
    np.testing.assert_array_equal(seen["mask"], np.repeat(np.where(inside, 0, 255)[..., None], 3, -1))
    np.testing.assert_array_equal(seen["src"], np.asarray(photo))
    assert seen["offsets"] == ((0, 0), (0, 0)) and seen["grad"] == "src"
    # outside the crop the target is the photo; inside, the crop
    np.testing.assert_array_equal(seen["tgt"][~inside], np.asarray(photo)[~inside])
    assert np.abs(seen["tgt"][inside].astype(int) - np.asarray(photo)[inside]).mean() > 20

    # fpie's own command on those files, with the original's settings (numpy for the backend)
    files = {}
    for name, arr in (("src", seen["src"]), ("mask", seen["mask"]), ("tgt", seen["tgt"])):
        files[name] = tmp_path / f"{name}.png"
        Image.fromarray(arr).save(files[name])
    out = tmp_path / "out.png"
    cmd = [sys.executable, "-c", "from fpie.cli import main; main()", "-s", str(files["src"]), "-m", str(files["mask"]),
           "-t", str(files["tgt"]), "-o", str(out), "-n", str(n), "-b", "numpy", "-g", "src"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    theirs = np.asarray(Image.open(out).convert("RGB"))
    np.testing.assert_array_equal(ours, theirs)
    # the blend moved the photo around the crop, and kept the crop
    assert np.abs(ours[~inside].astype(int) - np.asarray(photo)[~inside]).max() > 0
    np.testing.assert_array_equal(ours[inside], seen["tgt"][inside])


def test_missing_fpie_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "fpie", None)  # import fpie -> ImportError
    photo, crop, quad = _photo_crop_quad()
    photo.save(tmp_path / "photo.png")
    record = {"source": str(tmp_path / "photo.png"), "quad": quad.tolist()}
    with pytest.raises(MissingExtraError) as e:
        paste_result(record, crop, blend="poisson")
    msg = str(e.value)
    assert "\n" not in msg and "instyle[poisson]" in msg and "fpie" in msg
    # the default blend needs nothing
    assert paste_result(record, crop).size == photo.size
    with pytest.raises(ValueError, match="feather, poisson"):
        paste_result(record, crop, blend="seamless")
    assert pasteback.BLENDS == ("feather", "poisson")


@pytest.mark.parametrize("command", [
    ["encode", "{inp}", "-c", "{ckpt}", "--out", "{out}", "--align", "--paste-back", "--blend", "poisson"],
    ["edit", "direction", "{inp}", "-c", "{ckpt}", "-o", "{out}", "-d", "{ckpt}", "--paste-back", "--blend", "poisson"],
])
def test_cli_blend_poisson_without_fpie_is_one_error_line(command, monkeypatch, tmp_path, capsys):
    from instyle.cli import encode as encode_cli
    from instyle.cli.main import main

    monkeypatch.setitem(sys.modules, "fpie", None)
    monkeypatch.setattr(encode_cli, "_face_tools_ready", lambda: True)  # the check under test comes next
    names = {"ckpt": str(tmp_path / "missing.pt"), "inp": str(tmp_path / "in.png"), "out": str(tmp_path / "out")}
    rc = main([a.format(**names) for a in command])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0, err
    assert "instyle[poisson]" in err and "missing.pt" not in err  # refused before the model load


def test_cli_blend_needs_paste_back(tmp_path, capsys):
    from instyle.cli.main import main

    rc = main(["edit", "direction", str(tmp_path / "in.png"), "-c", str(tmp_path / "m.pt"), "-o", str(tmp_path / "o"),
               "-d", str(tmp_path / "d.npy"), "--blend", "poisson"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "instyle: error: --blend poisson needs --paste-back"
