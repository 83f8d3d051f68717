"""Documented examples run as written: training.md's custom task, demo.md's ``/mix`` call and
the page's placeholder on the default 14-layer model, ``prepare --option``, and README's
checkpoint table (``psp_ffhq_toonify.pt`` in the official file layout)."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.cli.main import main
from instyle.inference.mixing import default_latent_mask, parse_latent_mask
from instyle.tasks import base as task_base
from instyle.tasks import get_task, register_task
from instyle.training import get_preset
from instyle.utils.config import ConfigError

from .helpers import read_key_list

REPO = Path(__file__).resolve().parents[1]

def _python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), flags=re.S)


@pytest.fixture
def registry(monkeypatch):
    """The task registry, restored after the test."""
    monkeypatch.setattr(task_base, "_REGISTRY", dict(task_base._REGISTRY))
    return task_base._REGISTRY


# ----------------------------------------------------------------------------- training.md


def test_training_md_custom_task_example_registers_a_preset(registry, monkeypatch):
    block = next(b for b in _python_blocks(REPO / "docs" / "training.md") if "register_task(" in b)
    module = types.ModuleType("docs_training_example")  # a dataclass needs its module in sys.modules
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block, "docs/training.md", "exec"), module.__dict__)
    name = re.search(r'register_task\(\w+\(name="(\w+)"', block).group(1)
    preset = get_preset(name)
    assert preset.name == name and preset.overrides["task"] == name
    assert preset.overrides["l2_lambda"] == 1.0 and preset.overrides["lpips_lambda"] == 0.8
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    x = get_task(name).make_input(photo)
    assert x.shape == (3, 256, 256)


def test_registering_an_existing_name_raises_unless_replace(registry):
    """It used to replace silently (and the issue saw the built-in win on the next lookup)."""
    built_in = get_task("super_resolution")
    mine = task_base.Task("super_resolution", description="mine", loss={"l2_lambda": 3.0})
    with pytest.raises(ConfigError, match=r"'super_resolution' is already registered.*replace=True"):
        register_task(mine)
    assert get_task("super_resolution") is built_in
    register_task(built_in)  # the same task again: a no-op
    register_task(mine, replace=True)
    assert get_task("super_resolution") is mine and get_preset("super_resolution").overrides["l2_lambda"] == 3.0


# ----------------------------------------------------------------------------- prepare --option


def test_prepare_option_accepts_only_the_tasks_options(tmp_path, capsys):
    """`--option input_nc=3 --option description=hello` used to be accepted and recorded."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(photos / "a.png")
    for bad in ("input_nc=3", "description=hello", "loss={}"):
        rc = main(["prepare", "super_resolution", "--photos", str(photos), "--out", str(tmp_path / "o"), "--option", bad])
        assert rc == 2
        err = capsys.readouterr().err
        assert f"has no option(s) ['{bad.split('=')[0]}']; its options: factors" in err
    rc = main(["prepare", "inversion", "--photos", str(photos), "--out", str(tmp_path / "o"), "--option", "size=64"])
    assert rc == 2 and "its options: none" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["prepare", "inpainting", "--photos", str(photos), "--out", str(tmp_path / "p"), "--size", "32",
                 "--option", "mask=random"]) == 0
    assert get_task("inpainting").option_names() == ["apex_y", "base_y", "fill", "half_base", "mask", "mask_channel"]
    assert get_task("seg2face").option_names() == ["label_nc"]  # a shared field that is a real choice here
    assert get_task("seg2face").with_input_options(label_nc=11).input_nc == 11


# ----------------------------------------------------------------------------- demo.md


def test_demo_mix_example_and_placeholder_fit_the_default_14_layer_model():
    """demo.md's client call and the page's placeholder used "8-17": refused by a 256 px model."""
    call = next(line for line in (REPO / "docs" / "demo.md").read_text().splitlines() if 'api_name="/mix"' in line)
    layers = re.search(r'handle_file\("[^"]+"\), \d+, "([^"]*)"', call).group(1)
    mask = parse_latent_mask(layers, 14) if layers else default_latent_mask(14)
    assert mask == list(range(8, 14))
    page = (REPO / "src" / "instyle" / "demo" / "app.py").read_text()
    placeholder = re.search(r'm_layers = gr.Textbox\(.*?placeholder="([^"]*)"', page, flags=re.S).group(1)
    assert parse_latent_mask(placeholder, 14)
    with pytest.raises(ValueError, match="outside"):
        parse_latent_mask("8-17", 14)  # what the examples said before


# ----------------------------------------------------------------------------- README: toonify


