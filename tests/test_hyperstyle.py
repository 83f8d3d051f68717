"""HyperStyle on tiny models: weight-delta rendering, the iterative loop, loading official
files with their W-encoder (and the errors when it is missing or does not fit), the
hypernetwork variants, and the own-format round trip. Official numbers are checked by
``test_hyperstyle_conformance.py``."""

from __future__ import annotations

import re
from collections import OrderedDict

import pytest
import torch
from PIL import Image

import instyle
from instyle.interop import CheckpointError
from instyle.models.encoders.hypernetwork import SHARED_LAYERS, HyperNetConfig
from instyle.models.encoders.w_encoder import WEncoderConfig
from instyle.models.hyperstyle import HyperStyle, HyperStyleConfig, compact_deltas, run_inversion
from instyle.models.stylegan2 import Generator, GeneratorConfig
from tests.helpers import read_key_list

LAYERS = (0, 2, 3, 5, 6, 8, 9, 11, 12, 13, 14, 15)  # shared 3x3, a ToRGB head, two 3x3 heads


def tiny_generator(size: int = 128) -> GeneratorConfig:
    channels = {4: 16, 8: 16, 16: 16, 32: 16, 64: 16, 128: 8, 256: 8}
    return GeneratorConfig(size=size, style_dim=32, n_mlp=2, channels={r: c for r, c in channels.items() if r <= size})


def tiny_config(kind: str = "SharedWeightsHyperNetResNet", size: int = 128) -> HyperStyleConfig:
    gen = tiny_generator(size)
    hyper = HyperNetConfig.for_generator(
        gen, layers_to_tune=LAYERS, type=kind, widths=(8, 8, 16, 16), units=(1, 1, 1, 1), code_dim=16,
        shared_inner=8, inner=8,
    )
    enc = WEncoderConfig(n_styles=gen.n_latent, style_dim=32, widths=(8, 12, 16, 24), units=(1, 2, 1, 1))
    return HyperStyleConfig(generator=gen, hypernet=hyper, w_encoder=enc, iterations=3)


def tiny_model(kind: str = "SharedWeightsHyperNetResNet", seed: int = 0, size: int = 128) -> HyperStyle:
    torch.manual_seed(seed)
    model = HyperStyle(tiny_config(kind, size), latent_avg=torch.randn(2 * (size.bit_length() - 1) - 2, 32) * 0.3)
    # Larger hypernet outputs than the near-zero initialisation, so the offsets matter.
    with torch.no_grad():
        for p in model.hypernet.shared_weight_hypernet.parameters():
            p.mul_(8)
    return model.eval()


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 256, 256, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def write_official(model: HyperStyle, path, w_path, w_size: int | None = None, **opts):
    """The model as the official coach / pSp would save it: shared hypernet copied under
    every shared block, the W-encoder in its own file beside a (cm 1) decoder."""
    cfg = model.config
    sd = OrderedDict(("hypernet." + k, v) for k, v in model.hypernet.state_dict().items())
    shared = model.hypernet.shared_weight_hypernet
    for i in cfg.hypernet.layers_to_tune:
        if i in SHARED_LAYERS:
            for name in ("w1", "b1", "w2", "b2"):
                sd[f"hypernet.refinement_blocks.{i}.hypernet.{name}"] = getattr(shared, name).detach()
    sd.update(("decoder." + k, v) for k, v in model.decoder.state_dict().items())
    all_opts = {
        "dataset_type": "ffhq_hypernet", "encoder_type": cfg.hypernet.type, "input_nc": 6,
        "output_size": cfg.generator.size, "n_hypernet_outputs": cfg.hypernet.n_outputs,
        "layers_to_tune": ",".join(map(str, LAYERS)), "w_encoder_checkpoint_path": "pretrained_models/faces_w_encoder",
        "device": "cuda:0", **opts,
    }
    torch.save({"state_dict": sd, "opts": all_opts, "latent_avg": model.latent_avg, "global_step": 3}, path)
    torch.manual_seed(5)
    w_gen = Generator(tiny_generator(w_size or cfg.generator.size))
    w_sd = OrderedDict(("encoder." + k, v) for k, v in model.w_encoder.state_dict().items())
    w_sd.update(("decoder." + k, v) for k, v in w_gen.state_dict().items())
    torch.save({"state_dict": w_sd, "opts": {"encoder_type": "WEncoder"}, "latent_avg": torch.zeros(1, 32)}, w_path)
    return path, w_path


