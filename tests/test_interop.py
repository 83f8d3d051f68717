"""Checkpoint interop: own format, official pSp and rosinality files round trip bit-exactly;
architecture mismatches, broken files and malicious pickles give a CheckpointError naming
the file (and nothing from a file is ever executed).

The official and rosinality files are written here exactly as those projects save them
(``torch.save`` of the same dict layout), from tiny deterministic random models.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import re
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import instyle
from instyle import CheckpointError, load_generator
from instyle.interop import load_own, load_state_checked, save_generator, save_psp
from instyle.models import EncoderConfig, Generator, GeneratorConfig, PSPConfig
from instyle.models.init import random_psp
from instyle.models.psp import PSP
from instyle.utils.config import ConfigError

GRADUAL, INTO_W, INTO_WPLUS = (
    "GradualStyleEncoder",
    "BackboneEncoderUsingLastLayerIntoW",
    "BackboneEncoderUsingLastLayerIntoWPlus",
)
STYLE_DIM = 32


# --------------------------------------------------------------------------- tiny models


def tiny_config(kind: str = GRADUAL, input_nc: int = 3, output_size: int = 64, **kw) -> PSPConfig:
    """A narrow pSp: 64 px input for the FPN encoder (its input size is inferred from the
    file), 256 px for the W / W+ encoders (as the official code; their size is not)."""
    channels = {2**i: 8 if 2**i <= 32 else 4 for i in range(2, output_size.bit_length())}
    gen = GeneratorConfig(size=output_size, style_dim=STYLE_DIM, n_mlp=2, channels=channels)
    enc = EncoderConfig(
        type=kind, input_nc=input_nc, n_styles=gen.n_latent, style_dim=STYLE_DIM, widths=(4, 8, 16, 32),
        units=(1, 2, 1, 1), input_size=64 if kind == GRADUAL else 256,
    )
    return PSPConfig(encoder=enc, generator=gen, learn_in_w=kind == INTO_W, **kw)


def perturb_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every float tensor (BN statistics, noise strengths, biases...) away from its
    initial value so that a loader that drops or mixes up any tensor is caught."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point() or name.endswith("kernel"):
                continue
            noise = torch.randn(t.shape, generator=gen)
            if name.endswith("running_var"):
                t.copy_(0.75 + 0.5 * noise.abs())
            else:
                t.add_(0.1 * noise)
    return module


def make_psp(config: PSPConfig, seed: int = 0) -> PSP:
    model = perturb_(random_psp(config, seed=seed, latent_samples=64), seed + 100)
    return model.eval()


def sample_input(model: PSP, batch: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    s, c = model.input_size, model.input_nc
    return torch.rand(batch, c, s, s, generator=gen) * 2 - 1


@torch.no_grad()
def psp_outputs(model: PSP, x: torch.Tensor) -> dict[str, torch.Tensor]:
    images, latents = model(x, resize=False, return_latents=True, randomize_noise=False)
    return {"resized": model(x, resize=True, randomize_noise=False), "images": images, "latents": latents}


def assert_same_outputs(a: PSP, b: PSP, x: torch.Tensor) -> None:
    out_a, out_b = psp_outputs(a, x), psp_outputs(b, x)
    for k in out_a:
        assert out_a[k].shape == out_b[k].shape, k
        assert torch.equal(out_a[k], out_b[k]), f"{k} differs by {(out_a[k] - out_b[k]).abs().max()}"


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------- file writers


def official_opts(config: PSPConfig, label_nc: int = 0) -> dict:
    """``vars(opts)`` as the official coach saves it (incl. ``device='cuda:0'``)."""
    return {
        "exp_dir": "experiments/test", "dataset_type": "celebs_seg_to_face" if label_nc else "ffhq_encode",
        "encoder_type": config.encoder.type, "input_nc": config.encoder.input_nc, "label_nc": label_nc,
        "output_size": config.generator.size, "batch_size": 4, "test_batch_size": 2, "workers": 4,
        "test_workers": 2, "learning_rate": 0.0001, "optim_name": "ranger", "train_decoder": False,
        "start_from_latent_avg": config.start_from_latent_avg, "learn_in_w": config.learn_in_w,
        "lpips_lambda": 0.8, "id_lambda": 0.1, "l2_lambda": 1.0, "w_norm_lambda": 0.0, "lpips_lambda_crop": 0.0,
        "l2_lambda_crop": 0.0, "moco_lambda": 0.0, "stylegan_weights": "pretrained_models/stylegan2.pt",
        "checkpoint_path": None, "max_steps": 500000, "image_interval": 100, "board_interval": 50,
        "val_interval": 1000, "save_interval": 500000, "use_wandb": False, "resize_factors": None,
        "device": "cuda:0", "n_styles": config.n_styles,
    }


def write_official(
    model: PSP,
    path: Path,
    latent_avg: torch.Tensor | None | str = "model",
    drop_opts: tuple[str, ...] = (),
    opts_changes: dict | None = None,
    label_nc: int = 0,
    as_namespace: bool = False,
) -> Path:
    sd = OrderedDict((k, v.clone()) for k, v in model.state_dict().items() if k.startswith(("encoder.", "decoder.")))
    opts = official_opts(model.config, label_nc)
    opts.update(opts_changes or {})
    for k in drop_opts:
        opts.pop(k)
    ckpt = {"state_dict": sd, "opts": argparse.Namespace(**opts) if as_namespace else opts}
    if isinstance(latent_avg, str):
        latent_avg = model.latent_avg.clone()
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg
    torch.save(ckpt, path)
    return path


def adam_state(params: list[torch.nn.Parameter]) -> dict:
    opt = torch.optim.Adam(params, lr=0.002, betas=(0.0, 0.99))
    sum(p.sum() for p in params).backward()
    opt.step()
    return opt.state_dict()


def write_rosinality(g: Generator, path: Path, latent_avg: torch.Tensor | None = None) -> Path:
    """``{'g', 'd', 'g_ema', 'g_optim', 'd_optim', 'args', 'ada_aug_p'}`` as train.py saves."""
    g_train = perturb_(Generator(g.config), seed=77)  # 'g' differs from 'g_ema': the loader must pick g_ema
    d = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Linear(4, 1))
    args = argparse.Namespace(
        path="lmdb/ffhq", arch="stylegan2", iter=800000, batch=16, n_sample=64, size=g.size, r1=10.0,
        path_regularize=2.0, path_batch_shrink=2, d_reg_every=16, g_reg_every=4, mixing=0.9, ckpt=None,
        lr=0.002, channel_multiplier=g.config.channel_multiplier, wandb=False, local_rank=0, augment=False,
        augment_p=0.0, ada_target=0.6, ada_length=500000, ada_every=256, latent=g.style_dim, n_mlp=g.config.n_mlp,
        start_iter=0, distributed=False,
    )
    ckpt = {
        "g": g_train.state_dict(),
        "d": d.state_dict(),
        "g_ema": g.state_dict(),
        "g_optim": adam_state(list(g_train.parameters())[:3]),
        "d_optim": adam_state(list(d.parameters())),
        "args": args,
        "ada_aug_p": 0.125,
    }
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg
    torch.save(ckpt, path)
    return path


def quiet_load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return instyle.load(path, **kw)


# --------------------------------------------------------------------------- own format


def test_own_format_psp_round_trip(tmp_path):
    model = make_psp(tiny_config())
    out_dir = save_psp(model, tmp_path / "model", extra={"note": "test"})
    doc = json.loads((out_dir / "config.json").read_text())
    assert doc["format"] == "instyle" and doc["kind"] == "psp" and doc["version"] == 1
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "model.safetensors"]
    loaded = instyle.load(out_dir)
    assert isinstance(loaded, PSP) and not loaded.training
    assert loaded.config == model.config
    assert loaded.metadata == {"note": "test"}
    assert_same_state(model, loaded)
    assert_same_outputs(model, loaded, sample_input(model))
    again = PSP.from_pretrained(model.save_pretrained(tmp_path / "again"))
    assert_same_outputs(model, again, sample_input(model))


def test_own_format_generator_round_trip(tmp_path):
    torch.manual_seed(0)
    g = perturb_(Generator(tiny_config().generator), seed=3).eval()
    g.latent_avg = g.mean_latent(64, seed=1)
    save_generator(g, tmp_path / "g")
    for loaded in (load_generator(tmp_path / "g"), load_own(tmp_path / "g")):
        assert isinstance(loaded, Generator) and loaded.config == g.config
        assert_same_state(g, loaded)
        assert torch.equal(loaded.latent_avg, g.latent_avg)
        w = torch.randn(2, g.n_latent, STYLE_DIM, generator=torch.Generator().manual_seed(0))
        assert torch.equal(loaded.synthesize(w), g.synthesize(w))
    with pytest.raises(CheckpointError, match="is a generator, not a pSp model.*load_generator") as info:
        instyle.load(tmp_path / "g")
    assert str(tmp_path / "g") in str(info.value)


def test_from_pretrained_honours_cls_and_refuses_other_files(tmp_path):
    class MyPSP(PSP):
        pass

    class MyGenerator(Generator):
        pass

    model = make_psp(tiny_config())
    loaded = MyPSP.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert type(loaded) is MyPSP and not loaded.training
    assert_same_state(model, loaded)
    g = MyGenerator.from_pretrained(model.decoder.save_pretrained(tmp_path / "g"))
    assert type(g) is MyGenerator
    assert_same_state(model.decoder, g)
    with pytest.raises(CheckpointError, match="is a generator, not a pSp model"):
        PSP.from_pretrained(tmp_path / "g")
    with pytest.raises(CheckpointError, match="is a pSp model, not a generator"):
        Generator.from_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not an instyle model directory.*instyle.load"):
        PSP.from_pretrained(tmp_path / "missing.pt")


def test_set_latent_avg_keeps_the_decoder_average_in_step():
    """One source: setting the pSp's average also moves the decoder's (truncation centre)."""
    model = make_psp(tiny_config())
    w = torch.randn(1, STYLE_DIM, generator=torch.Generator().manual_seed(3))
    model.set_latent_avg(w)
    assert torch.equal(model.latent_avg, w.expand(model.n_styles, -1))
    assert torch.equal(model.decoder.latent_avg, w)
    rows = torch.randn(model.n_styles, STYLE_DIM, generator=torch.Generator().manual_seed(4))
    model.set_latent_avg(rows)
    torch.testing.assert_close(model.decoder.latent_avg, rows.mean(0, keepdim=True), rtol=0, atol=0)
    # Without start_from_latent_avg the stored average is not the generator's: the decoder keeps its own.
    plain = PSP(tiny_config(start_from_latent_avg=False))
    plain.set_latent_avg(w)
    assert plain.decoder.latent_avg is None
    plain.set_latent_avg(w, generator_average=True)
    assert torch.equal(plain.decoder.latent_avg, w)


def test_config_to_dict_holds_every_field_and_round_trips():
    import dataclasses

    config = tiny_config(GRADUAL, input_nc=1)
    d = config.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(PSPConfig)]
    assert list(d["generator"]) == [f.name for f in dataclasses.fields(GeneratorConfig)]
    assert list(d["encoder"]) == [f.name for f in dataclasses.fields(EncoderConfig)]
    assert json.loads(json.dumps(d)) == d and PSPConfig.from_dict(d) == config


def test_registered_configs_take_keyword_overrides():
    from instyle.models import create_psp, get_config

    base = get_config("tiny")
    config = base.with_overrides(generator={"size": 32}, task="sketch2face")
    assert (config.generator.size, config.generator.style_dim, config.encoder.n_styles, config.task) == (32, 64, 8, "sketch2face")
    assert config.encoder.widths == base.encoder.widths
    model = create_psp("tiny", generator={"size": 32}, encoder={"input_nc": 1})
    assert (model.output_size, model.n_styles, model.input_nc) == (32, 8, 1)
    with pytest.raises(ConfigError, match="n_styles=5"):
        base.with_overrides(generator={"size": 32}, encoder={"n_styles": 5})
    with pytest.raises(ConfigError, match="unknown psp key"):
        create_psp("tiny", bogus=1)


def test_generator_from_a_size_or_a_clear_error():
    g = Generator(32, style_dim=16, n_mlp=1, channels={4: 8, 8: 8, 16: 4, 32: 4})
    assert (g.size, g.style_dim, g.n_latent) == (32, 16, 8)
    assert Generator(256).config == GeneratorConfig(size=256)
    with pytest.raises(ConfigError, match=r"Generator\(256\)"):
        Generator("256")


def test_every_loader_accepts_device_auto(tmp_path):
    from instyle.utils.device import resolve_device

    model = make_psp(tiny_config())
    model.save_pretrained(tmp_path / "m")
    model.decoder.save_pretrained(tmp_path / "g")
    auto = resolve_device("auto")
    for loaded in (
        instyle.load(tmp_path / "m", device="auto"),
        load_generator(tmp_path / "g", device="auto"),
        PSP.from_pretrained(tmp_path / "m", device="auto"),
        Generator.from_pretrained(tmp_path / "g", device="auto"),
    ):
        assert next(loaded.parameters()).device.type == auto.type


def test_load_generator_reads_own_format_psp_decoder(tmp_path):
    model = make_psp(tiny_config())
    save_psp(model, tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pSp's latent_avg is in the file: nothing to estimate
        g = load_generator(tmp_path / "m")
    assert_same_state(model.decoder, g)
    torch.testing.assert_close(g.latent_avg, model.latent_avg.mean(0, keepdim=True), rtol=0, atol=0)


def test_own_format_broken_directories(tmp_path):
    model = make_psp(tiny_config())
    good = save_psp(model, tmp_path / "good")

    truncated = save_psp(model, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        instyle.load(truncated)
    assert str(weights) in str(info.value)

    no_weights = save_psp(model, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing weights file") as info:
        instyle.load(no_weights)
    assert str(no_weights) in str(info.value)

    bad_json = save_psp(model, tmp_path / "bad_json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable instyle config") as info:
        instyle.load(bad_json)
    assert str(bad_json) in str(info.value)

    newer = save_psp(model, tmp_path / "newer")
    doc = json.loads((good / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(CheckpointError, match="newer instyle"):
        instyle.load(newer)

    bad_config = save_psp(model, tmp_path / "bad_config")
    doc["config"]["generator"]["size"] = 48
    (bad_config / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="generator.size=48") as info:
        instyle.load(bad_config)
    assert str(bad_config) in str(info.value)


def test_own_format_config_contradicting_weights(tmp_path):
    """A config.json saying 32 px next to 64 px weights: refused, naming the file."""
    small = make_psp(tiny_config(output_size=32))
    big = make_psp(tiny_config(output_size=64))
    target = save_psp(big, tmp_path / "mixed")
    (target / "config.json").write_text((save_psp(small, tmp_path / "small") / "config.json").read_text())
    with pytest.raises(CheckpointError, match="do(es)? not fit") as info:
        instyle.load(target)
    assert str(target) in str(info.value)

    save_generator(big.decoder, tmp_path / "g64")
    save_generator(small.decoder, tmp_path / "g32")
    (tmp_path / "g64" / "config.json").write_text((tmp_path / "g32" / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"weights do not fit the model: 18 unexpected tensor\(s\)") as info:
        load_generator(tmp_path / "g64")
    assert str(tmp_path / "g64") in str(info.value)


# --------------------------------------------------------------------------- official format


OFFICIAL_VARIANTS = [
    (GRADUAL, 3, 64),
    (GRADUAL, 1, 32),
    (GRADUAL, 19, 128),
    (INTO_W, 3, 64),
    (INTO_W, 1, 32),
    (INTO_WPLUS, 3, 32),
    (INTO_WPLUS, 19, 64),
]


@pytest.mark.parametrize("kind, input_nc, output_size", OFFICIAL_VARIANTS)
def test_official_round_trip(tmp_path, kind, input_nc, output_size):
    config = tiny_config(kind, input_nc, output_size)
    model = make_psp(config, seed=output_size + input_nc)
    label_nc = 19 if input_nc == 19 else 0
    path = write_official(model, tmp_path / "ckpt.pt", label_nc=label_nc)
    loaded = instyle.load(path, device="cpu")  # opts say device 'cuda:0': must not matter
    assert not loaded.training
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert loaded.config.encoder == config.encoder
    assert loaded.config.generator == config.generator
    assert loaded.config.learn_in_w == (kind == INTO_W)
    assert loaded.config.label_nc == label_nc
    assert_same_state(model, loaded)
    assert_same_outputs(model, loaded, sample_input(model))
    # The decoder's own average latent is the mean of the rows.
    torch.testing.assert_close(loaded.decoder.latent_avg, model.latent_avg.mean(0, keepdim=True))


@pytest.mark.parametrize("kind", [GRADUAL, INTO_W])
def test_official_old_opts_without_output_size_and_learn_in_w(tmp_path, kind):
    model = make_psp(tiny_config(kind, output_size=32))
    path = write_official(model, tmp_path / "old.pt", drop_opts=("output_size", "learn_in_w"))
    with pytest.warns(UserWarning, match="opts has no 'output_size'"):
        loaded = instyle.load(path)
    assert loaded.output_size == 32 and loaded.config.learn_in_w == (kind == INTO_W)
    assert_same_outputs(model, loaded, sample_input(model))


def test_official_opts_as_namespace(tmp_path):
    model = make_psp(tiny_config(output_size=32))
    loaded = instyle.load(write_official(model, tmp_path / "ns.pt", as_namespace=True))
    assert_same_outputs(model, loaded, sample_input(model))


@pytest.mark.parametrize("kind", [GRADUAL, INTO_WPLUS])
@pytest.mark.parametrize("avg_shape", ["rows", "one", "flat"])
def test_official_latent_avg_shapes_broadcast_like_the_original(tmp_path, kind, avg_shape):
    """[n_styles, D], [1, D] and [D] latent_avg: each gives the original's broadcast."""
    model = make_psp(tiny_config(kind, output_size=32))
    row = model.latent_avg[3].clone()
    stored = {"rows": model.latent_avg.clone(), "one": row[None], "flat": row}[avg_shape]
    if avg_shape != "rows":
        model.set_latent_avg(row[None].expand(model.n_styles, -1))  # what the original broadcast means
    loaded = quiet_load(write_official(model, tmp_path / "avg.pt", latent_avg=stored))
    assert loaded.latent_avg.shape == (model.n_styles, STYLE_DIM)
    assert_same_outputs(model, loaded, sample_input(model))
    x = sample_input(model)
    with torch.no_grad():
        expected = model.encoder(x) + stored  # the original: codes + latent_avg (broadcast)
        _, latents = loaded(x, resize=False, return_latents=True, randomize_noise=False)
    assert torch.equal(latents, expected)


