"""The discriminator ``D`` of an NVIDIA StyleGAN2-ADA ``.pkl`` through our loader and model
reproduces NVIDIA's own ``Discriminator`` (outputs recorded with NVIDIA's code in
``fixtures/nvidia_discriminator/expected.npz``, see its ``make_expected.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from instyle.errors import CheckpointError
from instyle.interop.nvidia_discriminator import load_nvidia_discriminator
from instyle.models.discriminator import Discriminator

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia_discriminator"

_spec = importlib.util.spec_from_file_location("discriminator_pickle_fixture", FIXTURES / "discriminator_pickle.py")
dp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dp)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(FIXTURES / "expected.npz"))


def _run(tmp_path, name, cfg=None, sd=None):
    cfg = dp.CONFIGS[name] if cfg is None else cfg
    d = load_nvidia_discriminator(dp.write_pickle(tmp_path / f"{name}.pkl", cfg, sd)).eval()
    x = dp.make_inputs(cfg)
    with torch.no_grad():
        return d, d.convs(x), d(x)


@pytest.mark.parametrize("name", list(dp.CONFIGS))
def test_weights_and_inputs_are_those_nvidia_ran(name, expected):
    """Guards the regenerated tensors against RNG drift (a torch change would show here first)."""
    cfg = dp.CONFIGS[name]
    sd = dp.discriminator_state(cfg)
    assert sum(float(v.double().abs().sum()) for v in sd.values()) == pytest.approx(
        float(expected[f"{name}/weights_abs_sum"]), rel=1e-9)
    assert float(dp.make_inputs(cfg).double().abs().sum()) == pytest.approx(float(expected[f"{name}/inputs_abs_sum"]),
                                                                            rel=1e-9)


@pytest.mark.parametrize("name", list(dp.CONFIGS))
def test_loaded_discriminator_reproduces_nvidias_outputs(name, expected, tmp_path):
    _, feats, logits = _run(tmp_path, name)
    ref_feats = torch.from_numpy(expected[f"{name}/b8"])
    ref = torch.from_numpy(expected[f"{name}/logits"])
    torch.testing.assert_close(feats, ref_feats, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)


def test_group_size_none_is_the_whole_minibatch(tmp_path):
    """NVIDIA's ``mbstd_group_size=None`` (what legacy.py gives a converted TensorFlow pickle)
    pools the standard deviation over the whole batch, not over groups of 4."""
    d, _, _ = _run(tmp_path, "d64_group_none")
    assert d.stddev_group is None
    x = dp.make_inputs(dp.CONFIGS["d64_group_none"])[:6]  # not a multiple of 4: one group of 6
    with torch.no_grad():
        out = d(x)
        d.stddev_group = 6
        torch.testing.assert_close(out, d(x), atol=0, rtol=0)


def test_conv_clamp_is_read_from_the_file(tmp_path):
    d, _, _ = _run(tmp_path, "d32_clamp")
    assert d.conv_clamp == 0.5
    d, _, _ = _run(tmp_path, "d32")
    assert d.conv_clamp is None


def test_a_clamped_skip_or_mixed_clamps_are_refused(tmp_path):
    cfg = dp.CONFIGS["d32_clamp"]
    rec = dp.build_discriminator(cfg)
    rec.modules["b16"].modules["conv0"].attrs["conv_clamp"] = 0.25
    path = dp.nvp.dump({"D": rec}, tmp_path / "mixed.pkl")
    with pytest.raises(CheckpointError, match=r"mixed\.pkl.*b16\.conv0 has conv_clamp=0\.25.*0\.5"):
        load_nvidia_discriminator(path)
    rec = dp.build_discriminator(cfg)
    rec.modules["b32"].modules["skip"].attrs["conv_clamp"] = 0.5
    path = dp.nvp.dump({"D": rec}, tmp_path / "skip.pkl")
    with pytest.raises(CheckpointError, match=r"skip\.pkl.*b32\.skip has conv_clamp=0\.5"):
        load_nvidia_discriminator(path)


@pytest.mark.parametrize("kwargs, match", [
    (dict(stddev_group=0), r"stddev_group"),
    (dict(conv_clamp=-1.0), r"conv_clamp=-1\.0"),
])
def test_discriminator_config_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Discriminator(16, channels={16: 4, 8: 4, 4: 4}, **kwargs)