# --------------------------------------------------------------------------- generator offsets


def test_generator_weight_delta_semantics():
    """A delta d on a layer renders as that layer's kernel replaced by ``W * (1 + d)``;
    zero deltas change nothing; a kernel-constant delta may be given as k = 1."""
    torch.manual_seed(0)
    g = Generator(tiny_generator(64)).eval()
    w = torch.randn(1, g.n_latent, 32)
    layers = g.weight_layers()
    assert len(layers) == g.n_weight_layers == 14
    d = torch.randn(1, *layers[3].weight.shape[1:]) * 0.2
    deltas = [None] * g.n_weight_layers
    deltas[3] = d
    zeros = [None] * g.n_weight_layers
    zeros[3] = torch.zeros_like(d)
    with torch.no_grad():
        plain = g.synthesize(w)
        zero = g([w], input_is_latent=True, randomize_noise=False, weights_deltas=zeros)[0]
        tuned = g([w], input_is_latent=True, randomize_noise=False, weights_deltas=deltas)[0]
        layers[3].weight.mul_(1 + d)
        edited = g.synthesize(w)
    assert float((zero - plain).abs().max()) < 1e-5
    assert float((tuned - edited).abs().max()) < 1e-5
    assert float((tuned - plain).abs().max()) > 1e-2
    # per-channel offsets: [out, in, 1, 1] broadcasts exactly like the repeated 3x3 form
    c = torch.randn(2, *layers[5].weight.shape[1:3], 1, 1) * 0.3
    full = [None] * 14
    full[5] = c.repeat(1, 1, 1, 3, 3)
    short = compact_deltas(full)
    assert short[5].shape == c.shape and torch.equal(short[5], c)
    w2 = w.repeat(2, 1, 1)
    with torch.no_grad():
        a = g([w2], input_is_latent=True, randomize_noise=False, weights_deltas=full)[0]
        b = g([w2], input_is_latent=True, randomize_noise=False, weights_deltas=short)[0]
    assert float((a - b).abs().max()) < 1e-6


def test_generator_weight_delta_errors():
    g = Generator(tiny_generator(64)).eval()
    w = torch.zeros(1, g.n_latent, 32)
    with pytest.raises(ValueError, match="expected 14 weights_deltas"):
        g([w], input_is_latent=True, weights_deltas=[None] * 3)
    bad = [None] * 14
    bad[0] = torch.zeros(1, 16, 8, 3, 3)
    with pytest.raises(ValueError, match=r"weights_delta for a 16->16 3x3 modulated conv"):
        g([w], input_is_latent=True, weights_deltas=bad)


# --------------------------------------------------------------------------- the loop


def test_inversion_accumulates_offsets_from_the_current_reconstruction():
    """Iteration 2 adds the hypernet's output for ``[x, reconstruction of iteration 1]`` to
    the offsets of iteration 1 (the original's loop); the latent never changes."""
    model = tiny_model()
    x = images()
    with torch.no_grad():
        run = run_inversion(model, x, iterations=2, return_all=True)
        codes, y0 = model.w_inversion(x)
        d1 = model.hypernet(torch.cat([x, y0], 1))
        y1 = model.face_pool(model.decode(codes, weights_deltas=d1))
        step2 = model.hypernet(torch.cat([x, y1], 1))
        d2 = [a + b if a is not None else None for a, b in zip(d1, step2)]
        y2 = model.decode(codes, weights_deltas=d2)
    assert len(run.images) == len(run.weights_deltas) == 2
    assert torch.allclose(run.w_plus, codes)
    for got, want in zip(run.weights_deltas[1], d2):
        assert (got is None) == (want is None)
        if got is not None:
            assert float((got - want).abs().max()) < 1e-6
    assert float((run.images[1] - y2).abs().max()) < 1e-5
    assert float((run.images[1] - run.images[0]).abs().max()) > 1e-3  # iterations do differ
    tuned = [i for i, d in enumerate(run.weights_deltas[0]) if d is not None]
    assert tuned == list(LAYERS)
    assert run.weights_deltas[0][13].shape == (2, 3, 16, 1, 1)  # ToRGB head
    assert run.weights_deltas[0][14].shape == (2, 8, 16, 3, 3)


