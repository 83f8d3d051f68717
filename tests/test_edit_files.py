"""Published edit files (InterFaceGAN, GANSpace) and named edits, checked against the
original formulas written out here in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.cli.main import main
from instyle.inference.editing import (
    DirectionSet,
    GANSpacePCA,
    LatentDirection,
    edit_codes,
    load_edit,
    parse_edit,
    resolve_edit,
)
from instyle.inference.latents import load_latent
from instyle.models.encoders.psp_encoders import EncoderConfig
from instyle.models.init import random_psp
from instyle.models.psp import PSPConfig
from instyle.models.stylegan2 import GeneratorConfig
from tests.conftest import shared_path


def edits_file(*parts: str):
    return shared_path("data", "edits", *parts)


def _raw(path) -> object:
    """The file as the original code sees it (read independently of instyle)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _ffhq_psp(seed: int = 0):
    """A random pSp with the FFHQ latent layout (18 styles of 512) but tiny channels."""
    gen = GeneratorConfig(size=1024, style_dim=512, n_mlp=1, channels={2**i: 4 for i in range(2, 11)})
    enc = EncoderConfig(n_styles=18, style_dim=512, widths=(8, 8, 16, 16), units=(1, 1, 1, 1), input_size=64)
    return random_psp(PSPConfig(encoder=enc, generator=gen, resize_to=64), seed=seed, latent_samples=64)


def test_published_files_load_by_content():
    age = load_edit(edits_file("ffhq", "age.pt"), n_styles=18, style_dim=512)
    assert isinstance(age, LatentDirection) and age.vector.shape == (512,)
    pose = load_edit(edits_file("ffhq", "pose.pt"), n_styles=18, style_dim=512)  # CUDA-tagged storages
    assert isinstance(pose, LatentDirection) and pose.vector.shape == (18, 512)
    assert load_edit(edits_file("ffhq", "smile.pt")).vector.shape == (512,)
    for f in (("ffhq", "ffhq_pca.pt"), ("cars", "cars_pca.pt")):
        pca = load_edit(edits_file(*f), n_styles=16, style_dim=512)
        assert isinstance(pca, GANSpacePCA)
        assert (pca.mean.shape, pca.comp.shape, pca.std.shape) == ((512,), (80, 512), (80,))
    with pytest.raises(ValueError, match="18 rows but the model has 16"):
        load_edit(edits_file("ffhq", "pose.pt"), n_styles=16, style_dim=512)
    with pytest.raises(ValueError, match="512 components .* 64"):
        load_edit(edits_file("ffhq", "age.pt"), n_styles=10, style_dim=64)


