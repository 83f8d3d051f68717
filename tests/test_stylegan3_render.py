"""The transform an unaligned StyleGAN3 encoding carries reaches every tool that renders it
(mix, interpolate, refine), stylegan3-editing's PTI defaults, and the precision settings on
encoders over StyleGAN3. Tiny models only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.inference.latents import save_latent
from instyle.utils.image import tensor_to_pil
from tests.test_stylegan3 import tiny_restyle3

pytestmark = pytest.mark.usefixtures("single_thread")

#: Two inverse transforms of the kind ``encode --unaligned`` saves (rotation + translation).
T_A = [[0.9, 0.3, 0.1], [-0.3, 0.9, 0.0], [0.0, 0.0, 1.0]]
T_B = [[0.96, -0.28, -0.05], [0.28, 0.96, 0.08], [0.0, 0.0, 1.0]]


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int64)


def _pic(model, w: torch.Tensor, t=None) -> np.ndarray:
    with torch.no_grad():
        y = model.decode(w.reshape(1, model.n_styles, -1), transform=None if t is None else torch.tensor(t), resize=True)
    return np.asarray(tensor_to_pil(y[0])).astype(np.int64)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny ReStyle-over-StyleGAN3 folder and two latent files with different transforms."""
    root = tmp_path_factory.mktemp("sg3render")
    m = tiny_restyle3(seed=3)
    m.save_pretrained(root / "m")
    g = torch.Generator().manual_seed(11)
    wa, wb = (torch.randn(m.n_styles, 8, generator=g) for _ in range(2))
    save_latent(root / "a.npz", wa, meta={"transform": T_A})
    save_latent(root / "b.npz", wb, meta={"transform": T_B})
    return root, m, wa, wb


def test_mix_renders_every_output_with_the_saved_transform(saved):
    from instyle.cli.main import main

    root, m, wa, _ = saved
    out = root / "mix"
    assert main(["mix", str(root / "a.npz"), "-c", str(root / "m"), "--out", str(out), "--device", "cpu", "-n", "2",
                 "--latent-mask", "3-5", "--save-latents", "--quiet"]) == 0
    mixed = torch.from_numpy(np.load(out / "latents" / "a.npy"))
    assert mixed.shape == (2, m.n_styles, 8) and not torch.equal(mixed[0], wa)
    for k in range(2):
        got = _png(out / "outputs" / f"a_{k}.png")
        assert np.abs(got - _pic(m, mixed[k], T_A)).max() <= 1  # PNG rounding
        assert np.abs(got - _pic(m, mixed[k])).mean() > 2  # not the aligned rendering


def test_interpolation_blends_the_transforms_as_the_original_animation(saved):
    """stylegan3-editing's create_inversion_animation.py: ``t = t_b * alpha + t_a * (1 - alpha)``
    alongside the codes."""
    from instyle.cli.main import main

    root, m, wa, wb = saved
    out = root / "interp"
    assert main(["interpolate", str(root / "a.npz"), str(root / "b.npz"), "-c", str(root / "m"), "--out", str(out),
                 "--device", "cpu", "--steps", "3", "--animation", "none", "--quiet"]) == 0
    frames = [_png(out / "frames" / f"frame_{i:04d}.png") for i in range(3)]
    mid_t = ((np.array(T_A) + np.array(T_B)) / 2).tolist()
    want = [_pic(m, wa, T_A), _pic(m, (wa + wb) / 2, mid_t), _pic(m, wb, T_B)]
    for got, exp in zip(frames, want):
        assert np.abs(got - exp).max() <= 1
    assert np.abs(frames[1] - _pic(m, (wa + wb) / 2, T_A)).mean() > 2  # the transform moved too


@pytest.mark.parametrize("method", ["optimize", "pti"])
def test_refine_fits_and_renders_under_the_encodings_transform(method):
    from instyle.inference.refine import RefineConfig, apply_generator_delta, refine

    m = tiny_restyle3(seed=2)
    t = torch.tensor(T_A)
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        w = m.encode(target)
    result = refine(m, target, w, method, RefineConfig(steps=3, lpips_weight=0), extra=t)
    assert result.losses[-1] < result.losses[0]
    model = m
    if method == "pti":
        assert result.generator_delta and not any(k.startswith(("mapping.", "synthesis.input.")) for k in result.generator_delta)
        model = tiny_restyle3(seed=2)
        model.decoder = apply_generator_delta(m.decoder, result.generator_delta)
    with torch.no_grad():
        want = model.decode(result.latent[None], transform=t, resize=True)[0]
        plain = model.decode(result.latent[None], resize=True)[0]
    torch.testing.assert_close(result.image, want, atol=1e-5, rtol=0)
    assert (result.image - plain).abs().mean() > 0.05
    # the first loss is the encoding rendered under the transform against the target
    with torch.no_grad():
        first = torch.nn.functional.mse_loss(m.decode(w, transform=t, resize=True), target)
    assert abs(result.losses[0] - float(first)) < 1e-5


def test_restyle_refinement_takes_no_transform():
    from instyle.inference.refine import RefineConfig, RefineError, refine

    m = tiny_restyle3()
    with pytest.raises(RefineError, match="transform"):
        refine(m, torch.zeros(1, 3, 32, 32), torch.zeros(1, m.n_styles, 8), "restyle", RefineConfig(steps=1),
               extra=torch.eye(3))


