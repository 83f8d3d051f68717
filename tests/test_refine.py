"""Refinement (optimize, pti) on the random-weight setting where the ground truth is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.cli.main import main
from instyle.inference.refine import (
    RefineConfig,
    RefineError,
    apply_generator_delta,
    load_generator_delta,
    refine,
    register_refiner,
    save_generator_delta,
)
from instyle.losses.lpips import LPIPSLoss
from instyle.models import get_config
from instyle.models.init import random_psp


@pytest.fixture(scope="module")
def model():
    return random_psp(get_config("tiny"), seed=4, latent_samples=256)


@pytest.fixture(scope="module")
def lpips():
    return LPIPSLoss(random_backbone=True)  # the loss "with given weights": random ones in tests


@pytest.fixture(scope="module")
def known(model):
    """Two images rendered from known W+ codes (each style its own random w) plus noise:
    ``(clean ground truth, degraded target, encoder code)``."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        z = torch.randn(2 * model.n_styles, 64, generator=g)
        w_true = model.decoder.get_latent(z).view(2, model.n_styles, 64)
        clean = model.decode(w_true, resize=True)
        noisy = clean + 0.03 * torch.randn(clean.shape, generator=g)
        return clean, noisy, model.encode(noisy)


def _mse(a, b) -> float:
    return float(((a - b) ** 2).mean())


@pytest.mark.slow
def test_pti_and_optimize_beat_the_encoder(model, lpips, known):
    clean, noisy, w_enc = known
    with torch.no_grad():
        encoder_only = model.decode(w_enc, resize=True)
    for i in range(2):
        base = _mse(encoder_only[i], clean[i])
        opt = refine(model, noisy[i], w_enc[i], "optimize", RefineConfig(steps=20, lr=0.05), lpips)
        pti = refine(model, noisy[i], w_enc[i], "pti", RefineConfig(steps=20, lr=1e-3, locality_interval=4), lpips)
        assert base / _mse(opt.image, clean[i]) >= 2, (base, _mse(opt.image, clean[i]))
        assert base / _mse(pti.image, clean[i]) >= 5, (base, _mse(pti.image, clean[i]))
        torch.testing.assert_close(pti.latent, w_enc[i])  # the pivot is kept
        assert opt.steps == pti.steps == 20 and opt.losses[-1] < opt.losses[0]


def test_refinement_is_deterministic_and_bounded(model, lpips, known):
    _, noisy, w_enc = known
    cfg = RefineConfig(steps=3, optimize_noise=True, seed=5)
    a, b = (refine(model, noisy[0], w_enc[0], "optimize", cfg, lpips) for _ in range(2))
    assert torch.equal(a.latent, b.latent) and all(torch.equal(x, y) for x, y in zip(a.noise, b.noise))
    assert len(a.noise) == model.decoder.num_layers and not torch.equal(a.noise[0], model.decoder.fixed_noise()[0])
    p, q = (refine(model, noisy[0], w_enc[0], "pti", RefineConfig(steps=2, seed=5), lpips) for _ in range(2))
    assert torch.equal(p.image, q.image)
    assert not any(n.startswith("style.") for n in p.generator_delta)  # mapping network untouched
    quick = refine(model, noisy[0], w_enc[0], "optimize", RefineConfig(steps=1000, time_budget=0.05, lpips_weight=0))
    assert 1 <= quick.steps < 1000
    assert model.decoder.conv1.conv.weight.requires_grad  # the model's flags are restored


def test_generator_delta_round_trip(model, lpips, known, tmp_path):
    _, noisy, w_enc = known
    res = refine(model, noisy[1], w_enc[1], "pti", RefineConfig(steps=2), lpips)
    path = save_generator_delta(tmp_path / "d.safetensors", res.generator_delta, model.decoder)
    full = sum(p.numel() * 4 for p in model.decoder.parameters())
    assert path.stat().st_size < 0.6 * full  # float16 deltas of the synthesis weights only
    tuned = apply_generator_delta(model.decoder, load_generator_delta(path, model.decoder))
    with torch.no_grad():
        again = model.face_pool(tuned([res.latent[None]], input_is_latent=True, randomize_noise=False)[0])[0]
    torch.testing.assert_close(again, res.image, atol=2e-3, rtol=0)
    other = random_psp(get_config("tiny"), seed=5, latent_samples=16).decoder
    with pytest.raises(RefineError, match="another generator"):
        load_generator_delta(path, other)


def test_refusals(model, known):
    _, noisy, w_enc = known
    with pytest.raises(RefineError, match="needs a ReStyle checkpoint.*GradualStyleEncoder"):
        refine(model, noisy[0], w_enc[0], "restyle", RefineConfig(steps=1, lpips_weight=0))
    with pytest.raises(RefineError, match="unknown refinement 'x'; choose one of hyperstyle, optimize, pti, restyle"):
        refine(model, noisy[0], w_enc[0], "x")
    with pytest.raises(RefineError, match="needs an LPIPS module"):
        refine(model, noisy[0], w_enc[0], "optimize", RefineConfig(steps=1))
    with pytest.raises(RefineError, match="steps=0"):
        RefineConfig(steps=0)
    with pytest.raises(RefineError, match="exists"):
        register_refiner("pti", lambda *a: None)


def test_cli_encode_refine_resumes_and_refuses_restyle(model, tmp_path, capsys):
    model.save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "in" / f"{name}.png")
    (tmp_path / "in" / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    cmd = ["encode", str(tmp_path / "in"), "-c", str(tmp_path / "m"), "-o", str(out), "--device", "cpu",
           "--refine", "pti", "--refine-steps", "2", "--refine-lpips", "0", "--save-latents"]
    assert main(cmd) == 1  # bad.png failed, the others are done
    assert "refined 2 image(s) with pti" in capsys.readouterr().out
    assert {p.name for p in (out / "pti").iterdir()} == {"a.safetensors", "b.safetensors"}
    assert (out / "a.png").is_file() and (out / "latents" / "b.npz").is_file()
    first = (out / "a.png").read_bytes()
    (out / "b.png").unlink()  # as if stopped before b was finished
    assert main(cmd) == 1
    assert "refined 1 image(s) with pti into" in capsys.readouterr().out
    assert (out / "a.png").read_bytes() == first
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] == 1 and summary["steps"] == [2]
    assert main([*cmd[:4], "-o", str(tmp_path / "r"), "--device", "cpu", "--refine", "restyle", "--refine-lpips", "0"]) == 2
    assert "needs a ReStyle checkpoint" in capsys.readouterr().err


def test_inverter_refine_and_tuned(model, lpips, known):
    from instyle.inference.inverter import Inverter

    inv = Inverter(model, device="cpu")
    img = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    res = inv.refine(img, "pti", lpips=lpips, steps=2, locality_weight=0)
    assert res.method == "pti" and res.steps == 2
    tuned = inv.tuned(res.generator_delta)
    torch.testing.assert_close(tuned.decode_tensor(res.latent[None])[0], res.image, atol=1e-5, rtol=0)
    assert tuned.model.encoder is inv.model.encoder and inv.model.decoder is model.decoder
    optimized = inv.refine(img, "optimize", steps=2, lpips_weight=0)  # codes from inference mode still train
    assert optimized.generator_delta is None and not torch.equal(optimized.latent, res.latent)
