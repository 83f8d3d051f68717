"""Inference precision and compilation as user options (``instyle.models.runtime``):
fp32 stays exact, bf16 keeps quality, ``auto`` says what it picked, every command takes the flags."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import instyle
from instyle.cli.main import build_parser, main
from instyle.inference.inverter import Inverter
from instyle.models import get_config
from instyle.models.init import random_psp
from instyle.models.runtime import set_runtime
from instyle.utils.config import ConfigError
from instyle.utils.precision import autocast, cpu_bf16_features, resolve_precision


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


@pytest.fixture(scope="module")
def tiny():
    return random_psp(get_config("tiny"), seed=7, latent_samples=256)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("precision") / "tiny"
    tiny.save_pretrained(d)
    return d


def _x(model, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, model.input_nc, model.input_size, model.input_size, generator=g) * 2 - 1


def _run(model, x):
    with torch.inference_mode():
        w = model.encode(x)
        return w, model.decode(w)


def test_fp32_default_is_exact_and_restorable(tiny):
    x = _x(tiny)
    with torch.inference_mode():
        w_ref = tiny.encoder(x) + tiny.latent_avg[None]
        y_ref, _ = tiny.decoder([w_ref], input_is_latent=True, randomize_noise=False)
    w, y = _run(tiny, x)
    assert torch.equal(w, w_ref) and torch.equal(y, y_ref)  # no cast, no layout change on the default path
    set_runtime(tiny, "bf16")
    set_runtime(tiny, "fp32")
    w2, y2 = _run(tiny, x)
    assert torch.equal(w2, w_ref) and torch.equal(y2, y_ref)
    assert all(p.is_contiguous() for p in tiny.encoder.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_keeps_psnr_above_40db(tiny, precision):
    """Measured on this config: bf16 48.5 dB, fp16 68 dB (seed 7 model, random inputs)."""
    x = _x(tiny, batch=4)
    w32, y32 = _run(tiny, x)
    try:
        choice = set_runtime(tiny, precision)
        w16, y16 = _run(tiny, x)
    finally:
        set_runtime(tiny, "fp32")
    assert choice.name == precision and tiny.runtime.precision == "fp32"
    assert w16.dtype == torch.float32 and y16.dtype == torch.float32  # callers always get float32
    assert not torch.equal(y16, y32)  # the 16-bit path really ran
    quality = psnr(y16.clamp(-1, 1), y32.clamp(-1, 1))
    assert 40.0 <= quality < math.inf, quality


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("ops", ["auto", "reference"])
def test_styles_and_demodulation_stay_float32_under_16_bit_autocast(ops, batch):
    """A style or demodulation factor rounded to 16 bits scales a whole feature map, so its
    error does not average out over the pixels (the 1024-px generator lost >1 dB to it).
    Under bf16 autocast they keep float32; only the convolution rounds its operands and
    result, errors that average out over a channel's pixels. The per-channel gain of the
    output against float32 shows which: measured RMS 2.5e-4 (1.7e-3 to 2.1e-3 on the fast
    path when the factors were rounded)."""
    from instyle.models.stylegan2 import ModulatedConv2d
    from instyle.ops import use_backend

    torch.manual_seed(0)
    conv = ModulatedConv2d(64, 16, 3, style_dim=32)
    style, x = torch.randn(batch, 32), torch.randn(batch, 64, 32, 32)
    with torch.no_grad(), use_backend(ops):
        s32, expected = conv.styles(style), conv(x, style)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s16, out = conv.styles(style), conv(x, style)
    assert s16.dtype == torch.float32 and torch.equal(s16, s32)
    assert out.dtype == torch.bfloat16  # the convolution itself ran in 16 bits
    out, expected = out.float().flatten(2), expected.flatten(2)
    gain = (out * expected).sum(2) / expected.square().sum(2)  # per (image, output channel)
    rms = (gain - 1).square().mean().sqrt().item()
    assert rms < 6e-4, rms


def test_low_precision_makes_only_the_encoder_channels_last(tiny):
    try:
        set_runtime(tiny, "bf16")
        enc4 = [p for p in tiny.encoder.parameters() if p.ndim == 4]
        assert enc4 and all(p.is_contiguous(memory_format=torch.channels_last) for p in enc4)
        assert all(p.is_contiguous() for p in tiny.decoder.parameters())  # 5-D modulated weights untouched
    finally:
        set_runtime(tiny, "fp32")
    assert all(p.is_contiguous() for p in tiny.encoder.parameters())


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"amx_bf16", "avx512f"}, "bf16"),
        ({"avx512_bf16"}, "bf16"),
        ({"avx2", "fma", "avx512f"}, "fp32"),
        (set(), "fp32"),
    ],
)
def test_auto_picks_bf16_only_on_cpus_that_compute_it_natively(flags, expected):
    choice = resolve_precision("auto", "cpu", cpu_flags=flags)
    assert choice.requested == "auto" and choice.name == expected
    assert choice.describe().startswith(f"precision auto -> {expected} (")
    assert "AMX" in choice.reason or "AVX512" in choice.reason


def test_auto_on_this_machine_reports_its_choice(tiny):
    native = cpu_bf16_features()
    try:
        choice = set_runtime(tiny, "auto")
        assert choice.name == ("bf16" if native else "fp32")
        assert tiny.runtime.note == choice.describe() and "auto ->" in tiny.runtime.note
    finally:
        set_runtime(tiny, "fp32")


def test_explicit_precisions_pass_through_and_bad_names_are_named():
    assert resolve_precision("bf16", "cpu").name == "bf16"
    with pytest.raises(ConfigError, match=r"precision='half'.*'fp32', 'bf16', 'fp16', 'auto'"):
        resolve_precision("half", "cpu")
    with pytest.raises(ConfigError, match="compile='fastest'"):
        set_runtime(random_psp(get_config("tiny"), seed=0, latent_samples=16), "fp32", compile="fastest")
    with autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_load_and_inverter_take_precision(tiny_dir, tiny):
    model = instyle.load(tiny_dir, precision="bf16")
    assert model.runtime.precision == "bf16"
    assert instyle.load(tiny_dir).runtime.precision == "fp32"
    inv = Inverter(tiny_dir, device="cpu", precision="auto")
    assert inv.precision in ("fp32", "bf16") and "auto ->" in inv.model.runtime.note
    assert Inverter(model, device="cpu").precision == "bf16"  # a given model keeps its setting
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    low = Inverter(tiny_dir, device="cpu", precision="bf16").invert(img)
    ref = Inverter(tiny_dir, device="cpu").invert(img)
    diff = np.abs(np.asarray(low.image, dtype=int) - np.asarray(ref.image, dtype=int))
    assert low.latent.dtype == torch.float32 and diff.max() <= 8 and diff.mean() < 1.0


def test_every_model_command_takes_precision_and_compile(tiny_dir, tmp_path, capsys, monkeypatch):
    """Parse all seven commands with the flags, run the five batch commands in bf16, and
    check that --compile reaches ``torch.compile`` (patched: compiling is the slow test's job)."""
    parser = build_parser()
    img, d = tmp_path / "a.png", tmp_path / "d.npy"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(img)
    np.save(d, np.random.default_rng(2).standard_normal(64).astype(np.float32))
    base = ["-c", str(tiny_dir), "--device", "cpu", "--precision", "bf16"]
    commands = {
        "encode": ["encode", str(img), "-o", str(tmp_path / "enc"), *base],
        "mix": ["mix", str(img), "-n", "2", "-o", str(tmp_path / "mix"), *base],
        "interpolate": ["interpolate", str(img), str(img), "--steps", "2", "-o", str(tmp_path / "int"), *base],
        "edit": ["edit", "direction", str(img), "-d", str(d), "--strengths=0,1", "-o", str(tmp_path / "ed"), *base],
        "evaluate": [
            "evaluate",
            "--data",
            str(tmp_path / "data"),
            "-o",
            str(tmp_path / "ev"),
            "--identity",
            "none",
            *base,
        ],
    }
    (tmp_path / "data").mkdir()
    Image.open(img).save(tmp_path / "data" / "a.png")
    for name, argv in {**commands, "serve": ["serve", *base]}.items():
        args = parser.parse_args([*argv, "--compile"])
        assert (args.precision, args.compile) == ("bf16", True), name
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(type(self).__name__))
    for name, argv in commands.items():
        assert main([*argv, "--compile"]) == 0, name
        err = capsys.readouterr().err
        assert "precision bf16" in err, (name, err)
    encoder = type(instyle.load(tiny_dir).encoder).__name__
    assert compiled.count("Generator") == compiled.count(encoder) == len(commands)


