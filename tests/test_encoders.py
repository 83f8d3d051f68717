"""pSp encoders and IR / IR-SE backbones: shapes, boundary checks, structure, and the
full-size parameter names against the official key lists (built on the meta device, so
no memory is allocated for the ~200M parameters)."""

from __future__ import annotations

import pytest
import torch

from instyle.models import GeneratorConfig, PSPConfig, build_encoder, list_encoders
from instyle.models.encoders import (
    ENCODER_TYPES,
    Backbone,
    BackboneEncoderUsingLastLayerIntoW,
    BackboneEncoderUsingLastLayerIntoWPlus,
    EncoderConfig,
    GradualStyleEncoder,
    make_body,
)
from instyle.models.encoders.backbone import UNITS, stage_specs
from instyle.utils.config import ConfigError

from .helpers import read_key_list

GRADUAL, INTO_W, INTO_WPLUS = ENCODER_TYPES
NARROW = {"widths": (4, 8, 8, 16), "units": (1, 2, 1, 1), "style_dim": 16}


def narrow_encoder(kind: str, input_nc: int = 3, n_styles: int = 10, input_size: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    cfg = EncoderConfig(type=kind, input_nc=input_nc, n_styles=n_styles, input_size=input_size, **NARROW)
    return build_encoder(cfg).eval()


def _state_rows(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()]


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("input_nc", [1, 3, 19])
@pytest.mark.parametrize("kind", ENCODER_TYPES)
def test_encoder_output_shapes(kind, input_nc):
    enc = narrow_encoder(kind, input_nc=input_nc, n_styles=10)
    x = torch.randn(2, input_nc, 64, 64)
    with torch.no_grad():
        out = enc(x)
    expected = (2, 16) if kind == INTO_W else (2, 10, 16)
    assert out.shape == expected
    assert torch.isfinite(out).all()
    assert enc.state_dict()["input_layer.0.weight"].shape == (4, input_nc, 3, 3)


@pytest.mark.parametrize("output_size, n_styles", [(32, 8), (64, 10), (128, 12), (256, 14), (512, 16), (1024, 18)])
def test_n_styles_per_output_size(output_size, n_styles):
    assert GeneratorConfig(size=output_size).n_latent == n_styles
    assert PSPConfig.for_output_size(output_size).encoder.n_styles == n_styles
    enc = narrow_encoder(GRADUAL, n_styles=n_styles)
    assert len(enc.styles) == n_styles
    with torch.no_grad():
        assert enc(torch.randn(1, 3, 64, 64)).shape == (1, n_styles, 16)


@pytest.mark.parametrize("input_size", [64, 128, 256])
def test_gradual_encoder_map_sizes_follow_input_size(input_size):
    enc = narrow_encoder(GRADUAL, n_styles=14, input_size=input_size)
    spatial = [block.spatial for block in enc.styles]
    s = input_size
    assert spatial == [s // 16] * 3 + [s // 8] * 4 + [s // 4] * 7
    # log2(spatial) strided convs per map2style head.
    assert [len(block.convs) // 2 for block in enc.styles] == [sp.bit_length() - 1 for sp in spatial]


@torch.no_grad()
def test_gradual_encoder_pyramid_routing():
    """Coarse styles read c3 only; middle styles also latlayer1(c2); fine also latlayer2(c1)."""
    enc = narrow_encoder(GRADUAL, n_styles=10)
    x = torch.randn(2, 3, 64, 64)
    base = enc(x)
    enc.latlayer2.weight.add_(1.0)
    fine_changed = enc(x)
    torch.testing.assert_close(fine_changed[:, :7], base[:, :7], rtol=0, atol=0)
    assert not torch.allclose(fine_changed[:, 7:], base[:, 7:])
    enc.latlayer1.weight.add_(1.0)
    mid_changed = enc(x)
    torch.testing.assert_close(mid_changed[:, :3], base[:, :3], rtol=0, atol=0)
    assert not torch.allclose(mid_changed[:, 3:7], base[:, 3:7])


@torch.no_grad()
@pytest.mark.parametrize("kind", ENCODER_TYPES)
def test_batch_samples_are_independent_in_eval_mode(kind):
    enc = narrow_encoder(kind)
    x = torch.randn(3, 3, 64, 64)
    out = enc(x)
    for i in range(3):
        torch.testing.assert_close(out[i : i + 1], enc(x[i : i + 1]), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- boundary checks


@pytest.mark.parametrize("kind", ENCODER_TYPES)
@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (1, 3, 64, 48), (1, 1, 64, 64), (3, 64, 64)])
def test_wrong_input_raises_naming_expected_shape(kind, shape):
    enc = narrow_encoder(kind, input_nc=3)
    with pytest.raises(ValueError, match=r"expects input \[B, 3, 64, 64\]") as info:
        enc(torch.zeros(*shape))
    assert str(tuple(shape)) in str(info.value)


def test_map2style_head_rejects_wrong_map():
    enc = narrow_encoder(GRADUAL)
    with pytest.raises(ValueError, match="expects a 4x4 map"):
        enc.styles[0](torch.zeros(1, 16, 8, 8))


def test_arcface_backbone_rejects_wrong_input():
    with torch.device("meta"):
        net = Backbone(112, 50, "ir_se")
    with pytest.raises(ValueError, match=r"expects \[B, 3, 112, 112\]"):
        net(torch.zeros(1, 3, 128, 128, device="meta"))


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"type": "ResNetEncoder"}, r"encoder.type='ResNetEncoder' is not accepted; choose one of \['GradualStyle"),
        ({"mode": "se"}, r"encoder.mode='se' is not accepted; choose one of \['ir', 'ir_se'\]"),
        ({"num_layers": 34}, r"encoder.num_layers=34 is not accepted; choose one of \[50, 100, 152\]"),
        ({"input_nc": 0}, r"encoder.input_nc=0 must be an integer in \[1, 256\]"),
        ({"input_size": 100}, r"encoder.input_size=100 must be a power of two"),
        ({"widths": (8, 8, 8)}, r"encoder.widths=\(8, 8, 8\) must be 4 integers in \[1, 2048\]"),
        ({"units": (1, 0, 1, 1)}, r"encoder.units=\(1, 0, 1, 1\) must be 4 integers in \[1, 64\]"),
        ({"coarse": 5, "middle": 3}, r"coarse=5 and middle=3"),
    ],
)
def test_encoder_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EncoderConfig(**kwargs)


