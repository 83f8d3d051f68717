"""Latent, offset and edit-direction files get the same bounds as model files.

Every crafted file here is small and built by the test: ``.npy`` headers claiming far more
than the file holds, ``.npz`` zip bombs, malformed ``meta``, noise and offset members,
pickled members, NaN/Inf values. Each must be one line naming the file and the field; in a
batch command (mix, interpolate, edit) that file is skipped and the others are processed.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from instyle.cli.main import main
from instyle.errors import InputError
from instyle.inference.editing import load_direction, load_edit
from instyle.inference.latents import load_latent, load_weights_deltas, save_latent
from instyle.models import get_config
from instyle.models.init import random_psp

pytestmark = pytest.mark.timeout(120)

N_STYLES, DIM = 10, 64  # the "tiny" pSp config


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("latent_bounds") / "tiny"
    random_psp(get_config("tiny"), seed=1, latent_samples=64).save_pretrained(d)
    return d


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _forged_npy(shape: tuple[int, ...], dtype: str = "<f4", pad: int = 64) -> bytes:
    """A valid ``.npy`` header declaring ``shape`` followed by only ``pad`` bytes."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * pad


def _npz(path: Path, members: dict[str, bytes], compress: bool = False) -> Path:
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)
    return path


def _meta(obj) -> bytes:
    return _npy_bytes(np.asarray(json.dumps(obj)))


W = np.zeros((N_STYLES, DIM), np.float32)


# ----------------------------------------------------------------------------- the reader


def test_forged_npy_header_is_refused_before_allocating(tmp_path):
    p = tmp_path / "huge.npy"
    p.write_bytes(_forged_npy((1 << 40, 10)))  # ~200 bytes claiming 40 TiB
    with pytest.raises(InputError, match=r"huge\.npy.*declares .* bytes"):
        load_latent(p)
    with pytest.raises(InputError, match=r"huge\.npy"):
        load_direction(p)


def test_npz_zip_bomb_is_refused_before_inflating(tmp_path):
    bomb = _npz(tmp_path / "bomb.npz", {"w_plus": _npy_bytes(np.zeros((8000, N_STYLES, DIM), np.float32))}, compress=True)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(InputError, match=r"bomb\.npz.*zip members declare"):
        load_latent(bomb)
    offsets = _npz(tmp_path / "obomb.npz", {"w_plus": _npy_bytes(W), "meta": _meta({"n_weight_layers": 2}),
                                           "delta_0": _npy_bytes(np.zeros((1, 160, 160, 16, 16), np.float32))}, compress=True)
    with pytest.raises(InputError, match=r"obomb\.npz.*zip members declare"):
        load_weights_deltas(offsets)


def test_npz_member_header_larger_than_member_is_refused(tmp_path):
    p = _npz(tmp_path / "m.npz", {"w_plus": _forged_npy((1 << 30, N_STYLES, DIM))})
    with pytest.raises(InputError, match=r"m\.npz.*'w_plus'.*declares"):
        load_latent(p)


@pytest.mark.parametrize(
    "members, field",
    [
        ({"meta": _npy_bytes(np.asarray("{not json"))}, "meta"),
        ({"meta": _npy_bytes(np.arange(3))}, "meta"),
        ({"meta": _meta([1, 2])}, "meta"),
        ({"meta": _npy_bytes(np.asarray("[" * 100_000 + "]" * 100_000))}, "meta"),
        ({"noise_x": _npy_bytes(np.zeros((1, 1, 4, 4), np.float32))}, "noise_x"),
        ({"noise_0": _npy_bytes(np.full((1, 1, 4, 4), np.nan, np.float32))}, "noise_0"),
        ({"meta": _meta({"n_weight_layers": 10**12}), "delta_0": _npy_bytes(np.zeros((1, 2, 2, 1, 1), np.float32))},
         "n_weight_layers"),
        ({"meta": _meta({"n_weight_layers": "many"}), "delta_0": _npy_bytes(np.zeros((1, 2, 2, 1, 1), np.float32))},
         "n_weight_layers"),
        ({"delta_99999999999": _npy_bytes(np.zeros((1, 2, 2, 1, 1), np.float32))}, "delta_99999999999"),
        ({"meta": _meta({"n_weight_layers": 4}), "delta_-1": _npy_bytes(np.zeros((1, 2, 2, 1, 1), np.float32))},
         "delta_-1"),
        ({"meta": _meta({"n_weight_layers": 4}), "delta_1": _npy_bytes(np.full((1, 2, 2, 1, 1), np.inf, np.float32))},
         "delta_1"),
        ({"meta": _meta({"n_weight_layers": 4}), "delta_1": _npy_bytes(np.zeros((3, 2, 2, 1, 1), np.float32))},
         "delta_1"),
        ({"meta": _meta({"n_weight_layers": 4}), "delta_1": _npy_bytes(np.zeros((2, 2), np.float32))}, "delta_1"),
    ],
    ids=["meta-not-json", "meta-not-string", "meta-not-object", "meta-deep", "noise-x", "noise-nan", "layers-huge",
         "layers-text", "delta-huge-index", "delta-negative", "delta-inf", "delta-batch", "delta-ndim"],
)
def test_malformed_members_name_the_file_and_field(tmp_path, members, field):
    p = _npz(tmp_path / "bad.npz", {"w_plus": _npy_bytes(np.zeros((2, N_STYLES, DIM), np.float32)), **members})
    with pytest.raises(InputError, match=rf"bad\.npz.*{field}"):
        load_latent(p)  # every member is checked, the offsets too


