"""StyleGAN3 generator and ReStyle over StyleGAN3 on tiny configurations: filters, transforms,
magnitude EMA, strict loading, NVIDIA pickles (safe reading, crafted files refused), own
format round trips and published-style checkpoints with PosixPath options."""

from __future__ import annotations

import importlib.util
import pathlib
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import instyle
from instyle.errors import CheckpointError
from instyle.interop.stylegan3 import stylegan3_from_state_dict
from instyle.models.encoders.psp_encoders import EncoderConfig
from instyle.models.restyle3 import ReStyle3, ReStyle3Config
from instyle.models.stylegan3 import StyleGAN3Config, StyleGAN3Generator, design_lowpass_filter, layer_specs
from instyle.utils.config import ConfigError
from tests.helpers import TINY_SG3, tiny_sg3_generator

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia"
_spec = importlib.util.spec_from_file_location("nvidia_pickle_fixture_sg3", FIXTURES / "nvidia_pickle.py")
nvp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nvp)


def test_filter_design_matches_scipy():
    signal, special = pytest.importorskip("scipy.signal"), pytest.importorskip("scipy.special")
    f = design_lowpass_filter(12, 5.0, 6.0, 32)
    want = signal.firwin(numtaps=12, cutoff=5.0, width=6.0, fs=32)
    np.testing.assert_allclose(f.numpy(), want, atol=1e-7, rtol=0)
    r = design_lowpass_filter(12, 5.0, 6.0, 32, radial=True)
    x = (np.arange(12) - 5.5) / 32
    rr = np.hypot(*np.meshgrid(x, x))
    beta = signal.kaiser_beta(signal.kaiser_atten(12, 6.0 / 16))
    w = np.kaiser(12, beta)
    ref = special.j1(2 * 5.0 * np.pi * rr) / (np.pi * rr) * np.outer(w, w)
    np.testing.assert_allclose(r.numpy(), ref / ref.sum(), atol=1e-7, rtol=0)
    assert design_lowpass_filter(1, 5.0, 6.0, 32) is None


def test_schedule_names_and_config_bounds():
    names = [s["name"] for s in layer_specs(StyleGAN3Config(img_resolution=64, channel_base=8192, channel_max=256,
                                                             conv_kernel=1, use_radial_filters=True))["layers"]]
    assert names[0] == "L0_36_256" and names[10] == "L10_84_203" and names[-1] == "L14_64_3"
    for bad in (dict(img_resolution=1 << 14), dict(num_layers=500), dict(conv_kernel=2), dict(channels=(4, 4))):
        with pytest.raises(ConfigError):
            StyleGAN3Config(**{**TINY_SG3, **bad})


