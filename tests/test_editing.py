"""Latent directions, style combination and local (input-space) editing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.cli.main import main
from instyle.inference.editing import (
    apply_direction,
    box_mask,
    combine_styles,
    label_map_to_array,
    load_direction,
    paint_labels,
    parse_strengths,
    paste_region,
    transplant_labels,
)
from instyle.models import get_config
from instyle.models.init import random_psp


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("edit") / "tiny"
    random_psp(get_config("tiny"), seed=4, latent_samples=256).save_pretrained(d)
    return d


def test_strength_zero_is_identity_and_layers_restrict():
    g = torch.Generator().manual_seed(0)
    w, d = torch.randn(10, 64, generator=g), torch.randn(64, generator=g)
    out = apply_direction(w, d, [0.0, 1.0, -2.0])
    assert out.shape == (3, 10, 64)
    assert torch.equal(out[0], w)
    torch.testing.assert_close(out[1], w + d)
    torch.testing.assert_close(out[2], w - 2 * d)
    part = apply_direction(w[None], d, [3.0], layers=[0, 1, 2])[0]
    torch.testing.assert_close(part[:3], w[:3] + 3 * d)
    assert torch.equal(part[3:], w[3:])
    per_layer = torch.randn(10, 64, generator=g)
    torch.testing.assert_close(apply_direction(w, per_layer, [0.5])[0], w + 0.5 * per_layer)
    with pytest.raises(ValueError, match="does not fit"):
        apply_direction(w, torch.zeros(9, 64), [1.0])
    with pytest.raises(ValueError, match="outside"):
        apply_direction(w, d, [1.0], layers=[10])


def test_load_direction_shapes_and_errors(tmp_path):
    np.save(tmp_path / "d.npy", np.arange(64, dtype=np.float64))
    d = load_direction(tmp_path / "d.npy", n_styles=10, style_dim=64)
    assert d.dtype == torch.float32 and d.shape == (64,)
    np.save(tmp_path / "row.npy", np.ones((1, 64)))
    assert load_direction(tmp_path / "row.npy").shape == (64,)
    np.save(tmp_path / "full.npy", np.ones((10, 64)))
    assert load_direction(tmp_path / "full.npy", n_styles=10).shape == (10, 64)
    with pytest.raises(ValueError, match="12 rows"):
        np.save(tmp_path / "bad.npy", np.ones((12, 64)))
        load_direction(tmp_path / "bad.npy", n_styles=10)
    with pytest.raises(ValueError, match="512 components"):
        np.save(tmp_path / "dim.npy", np.ones(512))
        load_direction(tmp_path / "dim.npy", style_dim=64)
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npy"):
        load_direction(tmp_path / "junk.npy")
    assert parse_strengths("-3:3:7") == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    assert parse_strengths("-2, 0,2") == [-2.0, 0.0, 2.0]
    with pytest.raises(ValueError, match=r"start\.\.stop:count"):
        parse_strengths("1:2")


def test_combine_styles_takes_the_layers_from_b():
    a, b = torch.zeros(2, 10, 4), torch.ones(2, 10, 4)
    out = combine_styles(a, b, [0, 3])
    assert out[:, [0, 3]].eq(1).all() and out[:, [1, 2, 4, 5, 6, 7, 8, 9]].eq(0).all()
    assert torch.equal(combine_styles(a[0], b[0], []), a[0])


def test_label_editing_helpers():
    target = np.array([[0, 13, 13], [1, 1, 2], [0, 0, 0]])
    source = np.array([[13, 13, 0], [1, 5, 5], [0, 0, 13]])
    out = transplant_labels(target, source, [13])
    # union of the hair (13) regions takes the source's labels; the rest keeps the target's
    assert out.tolist() == [[13, 13, 0], [1, 1, 2], [0, 0, 13]]
    assert transplant_labels(target, source, [99]).tolist() == target.tolist()
    m = box_mask((3, 3), (1, 0, 3, 2))
    assert m.sum() == 4 and m[0, 1] and not m[2, 2]
    assert paint_labels(target, m, 7).tolist() == [[0, 7, 7], [1, 7, 7], [0, 0, 0]]
    img_a, img_b = np.zeros((3, 3, 3), np.uint8), np.full((3, 3, 3), 9, np.uint8)
    pasted = paste_region(img_a, img_b, m)
    assert (pasted[m] == 9).all() and (pasted[~m] == 0).all()
    with pytest.raises(ValueError, match="not inside"):
        box_mask((3, 3), (0, 0, 4, 2))
    with pytest.raises(ValueError, match="differ in size"):
        transplant_labels(target, source[:2], [13])
    p = Image.fromarray(target.astype(np.uint8), mode="L").convert("P")
    assert label_map_to_array(p, label_nc=19).tolist() == target.tolist()
    with pytest.raises(ValueError, match="19 classes"):
        label_map_to_array(np.array([[0, 20]]), label_nc=19)


def test_cli_edit_direction_combine_and_local(tiny_dir, tmp_path, capsys):
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    np.save(tmp_path / "d.npy", rng.standard_normal(64).astype(np.float32))
    base = ["-c", str(tiny_dir), "--device", "cpu"]
    out = tmp_path / "dir"
    assert main(["edit", "direction", str(tmp_path / "a.png"), "-d", str(tmp_path / "d.npy"), "--strengths=-1,0,1",
                 "--layers", "0-3", "-o", str(out), *base]) == 0
    assert sorted(p.name for p in (out / "a").iterdir()) == ["strength_+0.000.png", "strength_+1.000.png", "strength_-1.000.png"]
    # strength 0 reproduces the plain reconstruction
    assert main(["encode", str(tmp_path / "a.png"), "-o", str(tmp_path / "enc"), *base]) == 0
    same = np.asarray(Image.open(out / "a" / "strength_+0.000.png")).astype(int)
    plain = np.asarray(Image.open(tmp_path / "enc" / "a.png")).astype(int)
    assert np.abs(same - plain).max() <= 1  # decoded in a batch of 3 vs alone: float rounding only

    assert main(["edit", "combine", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--layers", "0-3",
                 "-o", str(tmp_path / "comb"), *base]) == 0
    assert (tmp_path / "comb" / "a_with_b.png").is_file()

    loc = tmp_path / "loc"
    assert main(["edit", "local", str(tmp_path / "a.png"), "--region-from", str(tmp_path / "b.png"),
                 "--box", "16,16,48,40", "-o", str(loc), *base]) == 0
    edited = np.asarray(Image.open(loc / "a_edited_input.png")).astype(int)
    orig, other = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("a", "b"))
    inside = box_mask((64, 64), (16, 16, 48, 40))
    assert np.array_equal(edited[inside], other[inside]) and np.array_equal(edited[~inside], orig[~inside])
    assert "edited 18.8% of the input" in capsys.readouterr().out
    assert main(["edit", "local", str(tmp_path / "a.png"), "--labels-from", str(tmp_path / "b.png"), "--classes", "1",
                 "-o", str(loc), *base]) == 1
    assert "label maps" in capsys.readouterr().err
