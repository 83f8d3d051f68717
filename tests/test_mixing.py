"""Style mixing: the original's latent_mask rule on latents, random styles, determinism, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.cli.main import main
from instyle.inference.mixing import default_latent_mask, mix_latents, parse_latent_mask, random_w_plus, style_mix
from instyle.models import get_config
from instyle.models.init import random_psp


@pytest.fixture(scope="module")
def tiny():
    return random_psp(get_config("tiny"), seed=1, latent_samples=256)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny) -> Path:
    d = tmp_path_factory.mktemp("mix") / "tiny"
    tiny.save_pretrained(d)
    return d


def test_parse_latent_mask():
    assert parse_latent_mask("8-17") == list(range(8, 18))
    assert parse_latent_mask("0,1,4-6") == [0, 1, 4, 5, 6]
    assert parse_latent_mask(" 3 , 1,1 ") == [1, 3]
    assert parse_latent_mask([5, 2]) == [2, 5]
    assert default_latent_mask(18) == list(range(8, 18))
    assert default_latent_mask(10) == [8, 9]
    for bad, msg in [("8-", "not an index"), ("a", "not an index"), ("9-3", "backwards"), (",", "names no layers")]:
        with pytest.raises(ValueError, match=msg):
            parse_latent_mask(bad)
    with pytest.raises(ValueError, match=r"outside .*\[0, 9\]"):
        parse_latent_mask("8-10", n_styles=10)


def test_replace_copies_exactly_the_masked_layers():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 10, 64, generator=g)
    inject = torch.randn(1, 10, 64, generator=g)
    mask = [2, 5, 9]
    out = mix_latents(w, inject, mask, alpha=None)
    for i in range(10):
        expected = inject[:, i].expand(3, -1) if i in mask else w[:, i]
        assert torch.equal(out[:, i], expected), i
    assert not torch.equal(out, w)  # the input tensor itself is untouched
    assert torch.equal(w, torch.randn(3, 10, 64, generator=torch.Generator().manual_seed(0)))


def test_alpha_blends_linearly():
    g = torch.Generator().manual_seed(1)
    w, inject = torch.randn(2, 10, 64, generator=g), torch.randn(2, 10, 64, generator=g)
    mask = [4, 5, 6, 7]
    outs = {a: mix_latents(w, inject, mask, alpha=a) for a in (0.0, 0.25, 0.5, 1.0)}
    assert torch.equal(outs[0.0], w)
    assert torch.allclose(outs[1.0], mix_latents(w, inject, mask, None), atol=0, rtol=0)
    torch.testing.assert_close(outs[0.5][:, mask], 0.5 * inject[:, mask] + 0.5 * w[:, mask])
    torch.testing.assert_close(outs[0.25], 0.75 * outs[0.0] + 0.25 * outs[1.0])
    others = [i for i in range(10) if i not in mask]
    assert torch.equal(outs[0.25][:, others], w[:, others])


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_mix_latents_matches_the_original_forward(tiny, alpha):
    """The forward's latent_mask/inject_latent/alpha path mixes exactly like mix_latents."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    inject = random_w_plus(tiny, 1, seed=5)
    mask = default_latent_mask(tiny.n_styles)
    with torch.no_grad():
        _, fed = tiny(x, latent_mask=mask, inject_latent=inject, alpha=alpha, return_latents=True, randomize_noise=False)
        ours = mix_latents(tiny.encode(x), inject, mask, alpha)
    torch.testing.assert_close(ours, fed, atol=1e-6, rtol=0)