def test_encode_decode_api():
    model = tiny_model()
    x = images()
    with torch.no_grad():
        w, deltas = model.encode(x)  # default iterations: config.iterations (3)
        ws, all_deltas = model.encode(x, iterations=3, return_all=True)
        out = model.decode(w, weights_deltas=deltas)
        forward = model(x, resize=False, randomize_noise=False)  # the official single step
        first = model.decode(w, weights_deltas=all_deltas[0])
    assert w.shape == (2, model.n_styles, 32) and len(deltas) == model.decoder.n_weight_layers
    assert len(ws) == len(all_deltas) == 3 and torch.equal(ws[-1], w)
    assert all(torch.equal(a, b) for a, b in zip(all_deltas[-1], deltas) if a is not None)
    assert out.shape == (2, 3, 128, 128)
    assert float((forward - first).abs().max()) < 1e-5
    with pytest.raises(ValueError, match=r"HyperStyle expects images \[B, 3, 256, 256\]"):
        model.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="iterations=0"):
        model.encode(x, iterations=0)


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("kind", ["SharedWeightsHyperNetResNet", "SharedWeightsHyperNetResNetSeparable"])
def test_official_files_load_with_their_w_encoder(tmp_path, kind):
    model = tiny_model(kind)
    path, w_path = write_official(model, tmp_path / "hs.pt", tmp_path / "w.pt")
    loaded = instyle.load(path, w_encoder=w_path)
    assert isinstance(loaded, HyperStyle)
    assert loaded.config.to_dict() == model.config.to_dict() | {"iterations": 5}
    assert loaded.config.hypernet.type == kind
    own = model.state_dict()
    assert set(loaded.state_dict()) == set(own)
    assert all(torch.equal(v, own[k]) for k, v in loaded.state_dict().items())
    x = images()
    with torch.no_grad():
        a = model.decode(*model.encode(x, iterations=2))
        b = loaded.decode(*loaded.encode(x, iterations=2))
    assert torch.equal(a, b)


def test_missing_w_encoder_is_a_clear_error(tmp_path):
    path, _ = write_official(tiny_model(), tmp_path / "hs.pt", tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"hs\.pt is a HyperStyle checkpoint: it needs its W-encoder.*"
                                              r"faces_w_encoder.*w_encoder=PATH"):
        instyle.load(path)
    with pytest.raises(CheckpointError, match=r"W-encoder for HyperStyle checkpoint .*hs\.pt: .*nope\.pt: no such file"):
        instyle.load(path, w_encoder=tmp_path / "nope.pt")


def test_mismatched_w_encoder_names_both_files(tmp_path):
    model = tiny_model()
    path, _ = write_official(model, tmp_path / "hs.pt", tmp_path / "w.pt")
    _, w64 = write_official(model, tmp_path / "hs2.pt", tmp_path / "w64.pt", w_size=64)
    with pytest.raises(CheckpointError, match=r"W-encoder .*w64\.pt does not fit HyperStyle checkpoint .*hs\.pt: "
                                              r"it was trained for a 64px generator"):
        instyle.load(path, w_encoder=w64)
    with pytest.raises(CheckpointError, match=r"W-encoder .*hs2\.pt does not fit HyperStyle checkpoint .*hs\.pt: "
                                              r"it is not a W-encoder"):
        instyle.load(path, w_encoder=tmp_path / "hs2.pt")