def test_official_w_encoder_latent_avg_shapes(tmp_path):
    model = make_psp(tiny_config(INTO_W, output_size=32))
    for stored in (model.latent_avg.clone(), model.latent_avg[0].clone()):  # [1, D] and [D]
        loaded = quiet_load(write_official(model, tmp_path / "w.pt", latent_avg=stored))
        assert loaded.latent_avg.shape == (1, STYLE_DIM)
        assert_same_outputs(model, loaded, sample_input(model))


def test_official_latent_avg_of_wrong_shape(tmp_path):
    model = make_psp(tiny_config(output_size=32))
    path = write_official(model, tmp_path / "bad_avg.pt", latent_avg=torch.zeros(5, STYLE_DIM))
    with pytest.raises(CheckpointError, match=r"latent_avg of shape \(5, 32\)") as info:
        quiet_load(path)
    assert str(path) in str(info.value)


def test_official_latent_avg_that_is_not_a_tensor(tmp_path):
    model = make_psp(tiny_config(output_size=32))
    path = write_official(model, tmp_path / "list_avg.pt", latent_avg=[0.5] * STYLE_DIM)
    with pytest.raises(CheckpointError, match="'latent_avg' is a list, expected a tensor") as info:
        quiet_load(path)
    assert str(path) in str(info.value)


