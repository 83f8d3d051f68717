"""e4e and ReStyle on tiny models: encoder semantics, the ReStyle loop, official-format
files (family from opts, architecture from weights, contradictions refused), own-format
round trips and ``instyle encode --iterations``. Exact agreement with the original code
is checked by ``test_conformance_family``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import instyle
from instyle.interop import CheckpointError
from instyle.models import PSP, EncoderConfig, PSPConfig, build_encoder, get_config
from instyle.utils.config import ConfigError

NARROW = dict(style_dim=64, widths=(8, 16, 32, 64), units=(1, 2, 2, 1), input_size=64)
#: (e4e-style encoder, the encoder with the same tensors whose rows it combines)
PAIRS = [
    ("Encoder4Editing", "GradualStyleEncoder"),
    ("ProgressiveBackboneEncoder", "BackboneEncoder"),
    ("ResNetProgressiveBackboneEncoder", "ResNetBackboneEncoder"),
]


def encoder(kind: str, input_nc: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return build_encoder(EncoderConfig(type=kind, input_nc=input_nc, n_styles=10, **NARROW)).eval()


def tiny(family: str, kind: str, seed: int = 0, input_size: int = 64) -> PSP:
    gen = get_config("tiny").generator
    enc = EncoderConfig(
        type=kind, input_nc=6 if family == "restyle" else 3, n_styles=gen.n_latent, **{**NARROW, "input_size": input_size}
    )
    torch.manual_seed(seed)
    model = PSP(PSPConfig(encoder=enc, generator=gen, family=family))
    # Small random offsets so that each ReStyle step stays a modest residual.
    for head in getattr(model.encoder, "styles", []):
        head.linear.weight.data.mul_(0.25)
    model.set_latent_avg(model.decoder.mean_latent(256, seed=0) + 0.1 * torch.randn(gen.n_latent, 64))
    return model.eval()


def images(n=2, seed=1, size=64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("progressive, plain", PAIRS)
def test_progressive_rows_are_the_base_code_plus_each_head(progressive, plain):
    """Row 0 = head 0; row i = head 0 + head i (the heads the plain encoder stacks); at
    stage k the rows after k stay the base code."""
    x = torch.randn(2, 6 if "Backbone" in plain else 3, 64, 64)
    e4e = encoder(progressive, x.shape[1])
    ref = encoder(plain, x.shape[1], seed=1)
    ref.load_state_dict(e4e.state_dict())
    with torch.no_grad():
        heads, w = ref(x), e4e(x)
        e4e.set_progressive_stage(3)
        staged = e4e(x)
    torch.testing.assert_close(w[:, 0], heads[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(w[:, 1:], heads[:, :1] + heads[:, 1:], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(staged[:, :4], w[:, :4], rtol=0, atol=0)
    assert torch.equal(staged[:, 4:], heads[:, :1].expand(-1, 6, -1))
    with pytest.raises(ValueError, match="progressive stage 19 is outside 0..18"):
        e4e.set_progressive_stage(19)


def test_single_style_code_encoder_repeats_the_w_code():
    single = encoder("SingleStyleCodeEncoder")
    w_enc = encoder("BackboneEncoderUsingLastLayerIntoW", seed=1)
    w_enc.load_state_dict(single.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(single(x), w_enc(x)[:, None].expand(-1, 10, -1))


def test_resnet_trunk_has_the_official_names_and_matches_torchvision():
    """ReStyle builds its ResNet encoders from torchvision's resnet34 ``layer1..4`` (stage 1
    keeps the resolution, the others start with a strided block and a 1x1 downsample); ours
    has the same tensor names and computes the same function."""
    resnet = pytest.importorskip("torchvision.models.resnet")
    enc = encoder("ResNetBackboneEncoder", 6)
    names = set(enc.state_dict())
    assert {"conv1.weight", "bn1.running_var", "relu.weight", "body.0.conv1.weight", "body.1.downsample.0.weight",
            "body.5.bn2.bias", "styles.9.linear.weight"} <= names
    assert not any(k.startswith("input_layer") for k in names) and "body.0.downsample.0.weight" not in names
    torch.manual_seed(0)
    blocks, in_ch = [], 8
    for stage, (width, n) in enumerate(zip(NARROW["widths"], NARROW["units"])):
        for j in range(n):
            stride = 2 if stage > 0 and j == 0 else 1
            down = None
            if stride != 1 or in_ch != width:
                down = torch.nn.Sequential(torch.nn.Conv2d(in_ch, width, 1, stride, bias=False), torch.nn.BatchNorm2d(width))
            blocks.append(resnet.BasicBlock(in_ch, width, stride, down))
            in_ch = width
    reference = torch.nn.Sequential(*blocks).eval()
    for m in reference.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    enc.body.load_state_dict(reference.state_dict())
    x = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.body(x), reference(x))
        assert enc(torch.randn(1, 6, 64, 64)).shape == (1, 10, 64)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "family, kind, input_nc, match",
    [
        ("psp", "Encoder4Editing", 3, r"encoder.type='Encoder4Editing' does not belong to family='psp'; it is built by \['e4e'\]"),
        ("e4e", "BackboneEncoder", 3, r"encoder.type='BackboneEncoder' does not belong to family='e4e'"),
        ("restyle", "BackboneEncoder", 3, r"\[image, reconstruction\] = 6 channels, got encoder.input_nc=3"),
        ("stylegan", "GradualStyleEncoder", 3, r"family='stylegan' is not accepted; choose one of \['psp', 'e4e', 'restyle'\]"),
    ],
)
def test_family_config_validation(family, kind, input_nc, match):
    gen = get_config("tiny").generator
    enc = EncoderConfig(type=kind, input_nc=input_nc, n_styles=gen.n_latent, **NARROW)
    with pytest.raises(ConfigError, match=match):
        PSPConfig(encoder=enc, generator=gen, family=family)


# --------------------------------------------------------------------------- ReStyle loop


def reference_loop(model: PSP, x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The loop of the fixtures' README, written out with plain calls."""
    avg = model.decoder([model.latent_avg[None]], input_is_latent=True, randomize_noise=False)[0]
    y = torch.nn.functional.adaptive_avg_pool2d(avg, 64).repeat(len(x), 1, 1, 1)
    latent, out = None, []
    for it in range(n):
        codes = model.encoder(torch.cat([x, y], dim=1))
        codes = codes + (model.latent_avg.repeat(len(x), 1, 1) if it == 0 else latent)
        y, latent = model.decoder([codes], input_is_latent=True, randomize_noise=False, return_latents=True)
        y = torch.nn.functional.adaptive_avg_pool2d(y, 64)
        out.append(latent)
    return out


