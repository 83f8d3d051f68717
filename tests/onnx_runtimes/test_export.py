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
def test_hyperstyle_offsets_are_explicit_graph_inputs_at_any_batch(tmp_path):
    """One export (dynamic batch: the per-image kernels are batched products per tap, not a
    convolution with ``groups = batch``) runs at batch 1 and 3, neither of them traced."""
    model = tiny_model()
    result = export_onnx(model, tmp_path, iterations=1, graphs=("encoder", "generator"))
    assert result.metadata["batch"] == "dynamic"
    names = result.metadata["graphs"]["generator"]["inputs"]
    for n in (3, 1):
        x = _images(n, 256, seed=n)
        with torch.no_grad():
            w, deltas = model.encode(x, iterations=1)
            image = model.decode(w, deltas)
            expected_plain = model.decode(w)
        tuned = [i for i, d in enumerate(deltas) if d is not None]
        assert names == ["w_plus", *[f"delta_{i}" for i in tuned]]
        outs = _run(tmp_path / "encoder.onnx", image=x)
        assert outs[0].shape[0] == n and np.abs(outs[0] - w.numpy()).max() < PARITY_BOUND
        for got, i in zip(outs[1:], tuned):
            assert np.abs(got - deltas[i].numpy()).max() < PARITY_BOUND
        # The generator renders offsets it is given (zero offsets: the plain generator's image).
        zero = {f"delta_{i}": torch.zeros_like(deltas[i]) for i in tuned}
        (plain,) = _run(tmp_path / "generator.onnx", w_plus=w, **zero)
        (tuned_img,) = _run(tmp_path / "generator.onnx", w_plus=w, **{f"delta_{i}": deltas[i] for i in tuned})
        assert np.abs(tuned_img - image.numpy()).max() < PARITY_BOUND
        assert np.abs(plain - expected_plain.numpy()).max() < PARITY_BOUND
        assert np.abs(plain - tuned_img).max() > 1e-3  # the offsets matter

    # The backend on this export: offsets come back in generator order, compact (batch-1)
    # offsets broadcast over the batch.
    from instyle.export.backends import OnnxBackend
    from instyle.models.hyperstyle import compact_deltas

    x3 = _images(3, 256, seed=8)
    with torch.no_grad():
        w3, d3 = model.encode(x3, iterations=1)
        img3 = model.decode(w3, d3)
        shared = model.decode(w3, [None if d is None else d[:1] for d in d3])
        model.backend = OnnxBackend(model, "onnxruntime", "fp32", tmp_path, result.metadata)
        try:
            w_b, d_b = model.encode(x3, iterations=1)
            img_b = model.decode(w3, compact_deltas(d3))
            shared_b = model.decode(w3, [None if d is None else d[:1] for d in d3])
        finally:
            model.backend = None
    assert (w_b - w3).abs().max() < PARITY_BOUND and [d is None for d in d_b] == [d is None for d in d3]
    assert max((a - b).abs().max() for a, b in zip(d_b, d3) if a is not None) < PARITY_BOUND
    assert (img_b - img3).abs().max() < PARITY_BOUND and (shared_b - shared).abs().max() < PARITY_BOUND


def test_per_tap_kernels_equal_the_grouped_convolution():
    """The export path of HyperStyle's per-image kernels (no ``groups = batch``) computes what
    the grouped (transposed) convolution computes, upsampling included."""
    from instyle.models.stylegan2 import ModulatedConv2d

    torch.manual_seed(0)
    for upsample, k in ((True, 3), (False, 3), (False, 1)):
        conv = ModulatedConv2d(6, 5, k, 8, upsample=upsample, demodulate=k == 3)
        x, style, delta = torch.randn(3, 6, 8, 8), torch.randn(3, 8), 0.1 * torch.randn(3, 5, 6, k, k)
        with torch.no_grad():
            grouped = conv(x, style, delta)
            taps = conv._per_sample_conv_by_taps(x, conv.modulated_weight(style, delta))
        assert taps.shape == grouped.shape and (taps - grouped).abs().max() < 1e-5


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
        ({"iterations": 3}, r"iterations=3: only ReStyle, HyperStyle and ReStyle over StyleGAN3 models refine"),
        ({"batch": 4}, r"batch=4: psp graphs take any batch \(leave batch out\)"),
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