def test_transform_batch_and_identity():
    g = tiny_sg3_generator()
    w = torch.randn(2, g.n_latent, 8, generator=torch.Generator().manual_seed(1))
    a = torch.tensor([[0.9, 0.2, 0.1], [-0.2, 0.9, -0.05], [0, 0, 1]])
    b = torch.tensor([[1.0, 0.0, 0.2], [0.0, 1.0, 0.0], [0, 0, 1]])
    with torch.no_grad():
        plain = g.synthesize(w)
        torch.testing.assert_close(g.synthesize(w, transform=torch.eye(3)), plain, atol=1e-6, rtol=0)
        both = g.synthesize(w, transform=torch.stack([a, b]))
        torch.testing.assert_close(both[0], g.synthesize(w[:1], transform=a)[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(both[1], g.synthesize(w[1:], transform=b)[0], atol=1e-5, rtol=0)
        assert (both[0] - plain[0]).abs().max() > 1e-3
        g.synthesis.input.transform = a  # NVIDIA's way: set the attribute
        torch.testing.assert_close(g.synthesize(w[:1]), both[:1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        g.synthesize(w, transform=torch.eye(3).repeat(3, 1, 1))
    with pytest.raises(ValueError):
        g.synthesis(w, noise_mode="loud")
    assert g.synthesis(w, noise_mode="random", force_fp32=False).shape == (2, 3, 16, 16)


def test_magnitude_ema_updates_only_in_training():
    g = tiny_sg3_generator()
    z = torch.randn(4, 8)
    before = {k: v.clone() for k, v in g.state_dict().items() if k.endswith(("magnitude_ema", "w_avg"))}
    with torch.no_grad():
        g(z)  # eval mode: nothing changes
    assert all(torch.equal(g.state_dict()[k], v) for k, v in before.items())
    g.train()
    with torch.no_grad():
        g(z)
    changed = [k for k, v in before.items() if not torch.equal(g.state_dict()[k], v)]
    assert len(changed) == len(before)


def test_state_dict_loads_strictly_ignoring_only_the_transform():
    g = tiny_sg3_generator()
    sd = dict(g.state_dict())
    assert "synthesis.input.transform" not in sd and "synthesis.L0_20_16.up_filter" in sd
    sd["synthesis.input.transform"] = torch.eye(3).repeat(2, 1, 1)  # as coach-saved files hold it
    back = stylegan3_from_state_dict(sd, "mem")
    w = torch.randn(1, g.n_latent, 8)
    with torch.no_grad():
        torch.testing.assert_close(back.synthesize(w), g.synthesize(w), atol=0, rtol=0)
    missing = {k: v for k, v in sd.items() if k != "synthesis.input.phases"}
    with pytest.raises(CheckpointError, match="phases"):
        stylegan3_from_state_dict(missing, "mem")
    renamed = {k.replace("L1_", "L9_"): v for k, v in sd.items()}
    with pytest.raises(CheckpointError):
        stylegan3_from_state_dict(renamed, "mem")


def test_own_format_round_trip_is_bit_identical(tmp_path):
    g = tiny_sg3_generator()
    g.save_pretrained(tmp_path / "g")
    back = instyle.load_generator(tmp_path / "g")
    assert isinstance(back, StyleGAN3Generator) and back.config == g.config
    for k, v in g.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


# ----------------------------------------------------------------------------- NVIDIA pickles

_CLASS = {"StyleGAN3Generator": "Generator", "MappingNetwork": "MappingNetwork", "SynthesisNetwork": "SynthesisNetwork",
          "SynthesisInput": "SynthesisInput", "SynthesisLayer": "SynthesisLayer", "FullyConnectedLayer": "FullyConnectedLayer"}


def _record(module: torch.nn.Module, init_kwargs=None):
    attrs = {}
    if type(module).__name__ == "SynthesisLayer":  # NVIDIA keeps sizes as NumPy arrays
        attrs = dict(in_size=np.broadcast_to(np.asarray(module.in_size), [2]),
                     out_size=np.broadcast_to(np.asarray(module.out_size), [2]), conv_clamp=256,
                     padding=list(module.padding), magnitude_ema_beta=np.float64(0.999))
    if type(module).__name__ == "SynthesisNetwork":
        attrs = dict(output_scale=0.25, margin_size=2, num_critical=2, num_layers=4)
    buffers = OrderedDict((k, v) for k, v in module._buffers.items())
    return nvp.Record(
        _CLASS[type(module).__name__], attrs=attrs,
        params=OrderedDict((k, v.detach()) for k, v in module._parameters.items()), buffers=buffers,
        modules=OrderedDict((k, _record(m)) for k, m in module._modules.items()), init_kwargs=init_kwargs or {},
    )


def write_sg3_pickle(g: StyleGAN3Generator, path: Path, protocol: int = 3) -> Path:
    c = g.config
    init = nvp.EasyDict(z_dim=c.z_dim, c_dim=0, w_dim=c.w_dim, img_resolution=c.img_resolution, img_channels=3,
                        mapping_kwargs=nvp.EasyDict(num_layers=c.mapping_layers), channel_base=c.channel_base,
                        channel_max=c.channel_max, num_layers=c.num_layers, margin_size=c.margin_size,
                        conv_kernel=c.conv_kernel, use_radial_filters=c.use_radial_filters,
                        magnitude_ema_beta=np.float64(0.9988915792636801))
    data = {"G": _record(g, init), "G_ema": _record(g, init), "augment_pipe": None, "training_set_kwargs": {}}
    return nvp.dump(data, path, protocol)


@pytest.mark.parametrize("protocol", [3, 4])
def test_nvidia_pickle_to_own_format_is_bit_identical(tmp_path, protocol):
    g = tiny_sg3_generator(seed=3)
    pkl = write_sg3_pickle(g, tmp_path / "sg3.pkl", protocol)
    loaded = instyle.load_generator(pkl)
    assert isinstance(loaded, StyleGAN3Generator)
    assert loaded.config.magnitude_ema_beta == pytest.approx(0.9988915792636801)
    for k, v in g.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    loaded.save_pretrained(tmp_path / "own")
    back = instyle.load_generator(tmp_path / "own")
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(back(z), g(z), atol=0, rtol=0)
    assert back.config == loaded.config


def test_crafted_pickles_are_refused(tmp_path):
    g = tiny_sg3_generator()
    # a NumPy record whose bytes do not match its declared shape
    good = pickle.dumps(np.arange(4, dtype=np.int64), protocol=3)
    forged = good.replace(b"K\x04\x85", b"J\x00\x00\x00\x10\x85", 1)  # shape (4,) -> (2**28,)
    assert forged != good
    (tmp_path / "np.pkl").write_bytes(forged)
    with pytest.raises(CheckpointError, match="NumPy array|not a readable"):
        instyle.load_generator(tmp_path / "np.pkl")
    # code in the pickle is never run: a global outside the allow-list
    (tmp_path / "evil.pkl").write_bytes(b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(CheckpointError, match="os.system"):
        instyle.load_generator(tmp_path / "evil.pkl")
    # a layer whose name asks for a huge generator is refused by the config bounds
    rec = _record(g, {})
    syn = rec.modules["synthesis"]
    syn.modules = OrderedDict((k.replace("L4_16_3", "L4_65536_3"), v) for k, v in syn.modules.items())
    nvp.dump({"G_ema": rec}, tmp_path / "huge.pkl")
    with pytest.raises(CheckpointError, match="img_resolution"):
        instyle.load_generator(tmp_path / "huge.pkl")


# ----------------------------------------------------------------------------- ReStyle over StyleGAN3


def tiny_restyle3(seed: int = 0, encoder_type: str = "BackboneEncoder") -> ReStyle3:
    g = tiny_sg3_generator(seed)
    enc = EncoderConfig(type=encoder_type, input_nc=6, n_styles=g.n_latent, style_dim=8, widths=(4, 6, 8, 10),
                        units=(1, 1, 1, 1), input_size=32)
    torch.manual_seed(seed)
    m = ReStyle3(ReStyle3Config(encoder=enc, generator=g.config, pool_size=32))
    m.decoder.load_state_dict(g.state_dict())
    m.latent_avg.normal_(0, 0.5)
    return m.eval()


def test_published_style_checkpoint_with_posix_paths(tmp_path):
    m = tiny_restyle3()
    sd = OrderedDict(m.state_dict())
    avg = sd.pop("latent_avg")
    sd["decoder.synthesis.input.transform"] = torch.eye(3).repeat(2, 1, 1)
    opts = {"exp_dir": pathlib.PosixPath("experiments/run"), "encoder_type": "BackboneEncoder", "input_nc": 6,
            "n_iters_per_batch": 3, "stylegan_weights": pathlib.PosixPath("pretrained/sg3-r-ffhq-1024.pt")}
    torch.save({"state_dict": sd, "opts": opts, "latent_avg": avg}, tmp_path / "restyle_pSp_ffhq.pt")
    loaded = instyle.load(tmp_path / "restyle_pSp_ffhq.pt")
    assert isinstance(loaded, ReStyle3) and loaded.default_iterations == 3 and loaded.config.variant == "psp"
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ws = loaded.encode(x, iterations=2, return_all=True)
        want = m.encode(x, iterations=2, return_all=True)
        assert len(ws) == 2 and ws[0].shape == (2, m.n_styles, 8)
        for a, b in zip(ws, want):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        t = torch.tensor([[0.95, 0.1, 0.05], [-0.1, 0.95, 0.0], [0, 0, 1]]).repeat(2, 1, 1)
        steps = loaded.invert(x, 2, transform=t)
        torch.testing.assert_close(steps[-1][1], loaded.decode(ws[-1], transform=t), atol=1e-6, rtol=0)
        torch.testing.assert_close(steps[0][1], loaded.decode(ws[0]), atol=1e-6, rtol=0)
        assert loaded.decode(ws[-1]).shape == (2, 3, 16, 16)
    # a replacement generator (as the original's generator_path); latent_avg stays the checkpoint's
    other = tiny_sg3_generator(seed=9)
    other.save_pretrained(tmp_path / "gen")
    swapped = instyle.load(tmp_path / "restyle_pSp_ffhq.pt", generator=tmp_path / "gen")
    assert torch.equal(swapped.latent_avg, loaded.latent_avg)
    assert torch.equal(swapped.decoder.synthesis.input.freqs, other.synthesis.input.freqs)
    # own format round trip
    loaded.save_pretrained(tmp_path / "own")
    back = instyle.load(tmp_path / "own")
    for k, v in loaded.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_checkpoint_without_latent_avg_is_refused(tmp_path):
    m = tiny_restyle3()
    sd = OrderedDict(m.state_dict())
    sd.pop("latent_avg")
    torch.save({"state_dict": sd, "opts": {"encoder_type": "BackboneEncoder"}}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="latent_avg"):
        instyle.load(tmp_path / "c.pt")


def test_other_path_objects_stay_refused(tmp_path):
    torch.save({"opts": pathlib.PurePosixPath("x")}, tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match="PurePosixPath"):
        instyle.load(tmp_path / "p.pt")


def test_e4e_variant_runs():
    m = tiny_restyle3(encoder_type="ProgressiveBackboneEncoder")
    with torch.no_grad():
        ws = m.encode(torch.zeros(1, 3, 32, 32), iterations=1, return_all=True)
    assert m.config.variant == "e4e" and ws[0].shape == (1, m.n_styles, 8)


def test_benchmark_script_runs_on_a_small_generator():
    spec = importlib.util.spec_from_file_location("bench_sg3", Path(__file__).resolve().parents[1] / "benchmarks" / "stylegan3.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    g = bench.build(16, "T")
    assert g.config.conv_kernel == 3 and g.size == 16


def test_unaligned_encoding_renders_the_last_iteration_with_the_inverse_transform():
    from PIL import Image

    from instyle.alignment.stylegan3_transform import make_transform
    from instyle.inference.unaligned import UnalignedInput, encode_unaligned, fixed_crop_quad

    m = tiny_restyle3(seed=4)
    rng = np.random.default_rng(0)
    aligned = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    fwd = make_transform([0.02, -0.01], 12.0)
    t = _transform_of(fwd)
    w, image = encode_unaligned(m, UnalignedInput(aligned, aligned, t), iterations=2)
    x = torch.from_numpy(np.asarray(aligned, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        steps = m.invert(x, 2, transform=torch.from_numpy(np.linalg.inv(fwd)).float()[None])
    torch.testing.assert_close(w, steps[-1][0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(image, steps[-1][1][0], atol=1e-5, rtol=0)
    # the crop is the axis-aligned square with the aligned quad's centre and side
    t = np.radians(20)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    square = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]], dtype=np.float64) * 50
    q = fixed_crop_quad(square @ rot.T + [300, 400])
    np.testing.assert_allclose(q, square + [300, 400], atol=1e-9)


def _transform_of(forward: np.ndarray):
    from instyle.alignment.stylegan3_transform import StyleGANTransform

    return StyleGANTransform(0.0, forward[:2, 2].copy(), forward, np.linalg.inv(forward))


def test_stylegan2_style_call_is_served():
    g = tiny_sg3_generator()
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        img, lat = g([z], return_latents=True, randomize_noise=False)
        torch.testing.assert_close(img, g(z), atol=0, rtol=0)
        assert lat.shape == (2, g.n_latent, 8)
        img_w, none = g([lat], input_is_latent=True)
        torch.testing.assert_close(img_w, img, atol=0, rtol=0)
        assert none is None
        trunc, _ = g([z], truncation=0.7, truncation_latent=g.latent_avg)
        torch.testing.assert_close(trunc, g(z, None, truncation_psi=0.7), atol=1e-6, rtol=0)
        mixed, w = g([lat, lat.flip(0)], input_is_latent=True, inject_index=2, return_latents=True)
        assert torch.equal(w[:, :2], lat[:, :2]) and torch.equal(w[:, 2:], lat.flip(0)[:, 2:])
    with pytest.raises(ValueError):
        g([z], weights_deltas=[None])


@pytest.mark.slow
def test_latent_tools_run_on_a_stylegan3_model(tmp_path):
    """interpolate, mix and edit direction meet the StyleGAN3 model through the shared interface."""
    from PIL import Image

    from instyle.cli.main import main

    tiny_restyle3().save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(0)
    inputs = []
    for i in range(2):
        inputs.append(tmp_path / f"in{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(inputs[-1])
    np.save(tmp_path / "d.npy", np.ones(8, np.float32))
    common = ["-c", str(tmp_path / "m"), "--device", "cpu"]
    assert main(["interpolate", *map(str, inputs), "--steps", "3", "--out", str(tmp_path / "i"), *common]) == 0
    assert main(["mix", str(inputs[0]), "--n-outputs", "2", "--out", str(tmp_path / "x"), *common]) == 0
    assert main(["edit", "direction", str(inputs[0]), "--direction", str(tmp_path / "d.npy"), "--strengths=-1:1:3",
                 "--out", str(tmp_path / "e"), *common]) == 0


@pytest.mark.slow
def test_convert_command_writes_own_format(tmp_path):
    from instyle.cli.main import main

    g = tiny_sg3_generator(seed=6)
    pkl = write_sg3_pickle(g, tmp_path / "g.pkl")
    assert main(["convert", str(pkl), str(tmp_path / "own")]) == 0
    back = instyle.load_generator(tmp_path / "own")
    for k, v in g.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    m = tiny_restyle3()
    sd = OrderedDict(m.state_dict())
    avg = sd.pop("latent_avg")
    torch.save({"state_dict": sd, "opts": {"encoder_type": "BackboneEncoder", "input_nc": 6}, "latent_avg": avg},
               tmp_path / "r.pt")
    assert main(["convert", str(tmp_path / "r.pt"), str(tmp_path / "r_own")]) == 0
    assert isinstance(instyle.load(tmp_path / "r_own"), ReStyle3)


def test_sefa_on_stylegan3_weights():
    from instyle.inference.directions import sefa

    g = tiny_sg3_generator()
    result = sefa(g)
    assert result.layers == tuple(range(1, g.n_latent - 1)) and result.directions.shape == (8, 8)
    a = g.synthesis.L1_20_16.affine.weight.detach().double()
    a = a / a.norm(dim=1, keepdim=True)
    top = torch.linalg.eigh(a.T @ a).eigenvectors[:, -1]
    d = sefa(g, layers=[2]).directions[0].double()
    assert abs(abs(float(d @ top)) - 1) < 1e-5
    with pytest.raises(ValueError):
        sefa(g, layers=[0])
    with pytest.raises(ValueError):
        sefa(g, mode="e4e")


def test_optimize_and_pti_refine_a_stylegan3_inversion(tmp_path):
    from instyle.inference.refine import (
        RefineConfig,
        apply_generator_delta,
        load_generator_delta,
        refine,
        save_generator_delta,
    )

    m = tiny_restyle3(seed=2)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        w = m.encode(x)
    config = RefineConfig(steps=4, lpips_weight=0)
    opt = refine(m, x, w, "optimize", config)
    assert opt.latent.shape == (m.n_styles, 8) and opt.losses[-1] < opt.losses[0]
    pti = refine(m, x, w, "pti", config)
    assert pti.losses[-1] < pti.losses[0]
    assert not any(k.startswith("style.") for k in m.decoder.state_dict())  # the z -> w view adds no state
    path = save_generator_delta(tmp_path / "d.safetensors", pti.generator_delta, m.decoder, half=False)
    tuned = apply_generator_delta(m.decoder, load_generator_delta(path, m.decoder))
    with torch.no_grad():
        again = m.face_pool(tuned.synthesize(w))[0]
    torch.testing.assert_close(again, pti.image, atol=1e-5, rtol=0)


def test_generator_argument_is_refused_for_stylegan2_models(tmp_path, tiny_psp):
    tiny_psp.save_pretrained(tmp_path / "psp")
    tiny_sg3_generator().save_pretrained(tmp_path / "g")
    with pytest.raises(CheckpointError, match="only for encoders over StyleGAN3"):
        instyle.load(tmp_path / "psp", generator=tmp_path / "g")


@pytest.mark.slow
def test_edit_renders_with_the_transform_saved_by_unaligned_encoding(tmp_path):
    from PIL import Image

    from instyle.cli.main import main
    from instyle.inference.latents import save_latent
    from instyle.utils.image import tensor_to_pil

    m = tiny_restyle3()
    m.save_pretrained(tmp_path / "m")
    w = torch.randn(1, m.n_styles, 8, generator=torch.Generator().manual_seed(7))
    t = [[0.9, 0.3, 0.1], [-0.3, 0.9, 0.0], [0.0, 0.0, 1.0]]
    save_latent(tmp_path / "lat.npz", w, meta={"transform": t})
    np.save(tmp_path / "d.npy", np.zeros(8, np.float32))
    assert main(["edit", "direction", str(tmp_path / "lat.npz"), "--direction", str(tmp_path / "d.npy"),
                 "--strengths=0", "-c", str(tmp_path / "m"), "--out", str(tmp_path / "e"), "--device", "cpu"]) == 0
    got = np.asarray(Image.open(tmp_path / "e" / "lat" / "strength_+0.000.png")).astype(np.int64)
    with torch.no_grad():
        want = np.asarray(tensor_to_pil(m.decode(w, transform=torch.tensor(t), resize=True)[0]))
        aligned = np.asarray(tensor_to_pil(m.decode(w, resize=True)[0]))
    assert np.abs(got - want).max() <= 1  # PNG rounding
    assert np.abs(got - aligned).mean() > 4 * np.abs(got - want).mean() + 0.5