def test_official_without_latent_avg_is_estimated_deterministically(tmp_path):
    model = make_psp(tiny_config(output_size=32))
    path = write_official(model, tmp_path / "no_avg.pt", latent_avg=None)
    with pytest.warns(UserWarning, match="no latent_avg; estimating it with mean_latent"):
        a = instyle.load(path)
    b = quiet_load(path)
    assert torch.equal(a.latent_avg, b.latent_avg)
    expected = model.decoder.mean_latent(4096, seed=0)
    torch.testing.assert_close(a.latent_avg, expected.expand(model.n_styles, -1), rtol=0, atol=0)
    assert_same_outputs(a, b, sample_input(model))


def test_official_without_start_from_latent_avg(tmp_path):
    config = tiny_config(output_size=32, start_from_latent_avg=False)
    model = make_psp(config)
    loaded = quiet_load(write_official(model, tmp_path / "plain.pt", latent_avg=None))
    assert loaded.config.start_from_latent_avg is False
    x = sample_input(model)
    with torch.no_grad():
        _, latents = loaded(x, resize=False, return_latents=True, randomize_noise=False)
        assert torch.equal(latents, model.encoder(x))
    assert_same_outputs(model, loaded, x)


def test_load_generator_reads_official_decoder(tmp_path):
    model = make_psp(tiny_config(output_size=32))
    g = load_generator(write_official(model, tmp_path / "psp.pt"))
    assert_same_state(model.decoder, g)
    torch.testing.assert_close(g.latent_avg, model.latent_avg.mean(0, keepdim=True))
    w = torch.randn(1, g.n_latent, STYLE_DIM)
    assert torch.equal(g.synthesize(w), model.decode(w))


