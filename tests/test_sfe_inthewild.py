"""StyleFeatureEditor on photos in the wild: ``encode --align`` / ``edit direction --align``
crop as the original and paste results back into the photo (the other families' paste-back
records), and a user mask (``--mask``, the original's ``mask_path``) keeps regions unedited."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from instyle.cli.main import main
from instyle.errors import InputError
from instyle.inference.encoding import load_sfe_encoding
from instyle.inference.sfe_editing import MAX_MASK_SIDE, read_mask
from tests.helpers import png_header_only
from tests.test_sfe import D, images, tiny_model, write_official

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# --------------------------------------------------------------------------- the mask, as the original


def test_mask_scales_the_feature_delta_as_the_original(model):
    enc = model.encode(images(1))
    d = torch.randn(D, generator=torch.Generator().manual_seed(3))

    def fn(w):
        return w + 1.5 * d

    plain = model.edit(enc, fn)
    keep_all = model.edit(enc, fn, mask=torch.ones(1, 1, 40, 40))
    keep_none = model.edit(enc, fn, mask=torch.zeros(1, 1, 40, 40))
    torch.testing.assert_close(keep_none.edited_feat, plain.edited_feat, atol=0, rtol=0)
    # white everywhere: the delta vanishes, the feature is the inversion's (the latent still moves)
    torch.testing.assert_close(keep_all.edited_feat, model.edited_feature(enc.fused_feat), atol=1e-6, rtol=0)
    torch.testing.assert_close(keep_all.w_edit, plain.w_edit, atol=0, rtol=0)
    # a half mask: the original's delta * (1 - bilinear(mask, feature size))
    mask = torch.zeros(1, 1, 40, 40)
    mask[..., :, :20] = 1
    half = model.edit(enc, fn, mask=mask)
    delta = model.generator_feature(enc.w_e4e) - model.generator_feature(fn(enc.w_e4e))
    r = delta.shape[-1]
    want = model.edited_feature(enc.fused_feat, delta * (1 - F.interpolate(mask, size=(r, r), mode="bilinear", align_corners=False)))
    torch.testing.assert_close(half.edited_feat, want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="mask"):
        model.edit(enc, fn, mask=torch.ones(1, 3, 8, 8))


def test_read_mask_bounds_and_messages(tmp_path):
    m = np.zeros((20, 20, 3), dtype=np.uint8)
    m[:, :10, 0] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png")
    assert mask.shape == (1, 1, 20, 20) and mask[0, 0, 0, 0] == 1 and mask[0, 0, 0, -1] == 0  # the red channel, as the original
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(InputError, match="square"):
        read_mask(tmp_path / "wide.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="--mask"):
        read_mask(tmp_path / "text.png")
    huge = png_header_only(tmp_path / "huge.png", MAX_MASK_SIDE + 1, MAX_MASK_SIDE + 1)  # refused from its header
    with pytest.raises(InputError, match="--mask"):
        read_mask(huge)


def test_cli_mask_keeps_the_region_and_a_bad_mask_is_one_line(model, tmp_path, capsys):
    sfe, e4e, g = write_official(model, tmp_path)
    photo = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photo)
    direction = tmp_path / "age.npy"
    np.save(direction, np.random.default_rng(1).standard_normal(D).astype(np.float32))
    Image.new("RGB", (32, 32), (255, 255, 255)).save(tmp_path / "white.png")
    base = ["edit", "direction", str(photo), "-c", str(sfe), "--e4e", str(e4e), "--generator", str(g), "-d", str(direction),
            "--edit", "age=3", "--device", "cpu"]
    assert main([*base, "--mask", str(tmp_path / "white.png"), "--out", str(tmp_path / "masked")]) == 0, capsys.readouterr().err
    enc = load_sfe_encoding(tmp_path / "masked" / "latents" / "a" / "age.npz")
    torch.testing.assert_close(enc.edited_feat, model.edited_feature(enc.fused_feat), atol=1e-5, rtol=0)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    assert main([*base, "--mask", str(tmp_path / "bad.png"), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "--mask" in err and "bad.png" in err and "Traceback" not in err
    assert not (tmp_path / "bad" / "a_age.png").exists()


# --------------------------------------------------------------------------- align and paste back


@pytest.mark.slow  # three commands with dlib alignment: about 6 s on 2 CPU cores
def test_encode_and_edit_align_paste_back_into_the_photo(model, faces_dir, tmp_path, capsys):
    pytest.importorskip("dlib", reason="face alignment needs dlib (pip install 'instyle[faces]')")
    sfe, e4e, g = write_official(model, tmp_path)
    src = tmp_path / "in"
    src.mkdir()
    (src / "face.jpg").write_bytes((faces_dir / "unaligned" / "img5.jpg").read_bytes())
    files = ["-c", str(sfe), "--e4e", str(e4e), "--generator", str(g), "--device", "cpu"]
    out = tmp_path / "enc"
    rc = main(["encode", str(src), "--out", str(out), "--align", "--paste-back", "--save-latents", *files])
    assert rc == 0, capsys.readouterr().err
    index = json.loads((out / "aligned" / "alignment.json").read_text())
    assert list(index) == ["face.png"] and len(index["face.png"]["quad"]) == 4
    assert Image.open(out / "aligned" / "face.png").size == (32, 32)  # aligned at the generator's size, as the original
    original = np.asarray(Image.open(src / "face.jpg").convert("RGB"), dtype=np.int16)
    pasted = np.asarray(Image.open(out / "pasted" / "face.png").convert("RGB"), dtype=np.int16)
    diff = np.abs(pasted - original).max(-1)
    assert pasted.shape == original.shape and diff.mean() > 0.5 and diff[:5, :5].max() == 0 and diff[-5:, -5:].max() == 0
    direction = tmp_path / "age.npy"
    np.save(direction, np.random.default_rng(1).standard_normal(D).astype(np.float32))
    # the saved encoding finds its photo through encode --align's records
    rc = main(["edit", "direction", str(out / "latents" / "face.npz"), "-d", str(direction), "--edit", "age=-2,2",
               "--paste-back", "--out", str(tmp_path / "e1"), *files])
    assert rc == 0, capsys.readouterr().err
    one = Image.open(tmp_path / "e1" / "pasted" / "face" / "age" / "strength_+2.000.png")
    assert one.size == (original.shape[1], original.shape[0])
    # a photo aligned by edit itself
    rc = main(["edit", "direction", str(src / "face.jpg"), "-d", str(direction), "--edit", "age=2", "--align",
               "--paste-back", "--out", str(tmp_path / "e2"), *files])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "e2" / "aligned" / "alignment.json").read_text())["face.png"]["quad"] == index["face.png"]["quad"]
    two = np.asarray(Image.open(tmp_path / "e2" / "pasted" / "face" / "age" / "strength_+2.000.png"), dtype=np.int16)
    assert np.abs(two - np.asarray(one, dtype=np.int16)).max() <= 1  # the same crop, the same edit
