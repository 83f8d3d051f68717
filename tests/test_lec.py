"""e4e's Latent Editing Consistency, against its definition written out with the model's parts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.cli.main import main
from instyle.evaluation.lec import filter_outliers, latent_editing_consistency


def _original_lec_batch(model, x, shift):
    """metrics/LEC.py: encoder + latent_avg, edit, decoder(randomize_noise=False) + face_pool,
    encode again, inverse edit, Frobenius distance per image, batch mean."""
    codes = model.encoder(x) + model.latent_avg[None]
    edited = codes + shift
    images, _ = model.decoder([edited], input_is_latent=True, randomize_noise=False)
    again = model.encoder(model.face_pool(images)) + model.latent_avg[None]
    return float((codes - (again - shift)).norm(2, dim=(1, 2)).mean())


def test_lec_matches_the_definition(tiny_psp):
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(2, 3, 64, 64, generator=g) * 2 - 1 for _ in range(3)]
    d = torch.randn(64, generator=g)
    with torch.no_grad():
        expected = [_original_lec_batch(tiny_psp, x, 3 * d) for x in batches]
    got = latent_editing_consistency(tiny_psp, batches, lambda c: c + 3 * d)
    np.testing.assert_allclose(got["per_batch"], expected, rtol=1e-4)
    assert len(got["per_image"]) == 6
    assert got["lec"] == pytest.approx(float(filter_outliers(expected).mean()), rel=1e-4)
    with pytest.raises(ValueError, match="shape"):
        latent_editing_consistency(tiny_psp, batches, lambda c: c[:, :3])


def test_filter_outliers_keeps_the_1st_to_99th_percentile():
    values = list(range(100)) + [1000]
    kept = filter_outliers(values)
    # np.percentile(..., 1, "lower") = 1 and (..., 99, "higher") = 99 for these 101 values
    assert kept.min() == 1 and kept.max() == 99 and len(kept) == 99


def test_cli_evaluate_lec(tmp_path, tiny_psp, capsys):
    tiny_psp.save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "data" / f"{i}.png")
    np.save(tmp_path / "older.npy", rng.standard_normal(64).astype(np.float32))
    args = ["evaluate", "-c", str(tmp_path / "m"), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
            "--device", "cpu", "--identity", "none", "--batch-size", "2", "--lec", str(tmp_path / "older.npy")]
    assert main([*args, "--lec-edit", "older=-2,2"]) == 2
    assert "one strength" in capsys.readouterr().err
    assert main(args) == 0
    result = json.loads((tmp_path / "r" / "lec.json").read_text())
    assert result["edit"] == "older=3" and result["n_images"] == 3 and len(result["per_batch"]) == 2
    assert result["lec"] > 0 and "LEC (older=3)" in capsys.readouterr().out