# --------------------------------------------------------------------------- rosinality


def test_rosinality_generator_file(tmp_path):
    torch.manual_seed(0)
    g = perturb_(Generator(tiny_config(output_size=64).generator), seed=5).eval()
    path = write_rosinality(g, tmp_path / "stylegan2.pt")
    with pytest.warns(UserWarning, match=r"no average latent; estimated it with mean_latent\(4096, seed=0\)"):
        loaded = load_generator(path)
    assert loaded.config == g.config and not loaded.training
    assert_same_state(g, loaded)  # g_ema, not g
    w = torch.randn(2, g.n_latent, STYLE_DIM, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.synthesize(w), g.synthesize(w))
    z = torch.randn(2, STYLE_DIM, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded([z], randomize_noise=False)[0], g([z], randomize_noise=False)[0])
    # The estimated average latent is deterministic.
    torch.testing.assert_close(loaded.latent_avg, g.mean_latent(4096, seed=0), rtol=0, atol=0)
    with pytest.warns(UserWarning):
        assert torch.equal(load_generator(path).latent_avg, loaded.latent_avg)


def test_rosinality_file_with_latent_avg(tmp_path):
    torch.manual_seed(0)
    g = Generator(tiny_config(output_size=32).generator).eval()
    avg = torch.randn(STYLE_DIM)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no estimation warning when the file has it
        loaded = load_generator(write_rosinality(g, tmp_path / "g.pt", latent_avg=avg))
    assert torch.equal(loaded.latent_avg, avg[None])


