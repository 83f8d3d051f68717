"""Crafted model files must be refused quickly and before anything large is allocated.

Every file here is a few KB built by the test itself: configs asking for huge models,
pickles declaring storages or tensors far larger than their bytes, memo / zip bombs,
module trees that are exponential to walk, NaN/Inf weights, wrong dtypes and malformed
training states. Each must give a :class:`CheckpointError` naming the file and the
problem (the CLI: one line, no traceback) within the test's timeout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import instyle
from instyle.interop import CheckpointError, load_own, load_psp, save_generator, save_psp
from instyle.models.stylegan2 import Generator, GeneratorConfig
from instyle.utils.config import ConfigError

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("single_thread")]


def _tiny_generator() -> Generator:
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(size=8, style_dim=8, n_mlp=1, channels={4: 4, 8: 4})).eval()
    g.latent_avg = torch.zeros(1, 8)
    return g


@pytest.fixture
def psp_dir(tiny_psp, tmp_path) -> Path:
    return save_psp(tiny_psp, tmp_path / "psp")


def _edit_config(directory: Path, section: str | None, **changes) -> None:
    path = directory / "config.json"
    doc = json.loads(path.read_text())
    (doc["config"][section] if section else doc["config"]).update(changes)
    path.write_text(json.dumps(doc))


def _run_cli(*argv: str, capsys) -> tuple[int, str]:
    from instyle.cli.main import main

    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


# ----------------------------------------------------------------------------- architecture bounds


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        ("generator", "n_mlp", 1_000_000, r"generator\.n_mlp=1000000 must be an integer in \[1, 32\]"),
        ("generator", "size", 2**20, r"generator\.size=1048576 must be a power of two >= 8 and <= 2048"),
        ("generator", "style_dim", 10**6, r"generator\.style_dim=1000000"),
        ("generator", "conv_clamp", -1.0, r"generator\.conv_clamp=-1\.0 must be a finite number > 0"),
        ("generator", "lr_mlp", float("nan"), r"generator\.lr_mlp=nan"),
        ("encoder", "input_size", 65536, r"encoder\.input_size=65536 must be a power of two >= 32 and <= 1024"),
        ("encoder", "widths", [64, 10**6, 64, 64], r"encoder\.widths="),
        ("encoder", "units", [1, 1, 10**6, 1], r"encoder\.units="),
        (None, "resize_to", 100_000, r"resize_to=100000 must be an integer in \[1, 2048\]"),
        (None, "label_nc", 10**6, r"label_nc=1000000"),
    ],
)
def test_own_format_config_out_of_bounds_is_refused(psp_dir, section, field, value, message):
    _edit_config(psp_dir, section, **{field: value})
    with pytest.raises(CheckpointError, match=rf"psp.*{message}"):
        load_psp(psp_dir)


def test_generator_config_bounds_apply_to_direct_construction():
    with pytest.raises(ConfigError, match=r"generator\.n_mlp=33"):
        GeneratorConfig(n_mlp=33)
    with pytest.raises(ConfigError, match=r"generator\.channels\[8\]=100000"):
        GeneratorConfig(size=8, channels={4: 4, 8: 100_000})
    with pytest.raises(ConfigError, match=r"blur_kernel"):
        GeneratorConfig(blur_kernel=(1, -1))
    # the published architectures stay inside the bounds
    GeneratorConfig(size=1024, channel_multiplier=2)
    GeneratorConfig(size=2048, channel_multiplier=8)


def test_convert_refuses_out_of_bounds_config_in_one_line(psp_dir, tmp_path, capsys):
    _edit_config(psp_dir, "generator", n_mlp=1_000_000)
    out = tmp_path / "out"
    rc, err = _run_cli("convert", str(psp_dir), str(out), capsys=capsys)
    assert rc == 2
    assert "generator.n_mlp=1000000" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing re-saved


# ----------------------------------------------------------------------------- weights: values and dtypes


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(tmp_path, bad):
    d = save_generator(_tiny_generator(), tmp_path / "g")
    tensors = load_file(str(d / "model.safetensors"))
    tensors["conv1.conv.weight"].view(-1)[3] = bad
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"g: .*conv1\.conv\.weight.*(NaN|Inf)"):
        load_own(d)


def test_non_finite_weights_in_official_checkpoint_are_refused(tmp_path):
    g = _tiny_generator()
    sd = {k: v.clone() for k, v in g.state_dict().items()}
    sd["style.1.weight"][0, 0] = float("nan")
    path = tmp_path / "rosinality.pt"
    torch.save({"g_ema": sd}, path)
    with pytest.raises(CheckpointError, match=r"rosinality\.pt.*style\.1\.weight.*NaN"):
        instyle.load_generator(path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64, torch.float64])
def test_wrong_dtype_safetensors_is_refused_in_one_line(tmp_path, dtype, capsys):
    d = save_generator(_tiny_generator(), tmp_path / "g")
    tensors = {k: v.to(dtype) for k, v in load_file(str(d / "model.safetensors")).items()}
    save_file(tensors, str(d / "model.safetensors"))
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=rf"g: .*dtype.*{name}.*float32"):
        load_own(d)
    rc, err = _run_cli("convert", str(d), str(tmp_path / "out"), capsys=capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and name in err
    assert not (tmp_path / "out").exists()