def test_serve_applies_precision_to_every_model(tiny_dir, monkeypatch, capsys):
    served = {}
    fake_app = types.SimpleNamespace(serve=lambda settings, store: served.update(store=store))
    monkeypatch.setitem(sys.modules, "instyle.demo.app", fake_app)  # no Gradio server (nor import)
    assert main(["serve", "-c", str(tiny_dir), "-c", str(tiny_dir), "--device", "cpu", "--precision", "auto"]) == 0
    store = served["store"]
    assert [store.get(n).model.runtime.note.startswith("precision auto ->") for n in store.names] == [True, True]
    assert capsys.readouterr().err.count("precision auto ->") == 2


@pytest.mark.slow
def test_compiled_model_matches_eager(tiny, monkeypatch):
    """``compile=True`` traces encoder and generator with TorchDynamo (whole models, the fast
    ops included) and keeps outputs and parameter names. The ``aot_eager`` backend stands in
    for inductor, whose C++ build of the tiny model took ~5 min on 2 busy cores."""
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, mode=None: compile_module(self, backend="aot_eager"))
    x = _x(tiny, batch=2)
    w_ref, y_ref = _run(tiny, x)
    torch._dynamo.reset()
    try:
        set_runtime(tiny, "fp32", compile=True)
        assert tiny.runtime.compile_mode == "default"
        w, y = _run(tiny, x)
        assert not any("_orig_mod" in k for k in tiny.state_dict())
        assert torch._dynamo.utils.counters["stats"]["calls_captured"] > 0  # dynamo really traced the model
    finally:
        set_runtime(tiny, "fp32")
    assert (w - w_ref).abs().max() < 1e-4 and (y - y_ref).abs().max() < 1e-4