def test_rosinality_channel_multiplier_is_inferred(tmp_path):
    g = Generator(GeneratorConfig(size=64, style_dim=STYLE_DIM, n_mlp=2, channel_multiplier=1)).eval()
    torch.save({"g_ema": g.state_dict()}, tmp_path / "cm1.pt")
    loaded = load_generator(tmp_path / "cm1.pt", latent_avg_samples=16)
    assert loaded.config.channel_multiplier == 1 and loaded.config.channels is None
    assert_same_state(g, loaded)


def test_bare_generator_state_dict(tmp_path):
    g = Generator(tiny_config(output_size=32).generator).eval()
    torch.save(g.state_dict(), tmp_path / "sd.pt")
    with pytest.warns(UserWarning):
        assert_same_state(g, load_generator(tmp_path / "sd.pt", latent_avg_samples=16))


def test_load_on_rosinality_file_points_to_load_generator(tmp_path):
    g = Generator(tiny_config(output_size=32).generator)
    path = write_rosinality(g, tmp_path / "stylegan2.pt")
    with pytest.raises(CheckpointError, match="rosinality.*use instyle.load_generator|load it with instyle.load_generator") as info:
        instyle.load(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- mismatches


def test_1024_generator_never_loads_into_a_256_model(tmp_path):
    model = make_psp(tiny_config(output_size=1024))
    path = write_official(model, tmp_path / "psp1024.pt")
    with pytest.raises(CheckpointError, match=r"generator.size: file 1024 vs expected 256") as info:
        quiet_load(path, expected=tiny_config(output_size=256))
    assert str(path) in str(info.value)
    assert quiet_load(path, expected=tiny_config(output_size=1024)).output_size == 1024
    # Direct loading of the tensors into a 256 px generator is refused too.
    g256 = Generator(tiny_config(output_size=256).generator)
    decoder_sd = {k[len("decoder."):]: v for k, v in model.state_dict().items() if k.startswith("decoder.")}
    with pytest.raises(CheckpointError, match=r"psp1024.pt: weights do not fit the model.*unexpected tensor"):
        load_state_checked(g256, decoder_sd, path)


def test_expected_config_mismatch_names_both_sides(tmp_path):
    model = make_psp(tiny_config(input_nc=1, output_size=32))
    path = write_official(model, tmp_path / "sketch.pt")
    with pytest.raises(CheckpointError, match=r"encoder.input_nc: file 1 vs expected 3") as info:
        quiet_load(path, expected=tiny_config(input_nc=3, output_size=32))
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"output_size": 256}, r"opts\['output_size'\]=256 but the weights describe output_size=64"),
        ({"encoder_type": INTO_WPLUS}, r"opts\['encoder_type'\]='BackboneEncoderUsingLastLayerIntoWPlus'"),
        ({"input_nc": 1}, r"opts\['input_nc'\]=1 but the weights describe input_nc=3"),
        ({"learn_in_w": True}, r"opts\['learn_in_w'\]=True contradicts"),
        ({"n_styles": 18}, r"opts\['n_styles'\]=18 but the generator takes 10"),
    ],
)
def test_opts_contradicting_weights(tmp_path, changes, match):
    model = make_psp(tiny_config(output_size=64))
    path = write_official(model, tmp_path / "contradiction.pt", opts_changes=changes)
    with pytest.raises(CheckpointError, match=match) as info:
        quiet_load(path)
    assert str(path) in str(info.value)