def _toonify_keys(a_rows: list[tuple[str, tuple[int, ...], str]]) -> list[tuple[str, tuple[int, ...], str]]:
    """The official 1024 px GradualStyleEncoder pSp layout (psp_ffhq_toonify.pt, as
    psp_ffhq_encode.pt) from the 256 px key list A: 18 style blocks (14-17 are fine blocks like
    13), and the generator's 512 / 1024 px layers (rosinality channels 64 and 32)."""
    out: list[tuple[str, tuple[int, ...], str]] = []
    fine = [r for r in a_rows if r[0].startswith("encoder.styles.13.")]
    decoder = [r for r in a_rows if r[0].startswith("decoder.")]
    for row in a_rows:
        if row[0].startswith("decoder."):
            break
        out.append(row)
        if row == fine[-1]:
            out += [(n.replace("styles.13.", f"styles.{i}."), s, d) for i in range(14, 18) for n, s, d in fine]
    convs = [r for r in decoder if r[0].startswith(("decoder.style.", "decoder.input", "decoder.conv1", "decoder.to_rgb1",
                                                    "decoder.convs."))]
    new_convs, new_rgbs = [], []
    for k, (c_in, c_out) in enumerate([(128, 64), (64, 32)]):  # 512 px, then 1024 px
        i = 12 + 2 * k
        new_convs += [
            (f"decoder.convs.{i}.conv.weight", (1, c_out, c_in, 3, 3), "float32"),
            (f"decoder.convs.{i}.conv.blur.kernel", (4, 4), "float32"),
            (f"decoder.convs.{i}.conv.modulation.weight", (c_in, 512), "float32"),
            (f"decoder.convs.{i}.conv.modulation.bias", (c_in,), "float32"),
            (f"decoder.convs.{i}.noise.weight", (1,), "float32"),
            (f"decoder.convs.{i}.activate.bias", (c_out,), "float32"),
            (f"decoder.convs.{i + 1}.conv.weight", (1, c_out, c_out, 3, 3), "float32"),
            (f"decoder.convs.{i + 1}.conv.modulation.weight", (c_out, 512), "float32"),
            (f"decoder.convs.{i + 1}.conv.modulation.bias", (c_out,), "float32"),
            (f"decoder.convs.{i + 1}.noise.weight", (1,), "float32"),
            (f"decoder.convs.{i + 1}.activate.bias", (c_out,), "float32"),
        ]
        new_rgbs += [
            (f"decoder.to_rgbs.{6 + k}.bias", (1, 3, 1, 1), "float32"),
            (f"decoder.to_rgbs.{6 + k}.upsample.kernel", (4, 4), "float32"),
            (f"decoder.to_rgbs.{6 + k}.conv.weight", (1, 3, c_out, 1, 1), "float32"),
            (f"decoder.to_rgbs.{6 + k}.conv.modulation.weight", (c_out, 512), "float32"),
            (f"decoder.to_rgbs.{6 + k}.conv.modulation.bias", (c_out,), "float32"),
        ]
    rgbs = [r for r in decoder if r[0].startswith("decoder.to_rgbs.")]
    noises = [r for r in decoder if r[0].startswith("decoder.noises.")]
    sides = {i: 2 ** ((i + 1) // 2 + 2) for i in range(13, 17)}  # noise_0 is 4x4, then two per resolution
    noises += [(f"decoder.noises.noise_{i}", (1, 1, r, r), "float32") for i, r in sides.items()]
    return out + convs + new_convs + rgbs + new_rgbs + noises


def test_toonify_key_list_extends_the_official_pattern(shared_dir):
    rows = _toonify_keys(read_key_list(shared_dir / "conformance" / "keys" / "A.txt"))
    names = [r[0] for r in rows]
    assert len(names) == len(set(names))
    shapes = dict((n, s) for n, s, _ in rows)
    assert shapes["decoder.noises.noise_16"] == (1, 1, 1024, 1024) and shapes["decoder.noises.noise_13"] == (1, 1, 512, 512)
    assert shapes["decoder.convs.15.activate.bias"] == (32,) and shapes["decoder.to_rgbs.7.conv.weight"] == (1, 3, 32, 1, 1)
    assert sum(n.startswith("encoder.styles.17.") for n in names) == 14


@pytest.mark.slow
def test_readme_toonify_checkpoint_loads_in_its_official_layout(shared_dir, tmp_path):
    readme = (REPO / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `psp_ffhq_toonify.pt`"))
    assert "1024 px" in row
    conformance = shared_dir / "conformance"
    rows = _toonify_keys(read_key_list(conformance / "keys" / "A.txt"))
    keys = tmp_path / "toonify.txt"
    keys.write_text("".join(f"{n} [{','.join(map(str, s))}] {d}\n" for n, s, d in rows))
    path = tmp_path / "psp_ffhq_toonify.pt"
    proc = subprocess.run(
        [sys.executable, str(conformance / "make_checkpoint.py"), "--keys", str(keys), "--seed", "7", "--out", str(path),
         "--dataset-type", "toonify", "--exp-dir", "experiments/toonify"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import instyle

    model = instyle.load(path, device="cpu")
    cfg = model.config
    assert (cfg.output_size, cfg.encoder.type, cfg.encoder.n_styles, cfg.image_nc) == (1024, "GradualStyleEncoder", 18, 3)
    assert cfg.task == "image2image"  # toonify: photo in, toon out (the input is the photo itself)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ours = model.state_dict()
    for name in ("encoder.styles.17.linear.weight", "decoder.convs.15.conv.weight", "decoder.to_rgbs.7.conv.weight"):
        assert torch.equal(ours[name], ckpt["state_dict"][name]), name
    assert torch.equal(model.latent_avg, ckpt["latent_avg"].reshape(model.latent_avg.shape))


# ----------------------------------------------------------------------------- every documented command


def _documented_commands() -> list[tuple[str, str]]:
    """``(file, command)`` for every ``instyle ...`` line in a code block of README.md and
    docs/*.md (continuation lines joined, comments dropped; output lines and synopses with
    ``[optional]`` / ``...`` placeholders left out)."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S):
            text = re.sub(r"\\\n\s*", " ", block)
            for line in text.splitlines():
                line = line.split(" #")[0].strip()
                if re.match(r"instyle [a-z]+(\s|$)", line) and "..." not in line and " [" not in line:
                    found.append((path.name, line))
    return found


@pytest.mark.parametrize("where, command", _documented_commands(), ids=lambda v: v[:60] if isinstance(v, str) else v)
def test_documented_command_parses(where, command):
    """Each documented command line is accepted by the real parser (flags, choices, types):
    what the docs show exists with that spelling. (Running them needs the published weights;
    tests/test_workflow.py runs the same commands on a tiny model.)"""
    import shlex

    from instyle.cli.main import build_parser

    argv = shlex.split(command)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: `{command}` is refused by the parser (exit {e.code})")
    assert getattr(args, "func", None) is not None, f"{where}: `{command}` names no command"
