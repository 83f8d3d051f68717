"""StyleFeatureEditor on tiny configurations: the generator's feature hooks, the model's
encode / decode / edit, loading the official three-file layout (with its errors), our own
format and the encoding files. Conformance with the original: test_sfe_conformance.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import instyle
from instyle.errors import CheckpointError
from instyle.inference.encoding import load_sfe_encoding as load_encoding
from instyle.models.encoders.psp_encoders import EncoderConfig
from instyle.models.sfe import SFE, SFEConfig, feature_resolution, save_encoding
from instyle.models.stylegan2 import Generator, GeneratorConfig
from instyle.utils.config import ConfigError
from instyle.utils.image import pil_to_tensor

D = 32


def tiny_generator(size: int = 32) -> GeneratorConfig:
    channels = {4: 16, 8: 16, 16: 12, 32: 8}
    return GeneratorConfig(size=size, style_dim=D, n_mlp=2, channels={r: c for r, c in channels.items() if r <= size})


def tiny_config() -> SFEConfig:
    gen = tiny_generator()
    e4e = EncoderConfig(type="Encoder4Editing", n_styles=gen.n_latent, style_dim=D, widths=(8, 16, 24, D),
                        units=(1, 1, 1, 1), input_size=64)
    return SFEConfig(generator=gen, e4e=e4e, widths=(8, 8, 16, 16), units=(1, 2, 2, 1), fuser_blocks=2,
                     feature_index=5, input_size=64)


def _randomise_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(1 + torch.rand(m.running_var.shape, generator=gen) * 0.2)


def tiny_model(seed: int = 0) -> SFE:
    torch.manual_seed(seed)
    model = SFE(tiny_config(), latent_avg=torch.randn(D) * 0.3)
    with torch.no_grad():
        _randomise_norms(model, torch.Generator().manual_seed(seed))
        for p in model.decoder.parameters():  # noise weights start at 0: make the noise matter
            if p.ndim == 1 and p.numel() == 1:
                p.fill_(0.1)
    model.sync_decoder_latent_avg()
    return model.eval()


@pytest.fixture(scope="module")
def model() -> SFE:
    return tiny_model()


def images(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------- generator hooks


def test_feature_list_of_a_full_run_matches_the_plain_forward():
    torch.manual_seed(0)
    g = Generator(tiny_generator()).eval()
    w = torch.randn(2, g.n_latent, D)
    with torch.no_grad():
        plain, last = g([w], input_is_latent=True, randomize_noise=False, return_features=True)
        image, feats = g.feature_list(w)
    assert len(feats) == g.num_layers + 1
    assert [f.shape[-1] for f in feats] == [4, 4, 8, 8, 16, 16, 32, 32]
    assert torch.equal(image, plain) and torch.equal(feats[-1], last)


def test_early_stop_features_equal_the_full_runs_features():
    torch.manual_seed(0)
    g = Generator(tiny_generator()).eval()
    w = torch.randn(2, g.n_latent, D)
    with torch.no_grad():
        _, full = g.feature_list(w)
        skip, early = g.feature_list(w, early_stop=16)
    assert len(early) == 6 and skip.shape == (2, 3, 16, 16)
    for a, b in zip(early, full):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="early_stop=12"):
        g.feature_list(w, early_stop=12)


def test_feature_scale_zero_or_the_own_feature_changes_nothing():
    torch.manual_seed(0)
    g = Generator(tiny_generator()).eval()
    w = torch.randn(2, g.n_latent, D)
    with torch.no_grad():
        plain = g.synthesize(w)
        _, feats = g.feature_list(w)
        for k in (1, 4, 5):
            other = [None] * len(feats)
            other[k] = torch.randn_like(feats[k]) * 3
            zero, _ = g([w], input_is_latent=True, randomize_noise=False, new_features=other, feature_scale=0.0)
            assert torch.equal(zero, plain)
            own = [None] * len(feats)
            own[k] = feats[k]
            same, _ = g([w], input_is_latent=True, randomize_noise=False, new_features=own, feature_scale=1.0)
            assert torch.equal(same, plain)
            replaced, _ = g([w], input_is_latent=True, randomize_noise=False, new_features=other)
            assert (replaced - plain).abs().max() > 1e-3


def test_feature_insertion_blends_and_leaves_the_earlier_rgb_skip_alone():
    torch.manual_seed(0)
    g = Generator(tiny_generator()).eval()
    w = torch.randn(1, g.n_latent, D)
    with torch.no_grad():
        _, feats = g.feature_list(w)
        new = [None] * len(feats)
        new[5] = torch.randn_like(feats[5])
        skip_plain, _ = g.feature_list(w, early_stop=16)
        skip_new, _ = g([w], input_is_latent=True, randomize_noise=False, new_features=new, early_stop=16)
        assert torch.equal(skip_plain, skip_new)  # the 16 px ToRGB read the unreplaced feature 5
        half, f_half = g([w], input_is_latent=True, randomize_noise=False, new_features=new, feature_scale=0.5,
                         return_feature_list=True)
        blend = [None] * len(feats)
        blend[5] = 0.5 * feats[5] + 0.5 * new[5]
        full, _ = g([w], input_is_latent=True, randomize_noise=False, new_features=blend)
    torch.testing.assert_close(half, full, atol=1e-5, rtol=0)
    bad = [None] * len(feats)
    bad[5] = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"new_features\[5\]"):
        g([w], input_is_latent=True, new_features=bad)
    with pytest.raises(ValueError, match="expected 8 new_features"):
        g([w], input_is_latent=True, new_features=[None] * 3)


# --------------------------------------------------------------------------- config and model


def test_default_config_is_the_originals():
    cfg = SFEConfig()
    assert (cfg.generator.size, cfg.n_styles, cfg.feature_index, cfg.input_size) == (1024, 18, 9, 256)
    assert feature_resolution(cfg.feature_index) == 64 and cfg.feature_channels == 512
    assert cfg.units == (3, 4, 14, 3) and cfg.fuser_blocks == 5


@pytest.mark.parametrize("bad, match", [
    (dict(fuser_blocks=10**6), "fuser_blocks"),
    (dict(widths=(8, 8, 16, 10**6)), "widths"),
    (dict(units=(1, 1, 1000, 1)), "units"),
    (dict(input_size=128), "input_size=128"),
    (dict(feature_index=99), "feature_index"),
    (dict(editor=False), "must be null for an inverter-only model"),
    (dict(editor="maybe"), "editor"),
])
def test_config_bounds(bad, match):
    d = tiny_config().to_dict()
    d.update(bad)
    with pytest.raises(ConfigError, match=match):
        SFEConfig.from_dict(d)


def test_encode_decode_shapes_and_identity_edit(model):
    x = images()
    enc = model.encode(x)
    assert enc.w_recon.shape == (2, 8, D) and enc.w_e4e.shape == (2, 8, D)
    assert enc.fused_feat.shape == (2, 12, 16, 16)
    out = model.decode(enc)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    same = model.edit(enc, lambda w: w)  # zero delta: the inversion
    assert torch.equal(model.decode(same), out)


def test_edit_moves_both_latents_and_uses_the_e4e_delta(model):
    enc = model.encode(images())
    seen = []

    def fn(w):
        seen.append(w)
        return w + 0.5

    edited = model.edit(enc, fn)
    assert len(seen) == 2 and torch.equal(seen[0], enc.w_recon) and torch.equal(seen[1], enc.w_e4e)
    assert torch.equal(edited.w_edit, enc.w_recon + 0.5) and torch.equal(edited.latents, edited.w_edit)
    assert torch.equal(edited.w_recon, enc.w_recon) and torch.equal(edited.w_e4e, enc.w_e4e)
    delta = model.generator_feature(enc.w_e4e) - model.generator_feature(enc.w_e4e + 0.5)
    assert torch.equal(edited.edited_feat, model.edited_feature(enc.fused_feat, delta))
    again = model.edit(edited, fn)  # edits start from the inversion's fused feature: no compounding
    assert torch.equal(again.w_edit, edited.w_edit) and torch.equal(again.edited_feat, edited.edited_feat)
    with pytest.raises(ValueError, match="same shape"):
        model.edit(enc, lambda w: w[:, :3])


def test_own_format_round_trip_is_bit_identical(model, tmp_path):
    x = images(1)
    model.save_pretrained(tmp_path / "sfe")
    back = instyle.load(tmp_path / "sfe", device="cpu")
    assert isinstance(back, SFE) and back.config.to_dict() == model.config.to_dict()
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(back.decode(back.encode(x)), model.decode(model.encode(x)))
    with pytest.raises(CheckpointError, match="self-contained"):
        instyle.load(tmp_path / "sfe", e4e="x.pt")


def test_encoding_file_round_trip(model, tmp_path):
    enc = model.encode(images())
    edited = model.edit(enc, lambda w: w * 1.1)
    ref = model.decode(edited)
    save_encoding(tmp_path / "e.npz", edited)
    back = load_encoding(tmp_path / "e.npz")
    assert torch.equal(model.decode(back), ref)
    save_encoding(tmp_path / "h.npz", enc, feature_dtype="float16")
    half = load_encoding(tmp_path / "h.npz")
    assert half.edited_feat is None and torch.equal(half.w_recon, enc.w_recon)
    assert (half.fused_feat - enc.fused_feat).abs().max() < 1e-2
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="bad.npz"):
        load_encoding(tmp_path / "bad.npz")
    np.savez(tmp_path / "w.npz", w=np.zeros((1, 8, D), np.float32))  # a plain latent file
    with pytest.raises(CheckpointError, match="not an SFE encoding"):
        load_encoding(tmp_path / "w.npz")
    arrays = dict(np.load(tmp_path / "e.npz"))
    arrays["fused_feat"] = arrays["fused_feat"][:, :, :3]
    np.savez(tmp_path / "odd.npz", **arrays)
    with pytest.raises(CheckpointError, match="inconsistent SFE encoding shapes"):
        load_encoding(tmp_path / "odd.npz")
    arrays["edited_feat"] = arrays["edited_feat"][:, :, :3]
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(ValueError, match="does not fit this model"):
        model.decode(load_encoding(tmp_path / "cut.npz"))


# --------------------------------------------------------------------------- official files


def write_official(model: SFE, folder, *, sfe_extra=None, drop_g_key=False, e4e_styles=None):
    """The three files in the original's layout (SFE, omertov e4e, rosinality generator)."""
    sd = model.state_dict()
    sfe = {k: v for k, v in sd.items() if k.startswith(("inverter.", "encoder."))}
    sfe.update(sfe_extra or {})
    torch.save({"state_dict": sfe, "latent_avg": torch.full((D,), 9.0)}, folder / "sfe.pt")
    e4e = {f"encoder.{k[len('e4e_encoder.'):]}": v for k, v in sd.items() if k.startswith("e4e_encoder.")}
    if e4e_styles is not None:
        e4e = {k: v for k, v in e4e.items() if not (k.startswith("encoder.styles.") and int(k.split(".")[2]) >= e4e_styles)}
    e4e.update({k: v for k, v in sd.items() if k.startswith("decoder.")})
    torch.save({"state_dict": e4e, "opts": {"encoder_type": "Encoder4Editing"}, "latent_avg": torch.full((8, D), 7.0)},
               folder / "e4e.pt")
    g = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    if drop_g_key:
        g.pop("convs.0.conv.weight")
    torch.save({"g_ema": g, "latent_avg": model.latent_avg.clone()}, folder / "g.pt")
    return folder / "sfe.pt", folder / "e4e.pt", folder / "g.pt"