def test_pickled_and_object_members_are_refused_without_unpickling(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    p = _npz(tmp_path / "obj.npz", {"w_plus": _npy_bytes(W), "delta_0": buf.getvalue()})
    with pytest.raises(InputError, match=r"obj\.npz.*delta_0.*object"):
        load_weights_deltas(p)
    p = _npz(tmp_path / "objw.npz", {"w_plus": buf.getvalue()})
    with pytest.raises(InputError, match=r"objw\.npz.*w_plus.*object"):
        load_latent(p)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_latents_are_refused(tmp_path, value):
    w = W.copy()
    w[3, 5] = value
    np.save(tmp_path / "nan.npy", w)
    with pytest.raises(InputError, match=r"nan\.npy.*NaN or infinite"):
        load_latent(tmp_path / "nan.npy")
    save_latent(tmp_path / "nan.npz", w)
    with pytest.raises(InputError, match=r"nan\.npz.*w_plus.*NaN or infinite"):
        load_latent(tmp_path / "nan.npz")


def test_well_formed_latent_files_still_load(tmp_path):
    deltas = [None, torch.randn(1, 2, 2, 3, 3), None, torch.randn(1, 2, 2, 1, 1)]
    noise = [torch.randn(1, 1, 4, 4), torch.randn(1, 1, 8, 8)]
    save_latent(tmp_path / "ok.npz", torch.randn(N_STYLES, DIM), noise=noise, meta={"model": "x"}, weights_deltas=deltas)
    w, n, meta = load_latent(tmp_path / "ok.npz")
    assert w.shape == (1, N_STYLES, DIM) and len(n) == 2 and meta["model"] == "x" and meta["n_weight_layers"] == 4
    got = load_weights_deltas(tmp_path / "ok.npz")
    assert [d is None for d in got] == [True, False, True, False]
    torch.testing.assert_close(got[1], deltas[1])
    np.savez_compressed(tmp_path / "c.npz", w_plus=np.ones((3, N_STYLES, DIM), np.float64))
    assert load_latent(tmp_path / "c.npz")[0].shape == (3, N_STYLES, DIM)


def test_ganspace_zero_std_is_refused(tmp_path):
    torch.save({"mean": torch.zeros(1, DIM), "comp": torch.randn(4, 1, DIM), "std": torch.tensor([1.0, 0.0, 1.0, 1.0])},
               tmp_path / "pca.pt")
    with pytest.raises(InputError, match=r"pca\.pt.*std"):
        load_edit(tmp_path / "pca.pt")


def test_sefa_file_with_negative_layers_is_refused(tmp_path):
    np.savez(tmp_path / "sefa.npz", directions=np.ones((3, DIM), np.float32), layers=np.array([-1, 2]))
    with pytest.raises(InputError, match=r"sefa\.npz.*layers"):
        load_edit(tmp_path / "sefa.npz")


def test_short_text_pt_edit_file_says_what_it_is(tmp_path):
    (tmp_path / "age.pt").write_text("this is not it!\n")  # 16 bytes of text
    with pytest.raises(InputError, match=r"age\.pt: not an edit file.*16 bytes.*text"):
        load_edit(tmp_path / "age.pt")


# ----------------------------------------------------------------------------- the batch commands


def _bad_files(tmp_path: Path) -> list[Path]:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "huge.npy").write_bytes(_forged_npy((1 << 40, 10)))
    _npz(bad / "meta.npz", {"w_plus": _npy_bytes(W), "meta": _npy_bytes(np.asarray("{oops"))})
    _npz(bad / "layers.npz", {"w_plus": _npy_bytes(W), "meta": _meta({"n_weight_layers": 10**12}),
                              "delta_0": _npy_bytes(np.zeros((1, 2, 2, 1, 1), np.float32))})
    _npz(bad / "index.npz", {"w_plus": _npy_bytes(W), "delta_99999999999": _npy_bytes(np.zeros((1, 2, 2, 1, 1), np.float32))})
    nan = W.copy()
    nan[0, 0] = np.nan
    np.save(bad / "nan.npy", nan)
    return sorted(bad.iterdir())