def test_shared_hypernet_copies_must_agree(tmp_path):
    path, w_path = write_official(tiny_model(), tmp_path / "hs.pt", tmp_path / "w.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["hypernet.refinement_blocks.5.hypernet.b1"] = ckpt["state_dict"]["hypernet.shared_weight_hypernet.b1"] + 1
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"refinement_blocks\.5\.hypernet\.b1 differs"):
        instyle.load(path, w_encoder=w_path)


def test_opts_contradicting_the_tensors(tmp_path):
    path, w_path = write_official(tiny_model(), tmp_path / "hs.pt", tmp_path / "w.pt", layers_to_tune="0,2,3")
    with pytest.raises(CheckpointError, match=r"opts\['layers_to_tune'\]='0,2,3'"):
        instyle.load(path, w_encoder=w_path)


def test_own_format_round_trip(tmp_path):
    model = tiny_model("SharedWeightsHyperNetResNetSeparable")
    model.save_pretrained(tmp_path / "hs")
    loaded = instyle.load(tmp_path / "hs")
    assert isinstance(loaded, HyperStyle) and loaded.config.to_dict() == model.config.to_dict()
    x = images()
    with torch.no_grad():
        assert torch.equal(model.decode(*model.encode(x)), loaded.decode(*loaded.encode(x)))
    with pytest.raises(CheckpointError, match="contains its W-encoder"):
        instyle.load(tmp_path / "hs", w_encoder=tmp_path / "w.pt")


