"""NVIDIA StyleGAN2-ADA .pkl import: safe reading, complete conversion, equal outputs."""

from __future__ import annotations

import builtins
import importlib.util
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import instyle
from instyle.interop import CheckpointError, load_own, save_generator
from instyle.interop.keymaps import ArchitectureError
from instyle.interop.nvidia import NvidiaOptions, convert_generator, generator_options, select_generator
from instyle.interop.restricted_pickle import EasyDict, PersistentObject, read_pickle
from instyle.models.stylegan2 import Generator, nvidia_channels

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia"


def _load_writer():
    spec = importlib.util.spec_from_file_location("nvidia_pickle_fixture", FIXTURES / "nvidia_pickle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nvp = _load_writer()


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(FIXTURES / "expected.npz"))


@pytest.fixture(scope="module")
def g32_pkl(tmp_path_factory) -> Path:
    return nvp.write_snapshot(tmp_path_factory.mktemp("nv") / "network-snapshot-g32.pkl", nvp.CONFIGS["g32"])


def _outputs(g: Generator, z: torch.Tensor):
    with torch.no_grad():
        img, _ = g([z], randomize_noise=False)
        return g.style(z), img


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("name", sorted(nvp.CONFIGS))
def test_matches_nvidia_reference(name, expected, tmp_path):
    cfg = nvp.CONFIGS[name]
    weights = nvp.generator_state(cfg)
    total = sum(t.double().abs().sum().item() for t in weights.values())
    assert total == pytest.approx(float(expected[f"{name}/weights_abs_sum"]), rel=1e-9), (
        "the fixture's deterministic weights changed (torch RNG drift?); expected.npz no longer applies"
    )
    path = nvp.write_snapshot(tmp_path / f"{name}.pkl", cfg)
    g = instyle.load_generator(path)
    assert g.size == cfg["img_resolution"] and g.style_dim == cfg["w_dim"]
    z = torch.from_numpy(expected[f"{name}/z"])
    ws, img = _outputs(g, z)
    ref_ws = torch.from_numpy(expected[f"{name}/ws"])
    torch.testing.assert_close(ws, ref_ws[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(img, torch.from_numpy(expected[f"{name}/img"]), atol=1e-4, rtol=0)
    # the same through W+ (NVIDIA's synthesis(ws))
    with torch.no_grad():
        img_w = g.synthesize(ref_ws)
    torch.testing.assert_close(img_w, torch.from_numpy(expected[f"{name}/img"]), atol=1e-4, rtol=0)


def test_truncation_and_latent_avg(expected, g32_pkl):
    g = instyle.load_generator(g32_pkl)
    torch.testing.assert_close(g.latent_avg, nvp.generator_state(nvp.CONFIGS["g32"])["mapping.w_avg"][None])
    z = torch.from_numpy(expected["g32/z"])
    with torch.no_grad():
        img, _ = g([z], truncation=0.7, truncation_latent=g.latent_avg, randomize_noise=False)
    torch.testing.assert_close(img, torch.from_numpy(expected["g32/img_psi0.7"]), atol=1e-4, rtol=0)


def test_other_configuration_converts_and_runs(tmp_path):
    cfg = dict(
        z_dim=24, c_dim=0, w_dim=24, img_resolution=16, img_channels=3,
        mapping_kwargs=dict(num_layers=1, lr_multiplier=0.05),
        synthesis_kwargs=dict(channel_base=128, channel_max=24, num_fp16_res=1, conv_clamp=8),
    )
    g = instyle.load_generator(nvp.write_snapshot(tmp_path / "g16.pkl", cfg, protocol=4))
    assert g.config.channels == {4: 24, 8: 16, 16: 8}
    assert (g.config.n_mlp, g.config.lr_mlp, g.config.conv_clamp) == (1, 0.05, 8.0)
    with torch.no_grad():
        img, _ = g([torch.randn(3, 24)], randomize_noise=False)
    assert img.shape == (3, 3, 16, 16) and torch.isfinite(img).all()


def test_protocol4_and_torch_zip_read_the_same(g32_pkl, tmp_path):
    cfg = nvp.CONFIGS["g32"]
    p4 = nvp.write_snapshot(tmp_path / "p4.pkl", cfg, protocol=4)
    zip_path = tmp_path / "zip.pkl"
    with nvp._fake_globals():
        torch.save(nvp.snapshot(cfg), zip_path)
    z = torch.randn(2, cfg["z_dim"], generator=torch.Generator().manual_seed(5))
    ref = _outputs(instyle.load_generator(g32_pkl), z)[1]
    for path in (p4, zip_path):
        torch.testing.assert_close(_outputs(instyle.load_generator(path), z)[1], ref, atol=0, rtol=0)


def test_saved_in_own_format_round_trips(g32_pkl, tmp_path):
    g = instyle.load_generator(g32_pkl)
    back = load_own(save_generator(g, tmp_path / "own"))
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_outputs(back, z)[1], _outputs(g, z)[1], atol=0, rtol=0)
    torch.testing.assert_close(back.latent_avg, g.latent_avg)


# ----------------------------------------------------------------------------- reading


def test_unpickler_reads_persistent_records(g32_pkl):
    data = read_pickle(g32_pkl)
    assert set(data) == {"training_set_kwargs", "G", "D", "G_ema", "augment_pipe"}
    g = data["G_ema"]
    assert isinstance(g, PersistentObject) and (g.class_name, g.version) == ("Generator", 6)
    assert not hasattr(g, "module_src") and "module_src" not in g.state
    assert isinstance(g.attr("_init_kwargs"), EasyDict) and g.attr("_init_kwargs")["mapping_kwargs"] == {"num_layers": 2}
    fc = g.modules["mapping"].modules["fc0"]
    assert isinstance(fc.attr("weight_gain"), np.float64) and fc.attr("activation") == "lrelu"
    assert isinstance(g.modules["synthesis"].modules["b4"].state["_non_persistent_buffers_set"], set)
    sd = g.state_dict()
    ref = nvp.generator_state(nvp.CONFIGS["g32"])
    assert list(sd) == list(ref)  # the same names and order as NVIDIA's Generator.state_dict()
    for k, v in ref.items():
        assert torch.equal(sd[k], v), k
    assert data["D"].class_name == "Discriminator"


def test_converter_maps_every_tensor():
    cfg = nvp.CONFIGS["g64"]
    sd = nvp.generator_state(cfg)
    config, state, latent_avg = convert_generator(sd, NvidiaOptions(lr_multiplier=0.1, conv_clamp=0.5))
    g = Generator(config)
    assert set(state) == set(g.state_dict())  # nothing missing on our side
    g.load_state_dict(state, strict=True)
    assert latent_avg.shape == (1, cfg["w_dim"])
    # every NVIDIA tensor is consumed: an extra one is reported, not silently dropped
    with pytest.raises(ArchitectureError, match=r"no counterpart.*synthesis\.b8\.conv0\.extra"):
        convert_generator({**sd, "synthesis.b8.conv0.extra": torch.zeros(1)})
    # each NVIDIA weight value reaches the instyle state dict
    ours = [*state.values(), latent_avg]
    for k, v in sd.items():
        if not k.endswith("resample_filter"):
            assert any(o.numel() == v.numel() and torch.equal(o.flatten(), v.flatten()) for o in ours), k


def test_generator_without_noise_inputs():
    sd = {k: v for k, v in nvp.generator_state(nvp.CONFIGS["g32"]).items() if "noise" not in k}
    config, state, _ = convert_generator(sd)
    assert all(not v.any() for k, v in state.items() if "noise" in k)
    Generator(config).load_state_dict(state, strict=True)


def test_options_are_read_from_the_records(g32_pkl):
    g, key = select_generator(read_pickle(g32_pkl), g32_pkl)
    assert key == "G_ema"
    assert generator_options(g) == NvidiaOptions(lr_multiplier=0.01, conv_clamp=256.0)


def test_nvidia_default_channels_match_rosinality():
    from instyle.models.stylegan2 import channel_fields as _channel_fields

    assert _channel_fields(nvidia_channels(1024)) == {"channel_multiplier": 2, "channels": None}
    assert _channel_fields(nvidia_channels(256, channel_base=16384)) == {"channel_multiplier": 1, "channels": None}
    assert _channel_fields({4: 64, 8: 32}) == {"channels": {4: 64, 8: 32}}


# ----------------------------------------------------------------------------- safety


class _ExecMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('executed')",)


class _SystemMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"{sys.executable} -c \"open({str(self.marker)!r}, 'w').write('executed')\"",)