def test_state_dict_missing_a_tensor(tmp_path):
    model = make_psp(tiny_config(output_size=32))
    path = write_official(model, tmp_path / "partial.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["decoder.conv1.noise.weight"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"missing from the file.*decoder.conv1.noise.weight") as info:
        quiet_load(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- broken files


def _broken_files(tmp_path: Path) -> dict[str, Path]:
    model = make_psp(tiny_config(output_size=32))
    good = write_official(model, tmp_path / "good.pt")
    data = good.read_bytes()
    files = {
        "truncated": tmp_path / "truncated.pt",
        "zero-byte": tmp_path / "empty.pt",
        "garbage": tmp_path / "garbage.pt",
        "text": tmp_path / "notes.pt",
        "directory": tmp_path / "folder.pt",
        "missing": tmp_path / "missing.pt",
    }
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["zero-byte"].write_bytes(b"")
    files["garbage"].write_bytes(random.Random(0).randbytes(4096))
    files["text"].write_text("this is not a checkpoint\n")
    files["directory"].mkdir()
    return files


@pytest.mark.parametrize("loader", ["load", "load_generator"])
def test_broken_files_give_checkpoint_error_naming_the_file(tmp_path, loader):
    fn = instyle.load if loader == "load" else load_generator
    for what, path in _broken_files(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            fn(path)
        msg = str(info.value)
        assert str(path) in msg, (what, msg)
        assert "Traceback" not in msg and len(msg) < 1000, (what, msg)


def test_broken_file_messages_say_what_is_wrong(tmp_path):
    files = _broken_files(tmp_path)
    expectations = {
        "truncated": "truncated or corrupt",
        "zero-byte": "empty",
        "directory": "directory",
        "missing": "no such file",
    }
    for what, match in expectations.items():
        with pytest.raises(CheckpointError, match=match):
            instyle.load(files[what])


# --------------------------------------------------------------------------- malicious pickles


def _write_marker(path: str) -> None:
    Path(path).write_text("code from a checkpoint ran")


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsFunction:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (str(self.marker),))


@pytest.mark.parametrize("payload", ["os.system", "function"])
@pytest.mark.parametrize("container", ["zip", "legacy", "raw-pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, container):
    marker = tmp_path / "marker"
    evil = _RunsShell(marker) if payload == "os.system" else _RunsFunction(marker)
    good = make_psp(tiny_config(output_size=32))
    ckpt = {
        "state_dict": {k: v for k, v in good.state_dict().items() if k != "latent_avg"},
        "opts": {"hook": evil},
        "latent_avg": good.latent_avg,
    }
    path = tmp_path / "evil.pt"
    if container == "zip":
        torch.save(ckpt, path)
    elif container == "legacy":
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(ckpt, f)
    assert not marker.exists()
    for fn in (instyle.load, load_generator):
        with pytest.raises(CheckpointError) as info:
            fn(path)
        msg = str(info.value)
        assert str(path) in msg
        assert "refused" in msg and "Nothing from the file was executed" in msg
        expected_global = r"(posix|nt|os)\.system" if payload == "os.system" else r"test_interop\._write_marker"
        assert re.search(expected_global, msg), msg
        assert not marker.exists()


# --------------------------------------------------------------------------- cache lookup


def test_bare_name_is_found_in_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    model = make_psp(tiny_config(output_size=32))
    write_official(model, cache / "my_model.pt")
    save_psp(model, cache / "my_model_dir")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("INSTYLE_CACHE", str(cache))
    assert instyle.interop.cache_dir() == cache
    assert_same_outputs(model, quiet_load("my_model.pt"), sample_input(model))
    assert_same_outputs(model, instyle.load("my_model_dir"), sample_input(model))
    assert_same_state(model.decoder, load_generator("my_model.pt"))
    with pytest.raises(CheckpointError, match=r"unknown.pt: no such file \(also looked in .*cache\)"):
        instyle.load("unknown.pt")


def test_published_name_gets_a_helpful_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(CheckpointError) as info:
        instyle.load("psp_ffhq_encode.pt")
    msg = str(info.value)
    for part in ("psp_ffhq_encode.pt", "inversion", "1024", "github.com/eladrich/pixel2style2pixel",
                 str(tmp_path / "empty_cache"), "INSTYLE_CACHE"):
        assert part in msg, (part, msg)
    with pytest.raises(CheckpointError, match="sketch2face"):
        load_generator("psp_celebs_sketch_to_face.pt")