def test_pti_defaults_are_stylegan3_editings_for_encoders_over_stylegan3(tiny_psp):
    from instyle.inference.refine import RefineConfig, default_refine_config

    sg3 = default_refine_config(tiny_restyle3(), "pti")
    # inversion/scripts/run_pti_images.py RunConfig: steps 350, lr 3e-4, lpips 1, l2 1, threshold 0.06, no locality term
    assert (sg3.steps, sg3.lr, sg3.lpips_weight, sg3.l2_weight, sg3.lpips_threshold, sg3.locality_weight) == \
        (350, 3e-4, 1.0, 1.0, 0.06, 0.0)
    assert default_refine_config("restyle3", "pti", steps=5).steps == 5
    assert default_refine_config("restyle3", "pti", lpips_weight=0).lpips_threshold is None  # nothing to stop on
    assert default_refine_config("restyle3", "optimize") == RefineConfig()
    assert default_refine_config(tiny_psp, "pti") == RefineConfig()  # StyleGAN2 keeps PTI's own defaults
    assert default_refine_config(None, "pti", steps=7) == RefineConfig(steps=7)


def test_lpips_threshold_stops_before_the_step_that_would_cross_it():
    from instyle.inference.refine import RefineConfig, refine

    m = tiny_restyle3(seed=2)
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        w = m.encode(target)
    calls = []

    def fake_lpips(pred, tgt):  # 0.2, 0.1, 0.05, ...: below 0.06 at the third render
        calls.append(1)
        return (pred - tgt).abs().mean() * 0 + 0.4 / 2 ** len(calls)

    result = refine(m, target, w, "pti", RefineConfig(steps=10, locality_weight=0, lpips_threshold=0.06), fake_lpips)
    assert result.steps == 2 and len(result.losses) == 2


def test_encode_unaligned_refine_saves_the_transform_and_renders_under_it(tmp_path, monkeypatch):
    """``encode --unaligned --refine optimize``: the aligned crop is encoded, the unaligned crop
    fitted under the landmark transform, and the latent file keeps the transform."""
    import instyle.cli.encode as encode_cli
    import instyle.inference.unaligned as unaligned
    from instyle.alignment.stylegan3_transform import StyleGANTransform
    from instyle.cli.main import main
    from instyle.inference.encoding import load_encoding

    m = tiny_restyle3(seed=5)
    m.save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(1)
    aligned, crop = (Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(2))
    inv = np.array(T_B)
    face = unaligned.UnalignedInput(aligned, crop, StyleGANTransform(16.3, inv[:2, 2], np.linalg.inv(inv), inv))
    monkeypatch.setattr(unaligned, "unaligned_input", lambda image, size, detector="auto": face)
    monkeypatch.setattr(encode_cli, "_face_tools_ready", lambda: True)  # no detection: the face is given
    aligned.save(tmp_path / "photo.png")
    out = tmp_path / "out"
    assert main(["encode", str(tmp_path / "photo.png"), "-c", str(tmp_path / "m"), "--out", str(out), "--unaligned",
                 "--refine", "optimize", "--refine-steps", "2", "--refine-lpips", "0", "--device", "cpu", "--quiet"]) == 0
    enc = load_encoding(out / "latents" / "photo.npz", m)
    torch.testing.assert_close(enc.extra, torch.tensor(inv, dtype=torch.float32), atol=1e-6, rtol=0)
    assert enc.meta["method"] == "optimize" and enc.meta["rotation_angle"] == pytest.approx(16.3)
    assert np.abs(_png(out / "photo.png") - _pic(m, enc.latents[0], inv.tolist())).max() <= 1
    # --refine restyle has no unaligned form
    assert main(["encode", str(tmp_path / "photo.png"), "-c", str(tmp_path / "m"), "--out", str(tmp_path / "o2"),
                 "--unaligned", "--refine", "restyle", "--device", "cpu", "--quiet"]) == 2


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def test_bf16_runs_the_stylegan3_encoder_and_generator_in_16_bit_and_fp32_stays_exact():
    from instyle.models.runtime import set_runtime

    m = tiny_restyle3(seed=1)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    t = torch.tensor(T_A)

    def run(w=None):
        with torch.inference_mode():
            w = m.encode(x, iterations=2) if w is None else w
            return w, m.decode(w, transform=t)

    w32, y32 = run()
    with torch.inference_mode():  # the plain float32 modules, no runtime in between
        assert torch.equal(y32, m.decoder.synthesize(w32, transform=t))
    try:
        assert set_runtime(m, "bf16").name == "bf16"
        w16, y16 = run()
        _, y16_same_w = run(w32)
    finally:
        set_runtime(m, "fp32")
    assert w16.dtype == y16.dtype == torch.float32  # callers always get float32
    assert not torch.equal(w16, w32)  # the encoder ran in bfloat16
    assert not torch.equal(y16_same_w, y32)  # and so did the generator
    # measured on this config (2-core Zen 4 CPU): 56.8 dB for encode + decode, 56.8 dB for the generator alone
    assert 40.0 <= psnr(y16, y32) < math.inf and 40.0 <= psnr(y16_same_w, y32) < math.inf
    assert torch.equal(run()[1], y32) and torch.equal(run()[0], w32)  # back to fp32: exact again