@pytest.mark.parametrize("payload", [_ExecMarker, _SystemMarker])
def test_code_executing_pickle_is_refused(payload, tmp_path):
    marker = tmp_path / "marker.txt"
    snap = nvp.snapshot(nvp.CONFIGS["g32"])
    snap["G_ema"].attrs["evil"] = payload(marker)  # nested deep inside the generator record
    path = nvp.dump(snap, tmp_path / "evil.pkl")
    if payload is _ExecMarker:  # the file is armed: a plain pickle.load would run it
        with nvp._fake_globals(), open(path, "rb") as f:
            pickle.load(f)
        assert marker.exists()
        marker.unlink()
    glob = "builtins.exec" if payload is _ExecMarker else f"{os.system.__module__}.system"
    with pytest.raises(CheckpointError, match=rf"evil\.pkl.*'{glob}'.*Nothing from the file was executed"):
        instyle.load_generator(path)
    assert not marker.exists()


def test_module_src_is_never_run(tmp_path, expected):
    marker = tmp_path / "marker.txt"
    src = f"open({str(marker)!r}, 'w').write('executed')\n"
    exec(compile(src, "armed", "exec"), {})  # the payload is armed
    assert marker.exists()
    marker.unlink()
    path = nvp.write_snapshot(tmp_path / "src.pkl", nvp.CONFIGS["g32"], module_src=src)
    g = instyle.load_generator(path)  # read as data: the source is ignored
    assert not marker.exists()
    z = torch.from_numpy(expected["g32/z"])
    torch.testing.assert_close(_outputs(g, z)[1], torch.from_numpy(expected["g32/img"]), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- clear errors


def test_tensorflow_pickle_is_refused(tmp_path):
    path = tmp_path / "stylegan2-ffhq-config-f.pkl"
    # (Network(), Network(), Network()) as TF-era dnnlib pickles it
    net = b"cdnnlib.tflib.network\nNetwork\nq\x00)\x81q\x01}q\x02X\x04\x00\x00\x00nameq\x03X\x01\x00\x00\x00Gq\x04sb"
    path.write_bytes(b"\x80\x03" + net + b"h\x00)\x81}bh\x00)\x81}b\x87q\x05.")
    with pytest.raises(CheckpointError, match=r"stylegan2-ffhq-config-f\.pkl.*TensorFlow.*out of scope"):
        instyle.load_generator(path)


def test_discriminator_only_file_is_refused(tmp_path):
    snap = nvp.snapshot(nvp.CONFIGS["g32"])
    for key in ("G", "G_ema"):
        del snap[key]
    with pytest.raises(CheckpointError, match=r"d_only\.pkl.*only a discriminator"):
        instyle.load_generator(nvp.dump(snap, tmp_path / "d_only.pkl"))
    with pytest.raises(CheckpointError, match="only a discriminator"):
        instyle.load_generator(nvp.dump(nvp.build_discriminator(32), tmp_path / "d_bare.pkl"))


def test_conditional_generator_is_refused(tmp_path):
    cfg = {**nvp.CONFIGS["g32"], "c_dim": 4}
    with pytest.raises(CheckpointError, match=r"cond\.pkl \[G_ema\].*conditional.*c_dim=4"):
        instyle.load_generator(nvp.write_snapshot(tmp_path / "cond.pkl", cfg))
    with pytest.raises(ArchitectureError, match="c_dim=4"):  # from the tensors alone, too
        convert_generator(nvp.generator_state(cfg))


def test_unsupported_architecture_is_refused():
    with pytest.raises(ArchitectureError, match="'resnet'"):
        convert_generator(nvp.generator_state(nvp.CONFIGS["g32"]), NvidiaOptions(architecture="resnet"))


def test_broken_files_are_refused(g32_pkl, tmp_path):
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        instyle.load_generator(empty)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(g32_pkl.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"cut\.pkl.*truncated or corrupt"):
        instyle.load_generator(cut)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match=r"other\.pkl.*not an NVIDIA StyleGAN2-ADA network pickle"):
        instyle.load_generator(other)


def test_resample_filter_taps():
    from instyle.interop.nvidia import _filter_taps

    assert _filter_taps(nvp.resample_filter((1, 3, 3, 1))) == (1, 3, 3, 1)
    assert _filter_taps(nvp.resample_filter((1, 2, 1))) == (1, 2, 1)
    with pytest.raises(ArchitectureError, match="separable integer-tap"):
        _filter_taps(torch.rand(4, 4))