def _good_files(tmp_path: Path) -> list[Path]:
    g = torch.Generator().manual_seed(0)
    out = []
    for name in ("a", "b"):
        p = tmp_path / f"{name}.npy"
        np.save(p, (torch.randn(N_STYLES, DIM, generator=g) * 0.3).numpy())
        out.append(p)
    return out


def test_mix_interpolate_edit_skip_bad_latent_files(tmp_path, tiny_dir, capsys):
    bad, good = _bad_files(tmp_path), _good_files(tmp_path)
    inputs = [str(p) for p in [good[0], *bad, good[1]]]
    model = ["-c", str(tiny_dir), "--device", "cpu", "--batch-size", "2"]
    np.save(tmp_path / "dir.npy", np.ones(DIM, np.float32))
    runs = {
        "mix": ["mix", *inputs, *model, "-n", "2", "--out", str(tmp_path / "mix")],
        "interpolate": ["interpolate", *inputs, *model, "--steps", "3", "--animation", "none", "--out", str(tmp_path / "int")],
        "edit": ["edit", "direction", *inputs, *model, "--direction", str(tmp_path / "dir.npy"), "--strengths=0,1",
                 "--out", str(tmp_path / "edit")],
    }
    for cmd, argv in runs.items():
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 1, (cmd, err)
        assert "Traceback" not in err
        for p in bad:
            lines = [ln for ln in err.splitlines() if p.name in ln]
            assert len(lines) == 1 and lines[0].startswith("instyle: skipped"), (cmd, p.name, err)
    assert (tmp_path / "mix" / "outputs" / "a_1.png").is_file() and (tmp_path / "mix" / "outputs" / "b_1.png").is_file()
    assert len(list((tmp_path / "int" / "frames").iterdir())) == 3
    assert (tmp_path / "edit" / "a" / "strength_+1.000.png").is_file() and (tmp_path / "edit" / "b").is_dir()


def test_special_files_as_latents_are_refused_without_reading(tmp_path):
    import os

    os.symlink("/dev/zero", tmp_path / "zero.npy")
    with pytest.raises(InputError, match=r"zero\.npy.*not a regular file"):
        load_latent(tmp_path / "zero.npy")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.npz")
        with pytest.raises(InputError, match=r"fifo\.npz.*not a regular file"):
            load_latent(tmp_path / "fifo.npz")


def test_negative_shape_in_header_is_refused(tmp_path):
    """Found by the fuzz test: a header shape ``(-1, 5)`` reached ``bytearray(-20)``."""
    p = tmp_path / "neg.npy"
    p.write_bytes(_forged_npy((-1, 5)))
    with pytest.raises(InputError, match=r"neg\.npy.*negative"):
        load_latent(p)


def test_file_of_several_codes_gives_each_code_its_own_offsets(tmp_path, capsys):
    """A HyperStyle ``.npz`` of B codes with B offsets: code k renders with offsets k (each
    source used to get the whole batch of offsets)."""
    from tests.test_hyperstyle import tiny_model

    model = tiny_model()
    model.save_pretrained(tmp_path / "hs")
    deltas = [None] * 17
    deltas[0] = torch.randn(2, 16, 16, 3, 3) * 0.1
    save_latent(tmp_path / "two.npz", torch.randn(2, 12, 32) * 0.3, weights_deltas=deltas)
    rc = main(["mix", str(tmp_path / "two.npz"), "-c", str(tmp_path / "hs"), "-n", "3", "--out", str(tmp_path / "m"),
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "m" / "outputs" / "two" / "1_2.png").is_file()
