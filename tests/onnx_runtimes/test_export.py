"""ONNX export: parity with PyTorch for every family on tiny models, the metadata a deployer
reads, the refusal above the bound, argument errors. The graphs are run here with ONNX
Runtime directly (not through instyle's parity code) against the models' own encode/decode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from instyle.errors import InstyleError
from tests.test_families import tiny
from tests.test_hyperstyle import tiny_model

ort = pytest.importorskip("onnxruntime", reason="needs the deploy extra (pip install 'instyle[deploy]')")
pytest.importorskip("onnxscript", reason="needs the deploy extra (pip install 'instyle[deploy]')")

from instyle.export import PARITY_BOUND, ExportError, export_onnx  # noqa: E402


def _run(path, **feeds) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def _images(n: int, size: int, seed: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def psp_export(tmp_path_factory):
    """The tiny pSp exported through the command (``instyle export``), as a user would."""
    import contextlib
    import io

    from instyle.cli.main import main
    from instyle.export import ExportResult

    model = tiny("psp", "GradualStyleEncoder")
    root = tmp_path_factory.mktemp("psp_onnx")
    model.save_pretrained(root / "tiny-psp")
    out, printed = root / "onnx", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "-c", str(root / "tiny-psp"), "--out", str(out)]) == 0
    lines = printed.getvalue().splitlines()
    assert [line.split(":")[1].strip() for line in lines[:3]] == ["encoder.onnx", "generator.onnx", "model.onnx"]
    assert "max abs diff vs PyTorch fp32" in lines[0] and lines[-1].startswith("wrote encoder.onnx, generator.onnx")
    meta = json.loads((out / "export.json").read_text())
    return model, ExportResult(out, meta, {k: g["parity_max_abs"] for k, g in meta["graphs"].items()})


@pytest.mark.slow
def test_psp_graphs_match_pytorch_at_any_batch(psp_export):
    model, result = psp_export
    x = _images(3, 64)  # a batch size the export never saw
    with torch.no_grad():
        w = model.encode(x)
        image = model.decode(w)
    (w_onnx,) = _run(result.directory / "encoder.onnx", image=x)
    (img_onnx,) = _run(result.directory / "generator.onnx", w_plus=w)
    (whole,) = _run(result.directory / "model.onnx", image=x[:1])
    assert np.abs(w_onnx - w.numpy()).max() < PARITY_BOUND
    assert np.abs(img_onnx - image.numpy()).max() < PARITY_BOUND
    assert np.abs(whole - image[:1].numpy()).max() < PARITY_BOUND
    assert set(result.parity) == {"encoder", "generator", "model"}
    assert all(v < PARITY_BOUND for v in result.parity.values())


@pytest.mark.slow
def test_metadata_names_everything_a_deployer_needs(psp_export):
    model, result = psp_export
    meta = json.loads((result.directory / "export.json").read_text())
    assert meta["format"] == "instyle-onnx" and meta["family"] == "psp" and meta["batch"] == "dynamic"
    assert meta["source"]["checkpoint"].endswith("tiny-psp") and len(meta["source"]["sha256"]) == 64
    assert meta["input"]["shape"] == ["batch", 3, 64, 64] and "[-1, 1]" in meta["input"]["normalisation"]
    assert meta["styles"] == model.n_styles == 10 and meta["style_dim"] == 64
    assert meta["output"]["shape"] == ["batch", 3, 64, 64]
    assert "constants" in meta["noise"]
    assert meta["graphs"]["generator"]["inputs"] == ["w_plus"] and meta["graphs"]["model"]["outputs"] == ["reconstruction"]
    assert not list(result.directory.glob(".export-*"))  # the staging folder is gone


@pytest.mark.slow
@pytest.mark.parametrize("family, kind", [("e4e", "Encoder4Editing")])  # ReStyle: tests/test_backends.py
def test_e4e_and_restyle_encoders_match_pytorch(tmp_path, family, kind):
    model = tiny(family, kind)
    iterations = 2 if family == "restyle" else None
    result = export_onnx(model, tmp_path, iterations=iterations, graphs=("encoder",))
    x = _images(3, 64)
    with torch.no_grad():
        w = model.encode(x, iterations=iterations)
    (w_onnx,) = _run(tmp_path / "encoder.onnx", image=x)
    assert np.abs(w_onnx - w.numpy()).max() < PARITY_BOUND
    assert result.metadata["iterations"] == iterations and result.metadata["family"] == family


@pytest.mark.slow
def test_hyperstyle_offsets_are_explicit_graph_inputs(tmp_path):
    model = tiny_model()
    result = export_onnx(model, tmp_path, iterations=1, graphs=("encoder", "generator"), batch=2)
    x = _images(2, 256)
    with torch.no_grad():
        w, deltas = model.encode(x, iterations=1)
        image = model.decode(w, deltas)
    names = result.metadata["graphs"]["generator"]["inputs"]
    tuned = [i for i, d in enumerate(deltas) if d is not None]
    assert names == ["w_plus", *[f"delta_{i}" for i in tuned]] and result.metadata["batch"] == 2
    outs = _run(tmp_path / "encoder.onnx", image=x)
    assert np.abs(outs[0] - w.numpy()).max() < PARITY_BOUND
    for got, i in zip(outs[1:], tuned):
        assert np.abs(got - deltas[i].numpy()).max() < PARITY_BOUND
    # The generator renders offsets it is given (zero offsets: the plain generator's image).
    zero = {f"delta_{i}": torch.zeros_like(deltas[i]) for i in tuned}
    (plain,) = _run(tmp_path / "generator.onnx", w_plus=w, **zero)
    (tuned_img,) = _run(tmp_path / "generator.onnx", w_plus=w, **{f"delta_{i}": deltas[i] for i in tuned})
    with torch.no_grad():
        expected_plain = model.decode(w)
    assert np.abs(tuned_img - image.numpy()).max() < PARITY_BOUND
    assert np.abs(plain - expected_plain.numpy()).max() < PARITY_BOUND
    assert np.abs(plain - tuned_img).max() > 1e-3  # the offsets matter

    # The backend on this export: batches of 3 and 1 are chunked to the graphs' fixed 2 (the
    # last chunk padded), offsets come back in generator order, compact offsets broadcast.
    from instyle.export.backends import OnnxBackend
    from instyle.models.hyperstyle import compact_deltas

    x3 = _images(3, 256, seed=8)
    with torch.no_grad():
        w3, d3 = model.encode(x3, iterations=1)
        img3 = model.decode(w3, d3)
        model.backend = OnnxBackend(model, "onnxruntime", "fp32", tmp_path, result.metadata)
        try:
            w_b, d_b = model.encode(x3, iterations=1)
            img_b = model.decode(w3, compact_deltas(d3))
            one = model.decode(w3[:1], [None if d is None else d[:1] for d in d3])
        finally:
            model.backend = None
    assert (w_b - w3).abs().max() < PARITY_BOUND and [d is None for d in d_b] == [d is None for d in d3]
    assert max((a - b).abs().max() for a, b in zip(d_b, d3) if a is not None) < PARITY_BOUND
    assert (img_b - img3).abs().max() < PARITY_BOUND and (one - img3[:1]).abs().max() < PARITY_BOUND


@pytest.mark.slow
def test_export_above_the_bound_is_refused_and_writes_nothing(tmp_path):
    model = tiny("psp", "GradualStyleEncoder")
    with pytest.raises(ExportError, match=r"generator.onnx differs from PyTorch fp32 by .* above the bound 0"):
        export_onnx(model, tmp_path, graphs=("generator",), bound=0.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"graphs": ("decoder",)}, r"graphs=\['decoder'\]: choose from \['encoder', 'generator', 'model'\]"),
        ({"iterations": 3}, r"iterations=3: only ReStyle and HyperStyle models refine"),
        ({"batch": 4}, r"batch=4: only HyperStyle graphs have a fixed batch"),
    ],
)
def test_bad_arguments_name_the_value_and_the_accepted_ones(tmp_path, kwargs, message):
    with pytest.raises(ExportError, match=message) as info:
        export_onnx(tiny("psp", "GradualStyleEncoder"), tmp_path, **kwargs)
    assert isinstance(info.value, InstyleError)


def test_cli_reports_a_bad_graph_name_in_one_line(tmp_path, capsys):
    from instyle.cli.main import main

    model = tiny("psp", "GradualStyleEncoder")
    model.save_pretrained(tmp_path / "m")
    assert main(["export", "-c", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--graphs", "encoder,x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["instyle: error: graphs=['encoder', 'x']: choose from ['encoder', 'generator', 'model']"]