def test_restyle_encode_iterates_from_the_average_image():
    model = tiny("restyle", "ProgressiveBackboneEncoder")
    x = images()
    with torch.no_grad():
        expected = reference_loop(model, x, 5)
        every = model.encode(x, return_all=True)  # default: the original's 5 iterations
        last2 = model.encode(x, iterations=2)
    assert len(every) == 5
    for got, want in zip(every, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert torch.equal(last2, every[1])
    assert (every[4] - every[3]).abs().max() > 1e-3  # every step moves the latent


def test_iterations_are_checked():
    restyle, e4e = tiny("restyle", "BackboneEncoder"), tiny("e4e", "Encoder4Editing")
    x = images(1)
    with pytest.raises(ValueError, match="iterations=0 must be a positive integer"):
        restyle.encode(x, iterations=0)
    with pytest.raises(ValueError, match=r"expects images \[B, 3, 64, 64\]"):
        restyle.encode(torch.zeros(1, 6, 64, 64))
    with pytest.raises(ValueError, match="only ReStyle models refine iteratively; this e4e model"):
        e4e.encode(x, iterations=3)
    with torch.no_grad():
        assert torch.equal(e4e.encode(x, iterations=1), e4e.encode(x))
        assert torch.equal(e4e.encode(x, return_all=True)[0], e4e.encode(x))


# --------------------------------------------------------------------------- official files


def official(model: PSP, family: str, **opt_changes) -> dict:
    """A checkpoint laid out as the e4e / ReStyle coaches save it."""
    cfg = model.config
    sd = {k: v.clone() for k, v in model.state_dict().items() if k != "latent_avg"}
    opts = {"exp_dir": "x", "dataset_type": "ffhq_encode", "encoder_type": cfg.encoder.type,
            "start_from_latent_avg": True, "device": "cuda:0"}
    if family == "e4e":
        opts.update(stylegan_size=cfg.output_size, progressive_steps=[0] * cfg.n_styles, w_discriminator_lambda=0.1)
    else:
        opts.update(input_nc=cfg.encoder.input_nc, output_size=cfg.output_size, n_iters_per_batch=5)
    opts.update(opt_changes)
    return {"state_dict": sd, "opts": opts, "latent_avg": model.latent_avg.clone()}


CASES = [
    ("e4e", "Encoder4Editing"),
    ("e4e", "SingleStyleCodeEncoder"),
    ("e4e", "GradualStyleEncoder"),
    ("restyle", "BackboneEncoder"),
    ("restyle", "ProgressiveBackboneEncoder"),
    ("restyle", "ResNetBackboneEncoder"),
    ("restyle", "ResNetProgressiveBackboneEncoder"),
    ("restyle", "GradualStyleEncoder"),
    ("restyle", "ResNetGradualStyleEncoder"),
]


@pytest.mark.parametrize("family, kind", CASES)
def test_official_files_load_with_their_family_and_round_trip(tmp_path, family, kind):
    """Family and encoder class from opts, architecture from the weights; then own format.
    (A W encoder's input size cannot be read from its tensors: official ones take 256.)"""
    size = 256 if kind == "SingleStyleCodeEncoder" else 64
    model = tiny(family, kind, input_size=size)
    path = tmp_path / "official.pt"
    torch.save(official(model, family), path)
    loaded = instyle.load(path)
    assert loaded.config == model.config
    x = images(size=size)
    with torch.no_grad():
        want = model.encode(x, iterations=2 if family == "restyle" else None)
        assert torch.equal(loaded.encode(x, iterations=2 if family == "restyle" else None), want)
        loaded.save_pretrained(tmp_path / "own")
        doc = json.loads((tmp_path / "own" / "config.json").read_text())
        assert doc["config"]["family"] == family and doc["config"]["encoder"]["type"] == kind
        own = instyle.load(tmp_path / "own")
        assert own.config == model.config
        assert torch.equal(own.encode(x, iterations=2 if family == "restyle" else None), want)


def test_restyle_latent_avg_of_shape_512(tmp_path):
    """A ReStyle coach that estimated latent_avg saves ``[512]``: it broadcasts over styles."""
    model = tiny("restyle", "ProgressiveBackboneEncoder")
    model.set_latent_avg(model.latent_avg[0])
    ckpt = official(model, "restyle")
    ckpt["latent_avg"] = model.latent_avg[0].clone()
    torch.save(ckpt, tmp_path / "r.pt")
    loaded = instyle.load(tmp_path / "r.pt")
    x = images(1)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x, iterations=2), model.encode(x, iterations=2))