def test_official_files_load_and_reproduce(model, tmp_path):
    sfe, e4e, g = write_official(model, tmp_path, sfe_extra={"discriminator.b4.fc.weight": torch.zeros(2)})
    loaded = instyle.load(sfe, e4e=e4e, generator=g)
    assert isinstance(loaded, SFE) and loaded.config.to_dict() == model.config.to_dict()
    assert torch.equal(loaded.latent_avg, model.latent_avg)  # the generator file's, not 9 or 7
    x = images(1)
    assert torch.equal(loaded.decode(loaded.encode(x)), model.decode(model.encode(x)))


def test_official_files_errors_name_the_files(model, tmp_path):
    sfe, e4e, g = write_official(model, tmp_path)
    with pytest.raises(CheckpointError, match="missing: e4e, generator"):
        instyle.load(sfe)
    with pytest.raises(CheckpointError, match=r"e4e file .*g\.pt does not fit SFE checkpoint .*sfe\.pt.*generator file"):
        instyle.load(sfe, e4e=g, generator=g)
    with pytest.raises(CheckpointError, match=r"generator file .*e4e\.pt does not fit"):
        instyle.load(sfe, e4e=e4e, generator=e4e)
    with pytest.raises(CheckpointError, match="only for StyleFeatureEditor"):
        instyle.load(e4e, e4e=e4e)
    with pytest.raises(CheckpointError, match=r"no such file"):
        instyle.load(sfe, e4e=tmp_path / "none.pt", generator=g)
    sub = tmp_path / "broken"
    sub.mkdir()
    sfe2, e4e2, g2 = write_official(model, sub, drop_g_key=True)
    with pytest.raises(CheckpointError, match="strict=False"):
        instyle.load(sfe2, e4e=e4e2, generator=g2)
    sub = tmp_path / "styles"
    sub.mkdir()
    sfe3, e4e3, g3 = write_official(model, sub, e4e_styles=6)
    with pytest.raises(CheckpointError, match=r"6 x 32 codes"):
        instyle.load(sfe3, e4e=e4e3, generator=g3)
    inv = tmp_path / "inverter.pt"
    torch.save({"state_dict": {"encoder.fs_backbone.conv.0.weight": torch.zeros(1)}}, inv)
    with pytest.raises(CheckpointError, match="SFE inverter checkpoint .*missing"):
        instyle.load(inv, generator=g)