def test_load_edit_refuses_other_content(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an edit file.*found \\['weights'\\]"):
        load_edit(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="junk.pt"):
        load_edit(tmp_path / "junk.pt")
    # kind follows the content, not the suffix: an .npy saved under another name
    with open(tmp_path / "d.pt", "wb") as f:
        np.save(f, np.ones(8, dtype=np.float32))
    assert isinstance(load_edit(tmp_path / "d.pt"), LatentDirection)
    np.savez(tmp_path / "s.npz", directions=np.eye(3, 8, dtype=np.float32), layers=np.array([1, 2]))
    sefa = load_edit(tmp_path / "s.npz", n_styles=4, style_dim=8)
    assert isinstance(sefa, DirectionSet) and sefa.layers == (1, 2)
    w = torch.zeros(4, 8)
    out = edit_codes(w, sefa, parse_edit("sefa:1=2"))[0]
    assert out[[1, 2], 1].eq(2).all() and out.abs().sum() == 4


@pytest.mark.parametrize("name", ["age", "smile", "pose"])
def test_interfacegan_edit_is_w_plus_factor_times_direction(name):
    path = edits_file("ffhq", f"{name}.pt")
    d = _raw(path).numpy().astype(np.float64)  # [1, 512] or [1, 18, 512]
    rng = np.random.default_rng(0)
    w = rng.standard_normal((18, 512))
    factors = [-5.0, -1.5, 0.0, 2.0, 5.0]
    expected = np.stack([(w[None] + f * d)[0] for f in factors])  # latent + factor * direction, broadcast
    edit = load_edit(path, 18, 512)
    got = edit_codes(torch.from_numpy(w).float(), edit, parse_edit(f"{name}=" + ",".join(map(str, factors))))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("file,n_styles", [(("ffhq", "ffhq_pca.pt"), 18), (("cars", "cars_pca.pt"), 16)])
def test_ganspace_edit_matches_the_e4e_formula(file, n_styles):
    path = edits_file(*file)
    raw = {k: v.numpy().astype(np.float64) for k, v in _raw(path).items()}
    rng = np.random.default_rng(1)
    w = rng.standard_normal((n_styles, 512)) + raw["mean"]
    edit = load_edit(path, n_styles, 512)
    for idx, start, end, strength in [(54, 7, 8, 20.0), (0, 0, 5, -2.0), (79, 3, n_styles, 7.5)]:
        w_coord = np.sum((w - raw["mean"])[0] * raw["comp"][idx].reshape(-1)) / raw["std"][idx]
        delta = (strength - w_coord) * raw["comp"][idx] * raw["std"][idx]  # [1, 512]
        expected = w.copy()
        expected[start:end] += np.repeat(delta, end - start, 0)
        got = edit_codes(torch.from_numpy(w).float(), edit, parse_edit(f"ganspace:{idx},{start},{end}={strength}"))
        np.testing.assert_allclose(got[0].numpy(), expected, atol=2e-4)
        if start == 0:  # strength is the coordinate the first style ends at, not a step
            assert float(edit.coordinate(got[0], idx)) == pytest.approx(strength, abs=1e-3)
    with pytest.raises(ValueError, match="idx,start,end"):
        edit_codes(torch.zeros(n_styles, 512), edit, parse_edit("ganspace=3"))
    with pytest.raises(ValueError, match="component 80 is not one of 0..79"):
        edit_codes(torch.zeros(n_styles, 512), edit, parse_edit("ganspace:80,0,1=3"))


def test_parse_edit_and_resolve():
    spec = parse_edit("age=-3..3:7")
    assert spec.name == "age" and spec.component is None and spec.strengths == (-3, -2, -1, 0, 1, 2, 3)
    spec = parse_edit("ganspace:54,7,8=20")
    assert spec.component == (54, 7, 8) and spec.strengths == (20.0,) and spec.label(20) == "ganspace:54,7,8=+20"
    assert parse_edit("smile=-1,0,1").strengths == (-1.0, 0.0, 1.0)
    for bad in ("age", "age=", "=3", "g:a,b=1"):
        with pytest.raises(ValueError, match="edit"):
            parse_edit(bad)
    pca = GANSpacePCA(torch.zeros(4), torch.eye(4), torch.ones(4), "p")
    assert resolve_edit("ganspace", {"ffhq_pca": pca}) is pca
    with pytest.raises(ValueError, match="loaded: ffhq_pca"):
        resolve_edit("age", {"ffhq_pca": pca})


@pytest.mark.slow
def test_cli_named_edits_on_the_real_files(tmp_path, capsys):
    model_dir = tmp_path / "ffhq_layout"
    _ffhq_psp().save_pretrained(model_dir)
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    age, pca = edits_file("ffhq", "age.pt"), edits_file("ffhq", "ffhq_pca.pt")
    out = tmp_path / "out"
    args = ["edit", "direction", str(tmp_path / "a.png"), "-c", str(model_dir), "--device", "cpu", "-o", str(out),
            "-d", f"older={age}", "-d", str(pca), "--edit", "older=-3..3:3", "--edit", "ganspace:54,7,8=20"]
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "a_older.png").is_file() and (out / "a_ganspace_54_7_8.png").is_file() and (out / "grid.png").is_file()
    assert sorted(p.name for p in (out / "a" / "older").iterdir()) == [
        "strength_+0.000.png", "strength_+3.000.png", "strength_-3.000.png"]
    older = load_latent(out / "latents" / "a" / "older.npy")[0].numpy().astype(np.float64)
    w = older[1]  # the strength-0 code is the encoder's latent
    d = _raw(age).numpy().astype(np.float64)
    np.testing.assert_allclose(older, np.stack([w + f * d[0] for f in (-3, 0, 3)]), atol=1e-5)
    g = load_latent(out / "latents" / "a" / "ganspace_54_7_8.npy")[0].numpy()[0].astype(np.float64)
    raw = {k: v.numpy().astype(np.float64) for k, v in _raw(pca).items()}
    coord = np.sum((w - raw["mean"])[0] * raw["comp"][54].reshape(-1)) / raw["std"][54]
    expected = w.copy()
    expected[7] += ((20 - coord) * raw["comp"][54] * raw["std"][54])[0]
    np.testing.assert_allclose(g, expected, atol=2e-4)
    # the .pt direction without --edit, as .npy directions always worked
    assert main(["edit", "direction", str(tmp_path / "a.png"), "-c", str(model_dir), "--device", "cpu",
                 "-o", str(tmp_path / "plain"), "-d", str(edits_file("ffhq", "pose.pt")), "--strengths=-1,1"]) == 0
    assert (tmp_path / "plain" / "a" / "strength_-1.000.png").is_file()
    # GANSpace without a component, and a bad component, fail before any output is written
    for bad in ([], ["--edit", "ganspace:54,7,30=1"]):
        assert main(["edit", "direction", str(tmp_path / "a.png"), "-c", str(model_dir), "--device", "cpu",
                     "-o", str(tmp_path / "bad"), "-d", str(pca), *bad]) == 2
        assert "ganspace" in capsys.readouterr().err.lower()
    assert not (tmp_path / "bad").exists()