@pytest.mark.parametrize(
    "family, kind, changes, match",
    [
        ("e4e", "Encoder4Editing", {"encoder_type": "SingleStyleCodeEncoder"},
         r"opts\['encoder_type'\]='SingleStyleCodeEncoder' \(tensors of a BackboneEncoderUsingLastLayerIntoW\) "
         r"but the weights describe a GradualStyleEncoder"),
        ("restyle", "BackboneEncoder", {"encoder_type": "ResNetProgressiveBackboneEncoder"},
         r"'ResNetProgressiveBackboneEncoder' \(tensors of a ResNetBackboneEncoder\) but the weights describe a BackboneEncoder"),
        ("e4e", "Encoder4Editing", {"stylegan_size": 1024},
         r"opts\['stylegan_size'\]=1024 but the weights describe a generator of size=64"),
        ("restyle", "BackboneEncoder", {"output_size": 256}, r"opts\['output_size'\]=256 but the weights describe a generator of size=64"),
        ("restyle", "BackboneEncoder", {"input_nc": 3}, r"opts\['input_nc'\]=3 but the weights describe encoder input channels=6"),
        ("restyle", "BackboneEncoder", {"encoder_type": "Encoder4Editing"},
         r"'Encoder4Editing' \(tensors of a GradualStyleEncoder\) but the weights describe a BackboneEncoder"),
        ("restyle", "GradualStyleEncoder", {"encoder_type": "Encoder4Editing"},
         r"encoder.type='Encoder4Editing' does not belong to family='restyle'"),
        ("e4e", "Encoder4Editing", {"encoder_type": "HyperEncoder"}, r"opts\['encoder_type'\]='HyperEncoder' is not a e4e encoder type"),
    ],
)
def test_files_contradicting_their_options_are_refused(tmp_path, family, kind, changes, match):
    path = tmp_path / "bad.pt"
    torch.save(official(tiny(family, kind), family, **changes), path)
    with pytest.raises(CheckpointError, match=match) as err:
        instyle.load(path)
    assert str(path) in str(err.value)