def test_registry_lists_the_official_encoder_types():
    assert set(ENCODER_TYPES) <= set(list_encoders())
    classes = {GRADUAL: GradualStyleEncoder, INTO_W: BackboneEncoderUsingLastLayerIntoW,
               INTO_WPLUS: BackboneEncoderUsingLastLayerIntoWPlus}
    for kind, cls in classes.items():
        assert isinstance(narrow_encoder(kind), cls)


def test_encoder_config_dict_round_trip():
    cfg = EncoderConfig(type=INTO_WPLUS, input_nc=19, n_styles=12, **NARROW)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------- IR / IR-SE, depths


@pytest.mark.parametrize("num_layers, units", [(50, (3, 4, 14, 3)), (100, (3, 13, 30, 3)), (152, (3, 8, 36, 3))])
def test_backbone_depths(num_layers, units):
    assert UNITS[num_layers] == units
    specs = stage_specs(num_layers)
    assert [len(s) for s in specs] == list(units)
    assert [s[0].stride for s in specs] == [2, 2, 2, 2]
    assert all(b.stride == 1 for s in specs for b in s[1:])
    with torch.device("meta"):
        body, ends = make_body(num_layers, "ir_se")
    assert len(body) == sum(units)
    cumulative = [sum(units[: i + 1]) - 1 for i in range(4)]
    assert ends == cumulative
    if num_layers == 50:
        assert ends[1:] == [6, 20, 23]  # the FPN taps of the official encoder


def test_ir_and_ir_se_differ_only_by_se_blocks():
    with torch.device("meta"):
        ir, _ = make_body(50, "ir")
        ir_se, _ = make_body(50, "ir_se")
    ir_keys, se_keys = set(ir.state_dict()), set(ir_se.state_dict())
    assert ir_keys < se_keys
    extra = se_keys - ir_keys
    assert extra and all(".res_layer.5.fc" in k for k in extra)
    assert len(extra) == 2 * 24  # fc1 + fc2 per unit
    with pytest.raises(ValueError, match="mode='se' is not supported"):
        make_body(50, "se")
    with pytest.raises(ValueError, match="num_layers=34 is not supported"):
        stage_specs(34)


@torch.no_grad()
def test_ir_encoder_runs():
    torch.manual_seed(0)
    cfg = EncoderConfig(mode="ir", n_styles=10, input_size=64, **NARROW)
    enc = build_encoder(cfg).eval()
    assert not any("fc1" in k for k in enc.state_dict())
    assert enc(torch.randn(1, 3, 64, 64)).shape == (1, 10, 16)


# --------------------------------------------------------------------------- official key lists


def _official_encoder_rows(shared_dir, name: str) -> list[tuple[str, tuple[int, ...], str]]:
    rows = read_key_list(shared_dir / "conformance" / "keys" / name)
    return [(k[len("encoder."):], s, d) for k, s, d in rows if k.startswith("encoder.")]


@pytest.mark.parametrize(
    "key_list, encoder_type, n_styles",
    [("A.txt", GRADUAL, 14), ("B.txt", INTO_W, 10)],
    ids=["gradual-256px-config-A", "w-config-B"],
)
def test_encoder_keys_equal_official_key_list(shared_dir, key_list, encoder_type, n_styles):
    """Full-size IR-SE-50 encoders of configs A (FPN, 256 px model) and B (W): names, shapes, order."""
    expected = _official_encoder_rows(shared_dir, key_list)
    with torch.device("meta"):
        enc = build_encoder(EncoderConfig(type=encoder_type, n_styles=n_styles))
    got = _state_rows(enc)
    assert [k for k, _, _ in got] == [k for k, _, _ in expected]
    assert got == expected


def test_wplus_encoder_full_size_layout():
    """No official key list for W+; check the layer shapes of the paper's ablation encoder."""
    with torch.device("meta"):
        enc = build_encoder(EncoderConfig(type=INTO_WPLUS, n_styles=18))
    sd = enc.state_dict()
    assert sd["output_layer_2.0.weight"].shape == (512,)
    assert sd["output_layer_2.3.weight"].shape == (512, 512 * 7 * 7)
    assert sd["linear.weight"].shape == (512 * 18, 512)
    assert len({k.split(".")[1] for k in sd if k.startswith("body.")}) == 24


def test_arcface_backbone_keys_equal_official_ir_se50(shared_dir):
    expected = read_key_list(shared_dir / "conformance" / "training" / "keys" / "ir_se50.txt")
    with torch.device("meta"):
        net = Backbone(input_size=112, num_layers=50, mode="ir_se", drop_ratio=0.6, affine=True)
    got = _state_rows(net)
    assert [k for k, _, _ in got] == [k for k, _, _ in expected]
    assert got == expected