def test_module_names_match_the_official_key_lists(shared_dir):
    """A HyperStyle built for config H1 (on the meta device: no memory) has exactly the
    official tensors: the key lists less the shared hypernet's per-block copies, and the
    W-encoder file's ``encoder.*``."""
    keys = shared_dir / "conformance" / "hyperstyle" / "keys"
    if not keys.is_dir():
        pytest.skip(f"needs {keys}")
    gen = GeneratorConfig(size=256)
    layers = (0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)
    config = HyperStyleConfig(generator=gen, hypernet=HyperNetConfig.for_generator(gen, layers_to_tune=layers))
    with torch.device("meta"):
        model = HyperStyle(config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {n: s for n, s, _ in read_key_list(keys / "H1.txt") if not re.search(r"blocks\.\d+\.hypernet\.", n)}
    official.update({"w_encoder." + n[len("encoder."):]: s for n, s, _ in read_key_list(keys / "H1_w.txt")
                     if n.startswith("encoder.")})
    official["latent_avg"] = (14, 512)
    assert ours == official


# --------------------------------------------------------------------------- tools


def test_cli_encode_saves_offsets_and_edit_rerenders_them(tmp_path):
    """``encode --save-latents`` writes the W+ code with this image's offsets (compactly);
    ``edit direction`` on that file renders on the image's tuned generator."""
    import numpy as np
    from PIL import Image

    from instyle.cli.main import main
    from instyle.inference.io import tensor_to_pil
    from instyle.inference.latents import load_latent, load_weights_deltas
    from instyle.inference.preprocess import prepare_input
    from tests.helpers import rgb

    model = tiny_model()
    model.save_pretrained(tmp_path / "hs")
    rgb((80, 80)).save(tmp_path / "face.png")
    out = tmp_path / "enc"
    args = ["-c", str(tmp_path / "hs"), "--device", "cpu", "--full-resolution"]
    assert main(["encode", str(tmp_path / "face.png"), "--out", str(out), "--save-latents", "--iterations", "2", *args]) == 0
    latent = out / "latents" / "face.npz"
    w, _, _ = load_latent(latent)
    deltas = load_weights_deltas(latent)
    with torch.no_grad():
        w_api, d_api = model.encode(prepare_input(tmp_path / "face.png", model.config)[None], iterations=2)
        tuned = model.decode(w_api, weights_deltas=d_api)
        plain = model.decode(w_api)
    assert float((w - w_api).abs().max()) < 1e-5
    assert [d is None for d in deltas] == [d is None for d in d_api]
    assert deltas[14].shape == (1, 8, 16, 1, 1)  # a per-channel head, stored 1x1
    assert deltas[0].shape == (1, 16, 16, 3, 3)
    assert float((deltas[14] - d_api[14][..., :1, :1]).abs().max()) < 1e-5
    np.save(tmp_path / "dir.npy", np.ones(32, dtype=np.float32))
    edit_out = tmp_path / "edit"
    assert main(["edit", "direction", str(latent), "--direction", str(tmp_path / "dir.npy"), "--strengths=0,1",
                 "--out", str(edit_out), *args]) == 0
    got = np.asarray(Image.open(edit_out / "face" / "strength_+0.000.png"), dtype=np.int16)
    want = np.asarray(tensor_to_pil(tuned[0]), dtype=np.int16)
    assert np.abs(got - want).max() <= 1
    assert np.abs(got - np.asarray(tensor_to_pil(plain[0]), dtype=np.int16)).max() > 10


def test_interpolation_offsets_follow_the_latent_path():
    from instyle.inference.offsets import frame_offsets, path_coefficients

    a = [torch.ones(1, 2, 2, 3, 3), None, torch.zeros(1, 2, 2, 1, 1)]
    b = [torch.zeros(1, 2, 2, 3, 3), None, torch.ones(1, 2, 2, 3, 3)]
    c = [torch.full((1, 2, 2, 3, 3), 4.0), None, torch.ones(1, 2, 2, 1, 1)]
    coeff = path_coefficients(3, 3)  # a -> b -> c, 5 frames
    frames = frame_offsets([a, b, c], coeff)
    assert frames[1] is None and frames[0].shape == (5, 2, 2, 3, 3) and frames[2].shape == (5, 2, 2, 3, 3)
    assert frames[0][:, 0, 0, 0, 0].tolist() == [1.0, 0.5, 0.0, 2.0, 4.0]
    assert frames[2][:, 0, 0, 1, 1].tolist() == [0.0, 0.5, 1.0, 1.0, 1.0]


def test_demo_actions_render_on_the_tuned_generator(tmp_path):
    """The demo's reconstruct / mix / interpolate keep each image's offsets: the
    interpolation's end frames are the two reconstructions, and the latent download holds
    the offsets."""
    import numpy as np

    from instyle.demo import actions
    from instyle.inference.latents import load_weights_deltas
    from tests.helpers import rgb

    model = tiny_model()
    a, b = rgb((64, 64), seed=1), rgb((64, 64), seed=2)
    ra, rb = actions.reconstruct(model, a), actions.reconstruct(model, b)
    assert ra.offsets is not None and ra.offsets[0].shape == (1, 16, 16, 3, 3)
    w_a, off_a = actions.encode_image(model, a)
    assert torch.equal(w_a, ra.latent)
    plain = actions.decode(model, w_a[None])[0]
    tuned = actions.decode(model, w_a[None], offsets=off_a)[0]
    assert np.array_equal(np.asarray(tuned), np.asarray(ra.output))
    assert np.abs(np.asarray(tuned, dtype=np.int16) - np.asarray(plain, dtype=np.int16)).max() > 10
    w_b, off_b = actions.encode_image(model, b)
    frames = actions.interpolate(model, w_a, w_b, 5, (off_a, off_b))
    assert len(frames) == 5
    for frame, want in ((frames[0], ra.output), (frames[-1], rb.output)):
        assert np.abs(np.asarray(frame, dtype=np.int16) - np.asarray(want, dtype=np.int16)).max() <= 1
    variants = actions.mix(model, w_a, 2, layers="8-11", seed=0, offsets=off_a)
    assert len(variants) == 2
    path = actions.write_latent(ra.encoding, tmp_path / "face_latent.npy")
    assert path.suffix == ".npz" and load_weights_deltas(path)[0].shape == (1, 16, 16, 3, 3)
    from instyle.demo.store import ModelStore

    model.save_pretrained(tmp_path / "hs")
    (entry,) = ModelStore.from_checkpoints([tmp_path / "hs"], device="cpu").describe()
    assert entry["task"] == "inversion" and entry["input_size"] == 256 and entry["n_styles"] == 12


def test_convert_and_generator_from_official_files(tmp_path):
    """``instyle convert --w-encoder`` writes a self-contained folder; ``load_generator``
    takes the (untuned) generator of an official file; ``Inverter`` refuses HyperStyle
    with a pointer to the API instead of failing inside."""
    from instyle.cli.main import main
    from instyle.inference.inverter import Inverter

    model = tiny_model()
    path, w_path = write_official(model, tmp_path / "hs.pt", tmp_path / "w.pt")
    assert main(["convert", str(path), str(tmp_path / "out")]) == 2  # no W-encoder: reported, no crash
    assert not (tmp_path / "out" / "config.json").exists()
    assert main(["convert", str(path), str(tmp_path / "out"), "--w-encoder", str(w_path)]) == 0
    loaded = instyle.load(tmp_path / "out")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    g = instyle.load_generator(path)
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in g.state_dict().items())
    with pytest.raises(ValueError, match="for HyperStyle use model.encode"):
        Inverter(loaded, device="cpu")