@pytest.mark.slow
def test_sfe_graphs_take_the_fused_feature_and_an_edit_delta(tmp_path):
    """SFE: the encoder gives W+, the e4e latent and the 16 px (tiny) fused feature; the
    generator runs the feature editor on ``cat[fused, delta]``: zero delta is the inversion,
    an edit's delta reproduces ``model.edit``. The backend serves ``encode`` / ``decode``."""
    from instyle.export.backends import OnnxBackend
    from tests.test_sfe import tiny_model as tiny_sfe

    model = tiny_sfe()
    result = export_onnx(model, tmp_path, graphs=("encoder", "generator"))
    graphs = result.metadata["graphs"]
    assert graphs["encoder"]["outputs"] == ["w_plus", "w_e4e", "fused_feat"] and result.metadata["batch"] == "dynamic"
    assert graphs["generator"]["inputs"] == ["w_plus", "fused_feat", "feature_delta"]
    assert set(result.metadata["extra_inputs"]) == {"fused_feat", "feature_delta"}
    x = _images(3, 64)  # a batch size the export never saw
    shift = torch.randn(model.config.generator.style_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        enc = model.encode(x)
        edited = model.edit(enc, lambda w: w + shift)
        image, image_edit = model.decode(enc), model.decode(edited)
        delta = model.generator_feature(enc.w_e4e) - model.generator_feature(enc.w_e4e + shift)
    w, w_e4e, fused = _run(tmp_path / "encoder.onnx", image=x)
    for got, want in ((w, enc.w_recon), (w_e4e, enc.w_e4e), (fused, enc.fused_feat)):
        assert np.abs(got - want.numpy()).max() < PARITY_BOUND
    (inverted,) = _run(tmp_path / "generator.onnx", w_plus=enc.w_recon, fused_feat=enc.fused_feat,
                       feature_delta=torch.zeros_like(enc.fused_feat))
    (moved,) = _run(tmp_path / "generator.onnx", w_plus=edited.w_edit, fused_feat=enc.fused_feat, feature_delta=delta)
    assert np.abs(inverted - image.numpy()).max() < PARITY_BOUND
    assert np.abs(moved - image_edit.numpy()).max() < PARITY_BOUND and np.abs(moved - inverted).max() > 1e-3

    with torch.no_grad():
        model.backend = OnnxBackend(model, "onnxruntime", "fp32", tmp_path, result.metadata)
        try:
            enc_b = model.encode(x)
            image_b = model.decode(enc_b)
        finally:
            model.backend = None
    assert (enc_b.w_recon - enc.w_recon).abs().max() < PARITY_BOUND
    assert (enc_b.fused_feat - enc.fused_feat).abs().max() < PARITY_BOUND
    assert (image_b - image).abs().max() < PARITY_BOUND


@pytest.mark.slow
def test_restyle3_generator_takes_a_transform_per_image(tmp_path):
    """ReStyle over StyleGAN3: the StyleGAN3 generator (filtered leaky ReLU included) exports,
    its input transform a graph input, one per image; the unrolled encoder matches."""
    from instyle.export.backends import OnnxBackend
    from tests.test_stylegan3 import tiny_restyle3

    model = tiny_restyle3()
    result = export_onnx(model, tmp_path, iterations=1, graphs=("encoder", "generator"))
    assert result.metadata["graphs"]["generator"]["inputs"] == ["w_plus", "transform"]
    assert result.metadata["iterations"] == 1 and result.metadata["batch"] == "dynamic"
    x = _images(3, 32)
    angle = torch.tensor([0.0, 0.3, -0.5])
    t = torch.eye(3).repeat(3, 1, 1)
    t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    t[:, 0, 2] = torch.tensor([0.0, 0.1, -0.2])
    with torch.no_grad():
        w = model.encode(x, iterations=1)
        image = model.decode(w, transform=t)
        plain = model.decode(w)
    (w_onnx,) = _run(tmp_path / "encoder.onnx", image=x)
    (img_onnx,) = _run(tmp_path / "generator.onnx", w_plus=w, transform=t)
    assert np.abs(w_onnx - w.numpy()).max() < PARITY_BOUND
    assert np.abs(img_onnx - image.numpy()).max() < PARITY_BOUND
    assert np.abs(img_onnx[1:] - plain[1:].numpy()).max() > 1e-3  # the transforms matter

    with torch.no_grad():
        model.backend = OnnxBackend(model, "onnxruntime", "fp32", tmp_path, result.metadata)
        try:
            w_b = model.encode(x, iterations=1)
            shared = model.decode(w_b, transform=t[1])  # one [3, 3] transform for the batch
            aligned = model.decode(w_b)
        finally:
            model.backend = None
        expected_shared = model.decode(w, transform=t[1])
    assert (w_b - w).abs().max() < PARITY_BOUND
    assert (shared - expected_shared).abs().max() < PARITY_BOUND and (aligned - plain).abs().max() < PARITY_BOUND