def test_same_tensors_different_encoder_type_give_different_codes(tmp_path):
    """Why the loader must follow opts: an e4e file read as pSp's GradualStyleEncoder would
    load without error and encode differently."""
    model = tiny("e4e", "Encoder4Editing")
    torch.save(official(model, "e4e"), tmp_path / "e4e.pt")
    torch.save(official(model, "e4e", encoder_type="GradualStyleEncoder"), tmp_path / "fpn.pt")
    x = images(1)
    with torch.no_grad():
        a, b = instyle.load(tmp_path / "e4e.pt").encode(x), instyle.load(tmp_path / "fpn.pt").encode(x)
    assert torch.equal(a[:, 0], b[:, 0])  # row 0 is head 0 in both
    assert (a[:, 1:] - b[:, 1:]).abs().max() > 1e-3  # the others differ by e4e's base code


# --------------------------------------------------------------------------- CLI


def test_cli_encode_iterations(tmp_path, capsys):
    from PIL import Image

    from instyle.cli.main import main
    from instyle.inference.preprocess import prepare_input

    model = tiny("restyle", "ProgressiveBackboneEncoder")
    model.save_pretrained(tmp_path / "restyle")
    tiny("e4e", "Encoder4Editing").save_pretrained(tmp_path / "e4e")
    src = tmp_path / "in"
    src.mkdir()
    arr = ((images(1)[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    Image.fromarray(arr).save(src / "a.png")
    out = tmp_path / "out"
    rc = main(["encode", str(src), "-c", str(tmp_path / "restyle"), "-o", str(out), "--iterations", "2",
               "--save-latents", "--device", "cpu"])
    assert rc == 0
    assert json.loads((out / "summary.json").read_text())["iterations"] == 2
    x = prepare_input(src / "a.png", model.config)[None]
    with torch.no_grad():
        want = model.encode(x, iterations=2)[0]
    np.testing.assert_allclose(np.load(out / "latents" / "a.npy"), want.numpy(), rtol=0, atol=1e-5)
    assert (out / "a.png").is_file()
    capsys.readouterr()
    rc = main(["encode", str(src), "-c", str(tmp_path / "e4e"), "-o", str(tmp_path / "o2"), "--iterations", "3"])
    assert rc == 2
    err = capsys.readouterr().err  # the iterative families come from the registry
    assert "--iterations=3: ReStyle, HyperStyle and ReStyle over StyleGAN3 models take N >= 1" in err
    assert "this e4e model encodes in one step" in err


def test_serve_iterations_set_the_restyle_default():
    from instyle.demo.store import ModelEntry, ModelStore

    model = tiny("restyle", "BackboneEncoder")
    store = ModelStore([ModelEntry("r", model, source="tiny")])
    x = images(1)
    with torch.no_grad():
        two = model.encode(x, iterations=2)
        store.set_iterations(2)
        assert model.default_iterations == 2 and torch.equal(model.encode(x), two)
    with pytest.raises(ValueError, match="iterations=0 must be a positive integer"):
        store.set_iterations(0)


def test_evaluate_compare_puts_several_families_side_by_side(tmp_path, capsys):
    from instyle.cli.main import main

    paths = []
    for name, mse, lpips in (("psp_ffhq_encode.pt", 0.03, 0.17), ("e4e_ffhq_encode.pt", 0.05, 0.20),
                             ("restyle_e4e_ffhq_encode.pt", 0.02, 0.19)):
        report = {"method": name, "data": "celeba", "n_images": 8, "metrics": {"mse": {"mean": mse}, "lpips": {"mean": lpips}}}
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    assert main(["evaluate", "--compare", *map(str, paths), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| psp_", "| e4e_", "| restyle_"))]
    assert len(rows) == 3 and "| best | n/a | psp_ffhq_encode.pt | restyle_e4e_ffhq_encode.pt |" in out
    assert "best: identity" not in out and "mse: restyle_e4e_ffhq_encode.pt" in out and "lpips: psp_ffhq_encode.pt" in out
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["best"]["mse"] == "restyle_e4e_ffhq_encode.pt"
    assert main(["evaluate", "--compare", str(paths[0])]) == 2
    assert "compare needs at least two reports, got 1" in capsys.readouterr().err


def cars_reference_loop(model: PSP, x: torch.Tensor, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The cars branch of the original ``get_average_image`` / ``run_on_batch``
    (``resize_outputs=False``), for a 64 px generator: face_pool to 256 then rows 32:224,
    full-size outputs cropped to rows 8:56 (64:448 of 512, scaled), fed back pooled to
    the encoder's 48x64 (192x256 in the original)."""
    pool = torch.nn.functional.adaptive_avg_pool2d
    avg = model.decoder([model.latent_avg[None]], input_is_latent=True, randomize_noise=False)[0]
    y = pool(pool(avg, (256, 256))[:, :, 32:224], (48, 64)).repeat(len(x), 1, 1, 1)
    latent, out = model.latent_avg.repeat(len(x), 1, 1), []
    for _ in range(n):
        latent = model.encoder(torch.cat([x, y], dim=1)) + latent
        full = model.decoder([latent], input_is_latent=True, randomize_noise=False)[0][:, :, 8:56]
        out.append((latent, full))
        y = pool(full, (48, 64))
    return out


@pytest.mark.parametrize("family, kind", [("restyle", "ResNetProgressiveBackboneEncoder"), ("e4e", "Encoder4Editing")])
def test_cars_models_take_192x256_inputs_and_crop_their_outputs(tmp_path, family, kind):
    """``dataset_type='cars_encode'``: inputs 3/4 as high as wide, outputs cropped to rows
    [size/8, 7 size/8) by ``decode`` (``forward`` keeps the square output, as the original)."""
    source = tiny(family, kind)
    torch.save(official(source, family, dataset_type="cars_encode"), tmp_path / "cars.pt")
    with pytest.warns(UserWarning, match="cars model: 64x48 inputs, outputs cropped to rows 8:56"):
        model = instyle.load(tmp_path / "cars.pt")
    assert model.input_hw == (48, 64) and model.config.output_crop == (8, 56)
    x = images(2)[:, :, :48]
    with torch.no_grad():
        if family == "restyle":
            every = model.encode(x, iterations=3, return_all=True)
            for (w, image), w_got in zip(cars_reference_loop(model, x, 3), every):
                torch.testing.assert_close(w_got, w, rtol=0, atol=1e-5)
                torch.testing.assert_close(model.decode(w_got), image, rtol=0, atol=1e-5)
        w = model.encode(x)
        assert model.decode(w).shape == (2, 3, 48, 64) and model.decode(w, resize=True).shape == (2, 3, 192, 256)
        x_in = x if family == "e4e" else torch.cat([x, x], dim=1)  # ReStyle's forward takes [image, previous]
        assert model(x_in, randomize_noise=False).shape == (2, 3, 256, 256)
    with pytest.raises(ValueError, match=r"expects images \[B, 3, 48, 64\]"):
        model.encode(images(1))
    from PIL import Image

    from instyle.inference.preprocess import prepare_input

    assert prepare_input(Image.new("RGB", (300, 300)), model.config).shape == (3, 48, 64)
    model.save_pretrained(tmp_path / "own")
    own = instyle.load(tmp_path / "own")
    assert own.config == model.config and own.input_hw == (48, 64)


@pytest.mark.parametrize(
    "name, match",
    [
        ("e4e_ffhq_encode.pt", r"a published e4e checkpoint \(faces \(FFHQ\), 1024px\); download it from https://github.com/omertov"),
        ("restyle_e4e_horse_encode.pt", r"a published restyle checkpoint \(horses, 256px\); download it from https://github.com/yuval"),
    ],
)
def test_missing_published_family_checkpoints_say_where_to_get_them(tmp_path, monkeypatch, name, match):
    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        instyle.load(name)


def test_refine_restyle_runs_the_models_own_iterations(tmp_path, capsys):
    """``--refine restyle`` (and ``refine(..., "restyle")``): N iterations of the ReStyle loop,
    from the average image, as ``encode(x, iterations=N)``; no LPIPS weights are needed."""
    from instyle.cli.main import main
    from instyle.inference.refine import RefineConfig, refine

    model = tiny("restyle", "BackboneEncoder")
    x = images(1)
    with torch.no_grad():
        want = model.encode(x, iterations=3)
    result = refine(model, x[0], torch.zeros(model.n_styles, 512), "restyle", RefineConfig(steps=3))
    torch.testing.assert_close(result.latent, want[0], rtol=0, atol=1e-6)
    assert result.method == "restyle" and result.steps == 3
    model.save_pretrained(tmp_path / "m")
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(((x[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype("uint8")).save(src / "a.png")
    assert main(["encode", str(src), "-c", str(tmp_path / "m"), "-o", str(tmp_path / "out"), "--device", "cpu",
                 "--refine", "restyle", "--refine-steps", "3"]) == 0
    assert (tmp_path / "out" / "a.png").is_file()