def test_evaluate_scores_the_tuned_reconstructions(tmp_path):
    """``evaluate --checkpoint ... --w-encoder`` scores exactly what ``encode`` writes (the
    reconstructions on each image's tuned generator)."""
    import json

    import torchvision

    from instyle.cli.main import main
    from tests.helpers import rgb

    path, w_path = write_official(tiny_model(), tmp_path / "hs.pt", tmp_path / "w.pt")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        rgb((96, 96), seed=10 + i).save(data / f"img{i}.png")
    torch.manual_seed(0)
    feats = {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")}
    torch.save(feats, tmp_path / "alex.pth")
    common = ["--data", str(data), "--device", "cpu", "--identity", "none", "--lpips-weights", str(tmp_path / "alex.pth")]
    model_args = ["-c", str(path), "--w-encoder", str(w_path)]
    assert main(["encode", str(data), "--out", str(tmp_path / "enc"), "--device", "cpu", *model_args]) == 0
    assert main(["evaluate", *model_args, "--out", str(tmp_path / "r1"), *common]) == 0
    assert main(["evaluate", "--predictions", str(tmp_path / "enc"), "--out", str(tmp_path / "r2"), *common]) == 0
    r1, r2 = (json.loads((tmp_path / r / "report.json").read_text()) for r in ("r1", "r2"))
    assert r1["n_images"] == r2["n_images"] == 2
    assert r1["metrics"]["mse"]["mean"] == pytest.approx(r2["metrics"]["mse"]["mean"], rel=1e-6)


def test_latent_files_with_unfitting_offsets_are_skipped(tmp_path, capsys):
    """A latent whose offsets belong to another model, or offsets given to a pSp model, is
    reported and skipped; the other inputs are still edited."""
    import numpy as np

    from instyle.cli.main import main
    from instyle.inference.latents import save_latent
    from instyle.models import create_psp

    model = tiny_model()
    model.save_pretrained(tmp_path / "hs")
    good = [None] * 17
    good[0] = torch.randn(1, 16, 16, 3, 3) * 0.1
    bad = [None] * 17
    bad[0] = torch.randn(1, 8, 16, 3, 3)
    w = torch.zeros(12, 32)
    save_latent(tmp_path / "good.npz", w, weights_deltas=good)
    save_latent(tmp_path / "bad.npz", w, weights_deltas=bad)
    save_latent(tmp_path / "short.npz", w, weights_deltas=good[:5])
    np.save(tmp_path / "dir.npy", np.ones(32, dtype=np.float32))
    args = ["--direction", str(tmp_path / "dir.npy"), "--strengths=0,1", "--device", "cpu"]
    rc = main(["edit", "direction", str(tmp_path / "good.npz"), str(tmp_path / "bad.npz"), str(tmp_path / "short.npz"),
               "-c", str(tmp_path / "hs"), "--out", str(tmp_path / "e"), *args])
    err = capsys.readouterr().err
    assert rc == 1 and (tmp_path / "e" / "good" / "strength_+0.000.png").is_file()
    assert "bad.npz: weight offsets of layer 0 have shape (1, 8, 16, 3, 3)" in err
    assert "short.npz: 5 weight offsets, but this model's generator has 17" in err
    torch.manual_seed(0)
    create_psp("tiny").save_pretrained(tmp_path / "psp")
    save_latent(tmp_path / "p.npz", torch.zeros(10, 64), weights_deltas=good)
    np.save(tmp_path / "dir64.npy", np.ones(64, dtype=np.float32))
    rc = main(["edit", "direction", str(tmp_path / "p.npz"), "-c", str(tmp_path / "psp"), "--out", str(tmp_path / "e2"),
               "--direction", str(tmp_path / "dir64.npy"), "--strengths=0,1", "--device", "cpu"])
    assert rc == 1 and "carries HyperStyle generator offsets" in capsys.readouterr().err


def test_cars_models_crop_and_feed_back_at_three_quarters_height():
    """The original's cars path: reconstructions cropped to rows [S/8, 7S/8) and fed back
    at 3S/4 x S; a square input (from the shared image preparation) is resized to that."""
    torch.manual_seed(0)
    config = HyperStyleConfig.from_dict({**tiny_config().to_dict(), "crop_cars": True})
    model = HyperStyle(config).eval()
    x = images(1)
    with torch.no_grad():
        run = run_inversion(model, x, iterations=2, return_all=True)
        codes, y0 = model.w_inversion(model.fit_input(x))
        d1 = model.hypernet(torch.cat([model.fit_input(x), y0], 1))
        full = model.decode(codes, weights_deltas=d1)
    assert y0.shape == (1, 3, 192, 256)
    assert run.images[0].shape == (1, 3, 96, 128)  # 128 px generator, rows 16:112
    assert float((run.images[0] - full[:, :, 16:112]).abs().max()) < 1e-5
    with pytest.raises(ValueError, match=r"HyperStyle expects images \[B, 3, 192, 256\]"):
        model.w_inversion(x)


def test_refine_hyperstyle_runs_its_iterations_and_saves_the_offsets(tmp_path):
    """``--refine hyperstyle`` (``refine(..., "hyperstyle")``): N iterations of generator offsets,
    the same as ``encode(x, iterations=N)``; the offsets travel with the saved latent."""
    from instyle.cli.main import main
    from instyle.inference.latents import load_weights_deltas
    from instyle.inference.refine import RefineConfig, RefineError, refine

    model = tiny_model()
    x = images(1)
    with torch.no_grad():
        w, deltas = model.encode(x, iterations=2)
        want = model.decode(w, weights_deltas=deltas, resize=True)[0]
    result = refine(model, x[0], w[0], "hyperstyle", RefineConfig(steps=2))
    torch.testing.assert_close(result.image, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.latent, w[0], rtol=0, atol=0)
    with pytest.raises(RefineError, match="needs a HyperStyle checkpoint"):
        from instyle.models import create_psp

        refine(create_psp("tiny").eval(), torch.zeros(3, 64, 64), torch.zeros(10, 64), "hyperstyle", RefineConfig(steps=1))
    model.save_pretrained(tmp_path / "hs")
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(((x[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype("uint8")).save(src / "a.png")
    out = tmp_path / "out"
    assert main(["encode", str(src), "-c", str(tmp_path / "hs"), "-o", str(out), "--device", "cpu",
                 "--refine", "hyperstyle", "--refine-steps", "2", "--save-latents"]) == 0
    saved = load_weights_deltas(out / "latents" / "a.npz")
    assert saved is not None and sum(d is not None for d in saved) == sum(d is not None for d in deltas)