def test_sfe_edit_helpers_follow_the_original():
    from instyle.inference.editing import GANSpacePCA
    from instyle.inference.sfe_editing import edit_fn, interfacegan_fn

    w = torch.randn(2, 8, D)
    d = torch.randn(1, D)
    assert torch.equal(interfacegan_fn(d, 4.0)(w), w + 2.0 * d)  # degree / 2
    comp = torch.nn.functional.normalize(torch.randn(5, D), dim=-1)
    pca = GANSpacePCA(mean=torch.randn(D), comp=comp, std=torch.rand(5) + 0.5)
    out = edit_fn(pca, 3.0, (2, 1, 4))(w)
    assert torch.equal(out[:, :1], w[:, :1]) and torch.equal(out[:, 4:], w[:, 4:])
    for i in range(2):  # the coordinate of style 1 (moved like style 0 would be) is set to 3
        coord = ((out[i, 1] - pca.mean) * comp[2]).sum() / pca.std[2]
        w0 = ((w[i, 0] - pca.mean) * comp[2]).sum() / pca.std[2]
        w1 = ((w[i, 1] - pca.mean) * comp[2]).sum() / pca.std[2]
        torch.testing.assert_close(coord, w1 + (3.0 - w0), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- command line


def test_cli_encode_then_edit_from_the_saved_encoding(model, tmp_path, capsys):
    from PIL import Image

    from instyle.cli.main import main

    sfe, e4e, g = write_official(model, tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photos / "a.png")
    (photos / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "enc"
    rc = main(["encode", "-c", str(sfe), "--e4e", str(e4e), "--generator", str(g), str(photos), "--out", str(out),
               "--save-latents", "--full-resolution", "--device", "cpu"])
    assert rc == 1  # the broken file is reported, the other encoded
    assert "broken.png" in capsys.readouterr().err
    assert Image.open(out / "a.png").size == (32, 32)
    enc = load_encoding(out / "latents" / "a.npz")
    x = pil_to_tensor(Image.open(photos / "a.png"), 32)[None]
    assert torch.equal(enc.w_recon, model.encode(x).w_recon)
    direction = tmp_path / "age.npy"
    np.save(direction, np.random.default_rng(1).standard_normal(D).astype(np.float32))
    edited = tmp_path / "edited"
    rc = main(["edit", "direction", str(out / "latents" / "a.npz"), "-c", str(sfe), "--e4e", str(e4e), "--generator",
               str(g), "-d", str(direction), "--edit", "age=-2,2", "--out", str(edited), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    strip = load_encoding(edited / "latents" / "a" / "age.npz")
    ref = model.edit(enc, lambda w: w + 1.0 * torch.from_numpy(np.load(direction)))
    torch.testing.assert_close(strip.w_edit[1:], ref.w_edit, atol=1e-6, rtol=0)
    torch.testing.assert_close(strip.edited_feat[1:], ref.edited_feat, atol=1e-5, rtol=0)
    assert (edited / "a" / "age" / "strength_+2.000.png").is_file() and (edited / "grid.png").is_file()
    pca = {"mean": torch.randn(1, D), "comp": torch.nn.functional.normalize(torch.randn(80, 1, D), dim=-1),
           "std": torch.rand(80) + 0.5}
    torch.save(pca, tmp_path / "ffhq_pca.pt")
    rc = main(["edit", "direction", str(out / "latents" / "a.npz"), "-c", str(sfe), "--e4e", str(e4e), "--generator",
               str(g), "-d", str(tmp_path / "ffhq_pca.pt"), "--edit", "face_roundness=12", "--out", str(tmp_path / "gs"),
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    gs = load_encoding(tmp_path / "gs" / "latents" / "a" / "ganspace_37_0_5.npz")
    assert torch.equal(gs.w_edit[:, 5:], enc.w_recon[:, 5:]) and not torch.equal(gs.w_edit[:, :5], enc.w_recon[:, :5])
    rc = main(["mix", "-c", str(sfe), "--e4e", str(e4e), "--generator", str(g), str(photos / "a.png"),
               "--out", str(tmp_path / "mix"), "--device", "cpu"])
    assert rc == 2 and "StyleFeatureEditor" in capsys.readouterr().err
    morph = tmp_path / "morph"
    rc = main(["interpolate", str(out / "latents" / "a.npz"), str(edited / "latents" / "a" / "age.npz"), "-c", str(sfe),
               "--e4e", str(e4e), "--generator", str(g), "--steps", "3", "--animation", "none", "--save-latents",
               "--out", str(morph), "--device", "cpu"])
    assert rc == 2 and "edited and unedited" in capsys.readouterr().err
    photo2 = tmp_path / "b.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photo2)
    rc = main(["interpolate", str(out / "latents" / "a.npz"), str(photo2), "-c", str(sfe), "--e4e", str(e4e),
               "--generator", str(g), "--steps", "3", "--animation", "none", "--save-latents", "--out", str(morph),
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    path = load_encoding(morph / "latents.npz")
    assert len(path) == 3 and torch.equal(path.w_recon[0], enc.w_recon[0])
    torch.testing.assert_close(path.fused_feat[1], (enc.fused_feat[0] + path.fused_feat[2]) / 2, atol=1e-6, rtol=0)
    assert len(list((morph / "frames").iterdir())) == 3
    conv = tmp_path / "conv"
    assert main(["convert", str(sfe), str(conv), "--e4e", str(e4e), "--generator", str(g)]) == 0
    back = instyle.load(conv)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))


def test_evaluate_measures_an_sfe_model(model, tmp_path):
    from PIL import Image

    from instyle.evaluation.report import evaluate

    data = tmp_path / "faces"
    data.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
    report = evaluate(model, data, device="cpu", identity=None, lpips_weights=tmp_path / "none.pth", warmup=0)
    assert report["n_images"] == 2 and report["family"] == "sfe" and not report["failed"]
    assert report["metrics"]["mse"]["n"] == 2


def tiny_inverter(seed: int = 0) -> SFE:
    """An inverter-only model at the original's fixed input 256 and feature 9 (64 px)."""
    torch.manual_seed(seed)
    gen = GeneratorConfig(size=128, style_dim=D, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 12, 64: 12, 128: 8})
    model = SFE(SFEConfig(generator=gen, widths=(8, 8, 16, 16), units=(1, 1, 1, 1), fuser_blocks=1, editor=False),
                latent_avg=torch.randn(D) * 0.3)
    with torch.no_grad():
        _randomise_norms(model, torch.Generator().manual_seed(seed))
    model.sync_decoder_latent_avg()
    return model.eval()


def test_inverter_only_file_renders_the_fused_feature(tmp_path):
    model = tiny_inverter()
    assert model.encoder is None and model.e4e_encoder is None and model.config.e4e is None
    sd = model.state_dict()
    torch.save({"state_dict": {f"encoder.{k[len('inverter.'):]}": v for k, v in sd.items() if k.startswith("inverter.")}},
               tmp_path / "inv.pt")
    g = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    torch.save({"g_ema": g, "latent_avg": model.latent_avg.clone()}, tmp_path / "g.pt")
    with pytest.warns(UserWarning, match="uses no e4e encoder"):
        loaded = instyle.load(tmp_path / "inv.pt", generator=tmp_path / "g.pt", e4e=tmp_path / "g.pt")
    assert loaded.config.to_dict() == model.config.to_dict()
    x = images(1, size=128)
    enc = loaded.encode(x)
    assert enc.w_e4e is None
    # FSEInverter.forward: the fused feature itself replaces generator feature 9
    w, predicted = model.inverter.fs_backbone(torch.nn.functional.interpolate(x, size=(256, 256), mode="bilinear"))
    w = w + model.latent_avg
    fused = model.inverter.fuser(torch.cat([predicted, model.generator_feature(w)], 1))
    expected = model.render(w, fused)
    assert torch.equal(loaded.decode(enc), expected)
    with pytest.raises(ValueError, match="cannot edit"):
        loaded.edit(enc, lambda v: v)
    save_encoding(tmp_path / "e.npz", enc)
    assert torch.equal(loaded.decode(load_encoding(tmp_path / "e.npz")), expected)
    loaded.save_pretrained(tmp_path / "own")
    assert torch.equal(instyle.load(tmp_path / "own").decode(enc), expected)
    with pytest.raises(CheckpointError, match="needs the StyleGAN2 generator file"):
        instyle.load(tmp_path / "inv.pt")


def test_encoding_file_is_sized_before_it_is_decompressed(tmp_path):
    """A small file whose members declare far more bytes than it holds (a zip bomb) is refused
    by the bounded reader; ``np.load`` used to inflate it (32 MiB from a 33 KB file)."""
    np.savez_compressed(
        tmp_path / "bomb.npz", kind=np.array("instyle-sfe-encoding"), version=np.array(1),
        w_recon=np.zeros((1, 8, D), np.float32), fused_feat=np.zeros((1, 512, 128, 128), np.float32),
    )
    with pytest.raises(CheckpointError, match="zip bomb"):
        load_encoding(tmp_path / "bomb.npz")
