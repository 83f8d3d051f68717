"""Crafted model files must be refused quickly and before anything large is allocated.

Every file here is a few KB built by the test itself: configs asking for huge models,
pickles declaring storages or tensors far larger than their bytes, memo / zip bombs,
module trees that are exponential to walk, NaN/Inf weights, wrong dtypes and malformed
training states. Each must give a :class:`CheckpointError` naming the file and the
problem (the CLI: one line, no traceback) within the test's timeout.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import instyle
from instyle.interop import CheckpointError, load_own, load_psp, save_generator, save_psp
from instyle.models.stylegan2 import Generator, GeneratorConfig
from instyle.utils.config import ConfigError

pytestmark = pytest.mark.timeout(60)


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


# ----------------------------------------------------------------------------- crafted pickles and archives


def _load_nvidia_writer():
    import importlib.util

    path = Path(__file__).parent / "fixtures" / "nvidia" / "nvidia_pickle.py"
    spec = importlib.util.spec_from_file_location("nvidia_pickle_fixture_bounds", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nvp = _load_nvidia_writer()
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _legacy_storage_stream(numel: int, payload: bytes = b"\0" * 4) -> bytes:
    """A legacy (pre-1.6) ``torch.save`` stream of one float storage declaring ``numel``
    elements while holding only ``payload``; torch allocates the declared size first."""
    marker = object()

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel, None) if obj is marker else None

    buf = io.BytesIO()
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    for header in (LEGACY_MAGIC, 1001, sys_info):
        pickle.dump(header, buf, protocol=2)
    Writer(buf, protocol=2).dump(marker)
    pickle.dump(["0"], buf, protocol=2)
    buf.write(struct.pack("<q", numel) + payload)
    return buf.getvalue()


class _StorageRecord:
    """Pickles as NVIDIA's storages do: ``torch.storage._load_from_bytes(stream)``."""

    def __init__(self, stream: bytes):
        self.stream = stream

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.stream,)