def test_random_styles_are_the_original_input_code_latents(tiny):
    z = torch.randn(3, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        _, expected = tiny(z, input_code=True, return_latents=True, randomize_noise=False)
    torch.testing.assert_close(random_w_plus(tiny, 3, seed=7), expected, atol=1e-6, rtol=0)
    center = tiny.decoder.latent_avg
    flat = random_w_plus(tiny, 2, seed=7, truncation=0.0)
    torch.testing.assert_close(flat, center.expand(2, tiny.n_styles, -1), atol=1e-6, rtol=0)
    half = random_w_plus(tiny, 3, seed=7, truncation=0.5)
    torch.testing.assert_close(half, center + 0.5 * (expected - center), atol=1e-5, rtol=0)


def test_style_mix_shapes_determinism_and_kept_layers(tiny):
    w = random_w_plus(tiny, 2, seed=11)
    a = style_mix(tiny, w, n_outputs=3, seed=4)
    assert a.shape == (2, 3, tiny.n_styles, 64)
    assert torch.equal(a, style_mix(tiny, w, n_outputs=3, seed=4))
    assert not torch.equal(a, style_mix(tiny, w, n_outputs=3, seed=5))
    kept = list(range(8))
    assert torch.equal(a[:, :, kept], w[:, None, kept].expand(-1, 3, -1, -1))
    # output k of every input shares one random style on the masked layers
    assert torch.equal(a[0, :, 8:], a[1, :, 8:])
    one = style_mix(tiny, w[0], n_outputs=3, seed=4, latent_mask="0-1", alpha=0.5)
    assert one.shape == (1, 3, tiny.n_styles, 64)
    assert torch.equal(one[0, :, 2:], w[0, None, 2:].expand(3, -1, -1))
    with pytest.raises(ValueError, match="alpha"):
        style_mix(tiny, w, alpha=1.5)


def test_cli_mix_writes_grids_latents_and_reports_bad_inputs(tiny, tiny_dir, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 70, 3), dtype=np.uint8)).save(src / "a.png")
    (src / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    rc = main(["mix", str(src / "a.png"), str(src / "broken.png"), "-c", str(tiny_dir), "-o", str(out), "-n", "3",
               "--latent-mask", "6-9", "--mix-alpha", "0.5", "--seed", "2", "--device", "cpu", "--save-latents"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "broken.png" in captured.err
    assert sorted(p.name for p in (out / "outputs").iterdir()) == ["a_0.png", "a_1.png", "a_2.png"]
    assert (out / "a.png").is_file() and (out / "grid.png").is_file()
    lat = np.load(out / "latents" / "a.npy")
    assert lat.shape == (3, tiny.n_styles, 64)
    assert "layers 6-9 random" in captured.out
    with torch.no_grad():
        from instyle.inference.preprocess import prepare_input

        w = tiny.encode(prepare_input(src / "a.png", tiny.config)[None])
    expected = style_mix(tiny, w, 3, latent_mask=range(6, 10), alpha=0.5, seed=2)[0]
    np.testing.assert_allclose(lat, expected.numpy(), atol=1e-5)


def test_cli_mix_help_explains_indexing(capsys):
    with pytest.raises(SystemExit):
        main(["mix", "--help"])
    text = capsys.readouterr().out
    assert "0-BASED" in text and "1-based" in text and "--mix-alpha" in text


def test_inverter_verbs(tiny):
    from instyle.inference.inverter import Inverter

    inv = Inverter(tiny, device="cpu")
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert len(inv.mix(photo, n_outputs=2, seed=1)) == 2
    code = random_w_plus(tiny, 1, seed=1)[0]
    frames = inv.interpolate(photo, code, photo, steps=3)
    assert len(frames) == 5 and frames[0].size == (64, 64)
    edits = inv.edit(code, torch.ones(64), strengths=[0.0, 1.0])
    same_batch = inv.decode(torch.stack([code, code + 1.0]))
    assert np.array_equal(np.asarray(edits[0]), np.asarray(same_batch[0]))


def test_latents_written_by_mix_are_read_by_edit_and_interpolate(tiny, tiny_dir, tmp_path, capsys):
    """mix --save-latents writes [N, n_styles, D] per input; edit and interpolate used to
    refuse it as 'does not fit this model'. Every code of the file is a source now."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(src / "a.png")
    mixed = tmp_path / "mixed"
    assert main(["mix", str(src / "a.png"), "-c", str(tiny_dir), "-o", str(mixed), "-n", "3", "--device", "cpu",
                 "--save-latents"]) == 0
    lat = mixed / "latents" / "a.npy"
    direction = tmp_path / "d.npy"
    np.save(direction, np.ones((1, 64), np.float32))
    edited = tmp_path / "edited"
    assert main(["edit", "direction", str(lat), "-c", str(tiny_dir), "--direction", str(direction), "--out",
                 str(edited), "--device", "cpu", "--strengths=-1,1"]) == 0
    codes = np.load(lat)
    for k in range(3):  # one edited strip per code of the file
        strip = np.load(edited / "latents" / "a" / f"{k}.npy")
        np.testing.assert_allclose(strip, codes[k][None] + np.array([-1.0, 1.0])[:, None, None], atol=1e-5)
    frames = tmp_path / "frames"
    assert main(["interpolate", str(lat), "-c", str(tiny_dir), "-o", str(frames), "--steps", "3", "--device", "cpu"]) == 0
    capsys.readouterr()
    # a real mismatch names both shapes
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 5, 64), np.float32))
    assert main(["edit", "direction", str(bad), "-c", str(tiny_dir), "--direction", str(direction), "--out",
                 str(tmp_path / "e2"), "--device", "cpu"]) != 0
    err = capsys.readouterr().err
    assert "(2, 5, 64)" in err and f"[{tiny.n_styles}, 64]" in err