def _rss_growth_mb(fn) -> float:
    """Peak resident memory growth of this process while ``fn`` runs (MB)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def test_nvidia_pickle_with_forged_storage_size_is_refused(tmp_path):
    path = tmp_path / "forged.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _StorageRecord(_legacy_storage_stream(10**9))}, protocol=3))
    assert path.stat().st_size < 4096
    with pytest.raises(CheckpointError, match=r"forged\.pkl.*declare 4000000000 bytes"):
        instyle.load_generator(path)


def test_legacy_torch_file_with_forged_storage_size_is_refused(tmp_path):
    path = tmp_path / "forged.pt"
    path.write_bytes(_legacy_storage_stream(10**9))
    with pytest.raises(CheckpointError, match=r"forged\.pt.*declare 4000000000 bytes"):
        instyle.load_generator(path)


def test_legacy_torch_files_still_load(tmp_path):
    g = _tiny_generator()
    path = tmp_path / "legacy.pt"
    torch.save({"g_ema": g.state_dict(), "latent_avg": g.latent_avg}, path, _use_new_zipfile_serialization=False)
    loaded = instyle.load_generator(path)
    torch.testing.assert_close(loaded.state_dict(), g.state_dict(), rtol=0, atol=0)


def test_stride_zero_tensor_in_torch_file_is_refused(tmp_path):
    g = _tiny_generator()
    path = tmp_path / "expanded.pt"  # latent_avg [30000, 30000] over one stored float: 3.6 GB on reshape
    torch.save({"g_ema": g.state_dict(), "latent_avg": torch.zeros(1).expand(30000, 30000)}, path)
    assert path.stat().st_size < 100_000
    with pytest.raises(CheckpointError, match=r"expanded\.pt.*tensors would take more than"):
        instyle.load_generator(path)


def test_stride_zero_tensor_in_nvidia_pickle_is_refused(tmp_path):
    g = nvp.build_generator(nvp.CONFIGS["g32"])
    huge = torch.ones(1).expand(40000, 40000)  # 6.4 GB once copied; a 4-byte storage in the file
    for _, rec in g.walk():
        if "resample_filter" in rec.buffers:
            rec.buffers["resample_filter"] = huge
    path = nvp.dump({"G_ema": g}, tmp_path / "expanded.pkl")
    with pytest.raises(CheckpointError, match=r"expanded\.pkl.*shape \[40000, 40000\].*storage of 1 elements"):
        instyle.load_generator(path)


def _dag_pickle(path: Path, depth: int = 60) -> Path:
    """A ~2 KB NVIDIA-style pickle whose module tree has 2**depth paths (each level holds
    the previous one twice): walking it naively never ends."""
    node = nvp.Record("SynthesisLayer")
    for _ in range(depth):
        node = nvp.Record("SynthesisLayer", modules={"a": node, "b": node})
    synthesis = nvp.Record("SynthesisNetwork", modules={"b4": node})
    g = nvp.Record("Generator", modules={"mapping": nvp.Record("MappingNetwork"), "synthesis": synthesis})
    for _, rec in [("", g), ("", synthesis), ("", node)]:
        rec.module_src = ""
    return nvp.dump({"G_ema": g}, path)


@pytest.mark.timeout(30)
def test_nvidia_pickle_with_exponential_module_tree_is_refused(tmp_path):
    path = _dag_pickle(tmp_path / "dag.pkl")
    assert path.stat().st_size < 20_000
    with pytest.raises(CheckpointError, match=r"dag\.pkl.*(appears twice in the network tree|nested deeper than 64)"):
        instyle.load_generator(path)


def test_shared_or_cyclic_modules_are_refused_by_the_tree_walk():
    from instyle.interop.restricted_pickle import PersistentObject

    def module(**children):
        return PersistentObject("M", 1, {"_modules": children, "_parameters": {"w": torch.zeros(1)}})

    leaf = module()
    assert set(module(a=module(x=leaf)).state_dict()) == {"w", "a.w", "a.x.w"}
    with pytest.raises(CheckpointError, match=r"module 'b' appears twice"):
        module(a=leaf, b=leaf).state_dict()
    loop = module()
    loop.state["_modules"]["self"] = loop
    with pytest.raises(CheckpointError, match=r"module 'self' appears twice"):
        loop.state_dict()


@pytest.mark.timeout(30)
def test_convert_refuses_exponential_module_tree_in_one_line(tmp_path, capsys):
    path = _dag_pickle(tmp_path / "dag.pkl")
    out = tmp_path / "out"
    rc, err = _run_cli("convert", str(path), str(out), capsys=capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "appears twice" in err or "nested deeper" in err
    assert not out.exists()


@pytest.mark.timeout(30)
def test_train_generator_refuses_exponential_module_tree(tmp_path):
    from instyle.training import TrainConfig
    from instyle.training.model import build_model

    path = _dag_pickle(tmp_path / "dag.pkl")
    cfg = TrainConfig(stylegan_weights=str(path), encoder_type="BackboneEncoderUsingLastLayerIntoW", learn_in_w=True)
    with pytest.raises(CheckpointError, match=r"dag\.pkl.*(appears twice|nested deeper)"):
        build_model(cfg)


def test_pickle_memo_bomb_is_not_allocated(tmp_path):
    path = tmp_path / "memo.pkl"  # 11 bytes: store None at memo index 2**30 (the C unpickler: an 8 GB table)
    path.write_bytes(b"\x80\x02N" + b"r" + struct.pack("<I", 2**30) + b".")

    def load():
        with pytest.raises(CheckpointError, match=r"memo\.pkl.*holds a NoneType"):
            instyle.load_generator(path)

    assert _rss_growth_mb(load) < 500


def _zip_bomb(path: Path, member: str, inflated: int = 64 << 20) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        zf.writestr("archive/version", b"3\n")
        zf.writestr(member, b"\0" * inflated)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".pkl"])
def test_zip_bomb_is_refused_before_inflating(tmp_path, suffix):
    path = _zip_bomb(tmp_path / f"bomb{suffix}", "archive/data/0")
    assert path.stat().st_size < 200_000
    with pytest.raises(CheckpointError, match=rf"bomb\{suffix}.*zip members declare \d+ bytes uncompressed"):
        instyle.load_generator(path)


def test_deeply_nested_checkpoint_is_refused(tmp_path):
    obj: list = []
    for _ in range(200):
        obj = [obj]
    path = tmp_path / "deep.pt"
    torch.save({"g_ema": obj}, path)
    with pytest.raises(CheckpointError, match=r"deep\.pt.*nested deeper than 64"):
        instyle.load_generator(path)


# ----------------------------------------------------------------------------- training states


def _valid_state() -> dict:
    from instyle.training.state import capture_rng

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    return {
        "step": 3, "best_val_loss": None, "best_step": None, "optimizer": opt.state_dict(), "scaler": None,
        "rng": [capture_rng()], "world_size": 1, "batch_size": 2, "seed": 0, "dataset_size": 4, "bad_files": [],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optimizer": None}, r"'optimizer' is a NoneType, expected an optimizer state dict"),
        ({"optimizer": {"state": {}}}, r"'optimizer' is a dict, expected an optimizer state dict"),
        ({"step": "12"}, r"'step' is a str, expected an integer >= 0"),
        ({"rng": [{"torch": "seed"}]}, r"'rng' is a list, expected a list of per-rank RNG states"),
        ({"bad_files": "a.png"}, r"'bad_files' is a str"),
        ({"step": None, "drop": "step"}, r"no 'step'"),
    ],
)
def test_malformed_training_state_is_refused(tiny_psp, tmp_path, change, message):
    from instyle.training.state import RunFolder, read_training_state, write_checkpoint

    state = {**_valid_state(), **change}
    state.pop(state.pop("drop", "drop"), None)
    folder = write_checkpoint(RunFolder(tmp_path / "run"), "latest", tiny_psp, {"step": 1}, state)
    with pytest.raises(CheckpointError, match=rf"training_state\.pt: malformed training state: {message}"):
        read_training_state(folder)


def test_well_formed_training_state_is_read(tiny_psp, tmp_path):
    from instyle.training.state import RunFolder, read_training_state, write_checkpoint

    folder = write_checkpoint(RunFolder(tmp_path / "run"), "latest", tiny_psp, {"step": 1}, _valid_state())
    _, state = read_training_state(folder)
    assert state["step"] == 3


def _many_dicts_pickle(n: int = 2_100_000) -> bytes:
    """``[{}, {}, ...]``: one byte of pickle per dict, ~64 bytes of memory each."""
    return b"\x80\x02](" + b"}" * n + b"e."


@pytest.mark.parametrize("kind", ["nvidia", "zip", "legacy"])
def test_pickle_running_too_many_operations_is_refused(tmp_path, kind, monkeypatch):
    from instyle.interop import bounds

    monkeypatch.setattr(bounds, "MAX_PICKLE_OPS", 10_000, raising=False)  # the real bound, 2e6, takes seconds
    data = _many_dicts_pickle(20_000)
    path = tmp_path / ("many.pkl" if kind == "nvidia" else "many.pt")
    if kind == "nvidia":
        path.write_bytes(data)
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", data)
            zf.writestr("archive/version", b"3\n")
    else:
        head = b"".join(pickle.dumps(h, protocol=2) for h in (LEGACY_MAGIC, 1001, {"little_endian": True}))
        path.write_bytes(head + data + pickle.dumps([], protocol=2))
    with pytest.raises(CheckpointError, match=r"many\.(pkl|pt).*more than 10000 operations"):
        instyle.load_generator(path)


def test_train_resume_with_a_bad_state_file_is_one_line(tmp_path, capsys):
    """A malformed training state (a field of the wrong type), then a truncated one (a corrupt
    file): ``train --resume`` exits 2 with one line naming the file and the fault."""
    from instyle.training.model import build_model
    from instyle.training.state import STATE_NAME, RunFolder, write_checkpoint
    from instyle.training.toy import save_toy_generator, toy_config, toy_generator, write_toy_dataset

    g = toy_generator(size=32, style_dim=16, seed=0)
    write_toy_dataset(g, tmp_path / "train", 4, seed=1)
    cfg = toy_config(save_toy_generator(g, tmp_path / "gen"), tmp_path / "train",
                     encoder_type="BackboneEncoderUsingLastLayerIntoW", learn_in_w=True, max_steps=2)
    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    cfg.save(run.config)
    model = build_model(cfg)
    write_checkpoint(run, "latest", model, {"step": 1}, {**_valid_state(), "optimizer": [1, 2]})
    rc, err = _run_cli("train", "--resume", str(run.root), capsys=capsys)
    assert rc == 2 and "Traceback" not in err
    assert "training_state.pt: malformed training state: 'optimizer' is a list" in err

    write_checkpoint(run, "latest", model, {"step": 1}, _valid_state())
    state = run.checkpoint("latest") / STATE_NAME
    state.write_bytes(state.read_bytes()[:100])
    rc, err = _run_cli("train", "--resume", str(run.root), capsys=capsys)
    assert rc == 2 and "Traceback" not in err
    assert "nothing to resume" not in err and "training_state.pt" in err and "corrupt" in err, err
    assert "no complete checkpoint" in err, err


# --- the private unpickler BoundedUnpickler builds on, under every supported CPython --------

_UNPICKLER_CHECK = r'''
import io, pickle, sys, time
class CheckpointError(Exception):
    pass
MAX_PICKLE_OPS = 1000
Any = object
exec(compile(SOURCE, "bounds.py", "exec"))
assert BoundedUnpickler(io.BytesIO(pickle.dumps({"a": [1, 2.5, "x"]}, protocol=2))).load() == {"a": [1, 2.5, "x"]}
assert BoundedUnpickler(io.BytesIO(pickle.dumps(list(range(50)), protocol=5))).load() == list(range(50))
try:
    BoundedUnpickler(io.BytesIO(pickle.dumps(list(range(5000)), protocol=0))).load()
except CheckpointError as e:
    assert "1000 operations" in str(e)
else:
    raise SystemExit("a 5000-element protocol-0 list ran past the operation bound")
# LONG_BINPUT naming memo index 2**30: a dict entry for the pure-Python unpickler.
t = time.perf_counter()
assert BoundedUnpickler(io.BytesIO(b"\x80\x02K\x07r\x00\x00\x00\x40.")).load() == 7
assert time.perf_counter() - t < 1.0
print("ok", sys.version_info[:2])
'''


def _supported_pythons() -> list[str]:
    """One interpreter per CPython version of the supported range found here: this one, each
    ``python3.N`` on PATH, and those named in ``INSTYLE_TEST_PYTHONS``."""
    import os
    import re
    import shutil
    import subprocess
    import sys

    spec = re.search(r'requires-python = ">=3\.(\d+)"', (Path(__file__).parents[1] / "pyproject.toml").read_text())
    lowest = int(spec.group(1))
    found = [sys.executable] + [shutil.which(f"python3.{minor}") for minor in range(lowest, 14)]
    extra = os.environ.get("INSTYLE_TEST_PYTHONS", "")  # more interpreters, separated by os.pathsep
    found += [p for p in extra.split(os.pathsep) if p]
    working = {}
    for python in filter(None, found):  # a shim without that version installed does not count
        r = subprocess.run([python, "-I", "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
        if r.returncode == 0:
            working.setdefault(r.stdout.strip(), python)
    return list(working.values())


def test_bounded_unpickler_runs_on_every_supported_python_found():
    """``BoundedUnpickler`` subclasses CPython's private ``pickle._Unpickler`` and reuses its
    ``dispatch`` table. Its source (taken from bounds.py, not copied) runs under each
    ``python3.N`` of the supported range on PATH: round trips, the operation bound and the
    dict memo must hold on every one."""
    import ast
    import subprocess

    from instyle.interop import bounds

    pythons = _supported_pythons()
    text = Path(bounds.__file__).read_text()
    tree = ast.parse(text)
    parts = [ast.get_source_segment(text, n) for n in tree.body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in ("_counted", "BoundedUnpickler")]
    assert len(parts) == 2
    source = "from __future__ import annotations\n" + "\n\n".join(parts)
    script = f"SOURCE = {source!r}\n" + _UNPICKLER_CHECK
    for python in pythons:
        r = subprocess.run([python, "-I", "-c", script], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.startswith("ok"), f"{python}: {r.stdout}{r.stderr[-1500:]}"
