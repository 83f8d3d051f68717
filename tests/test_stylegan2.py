"""StyleGAN2 generator: shapes for every size, forward features, config validation and
rosinality parameter names (checked against the official key list when ../shared exists)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from instyle.models import Generator, GeneratorConfig
from instyle.models.stylegan2 import ModulatedConv2d, nvidia_channels, rosinality_channels
from instyle.utils.config import ConfigError

from .helpers import read_key_list

STYLE_DIM = 16


def narrow_config(size: int, style_dim: int = STYLE_DIM, width: int = 8) -> GeneratorConfig:
    """A fast generator: ``width`` channels up to 32 px, half of it above."""
    channels = {2**i: width if 2**i <= 32 else max(width // 2, 2) for i in range(2, int(math.log2(size)) + 1)}
    return GeneratorConfig(size=size, style_dim=style_dim, n_mlp=2, channels=channels)


def make_generator(size: int = 32, seed: int = 0, noise_strength: float = 0.3, **kw) -> Generator:
    """A narrow generator with non-zero noise strengths (they start at 0), in eval mode."""
    torch.manual_seed(seed)
    g = Generator(narrow_config(size, **kw))
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(noise_strength)
    return g.eval()


@pytest.fixture(scope="module")
def g32() -> Generator:
    return make_generator(32)


def codes(g: Generator, batch: int = 2, seed: int = 1, plus: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, g.n_latent, g.style_dim) if plus else (batch, g.style_dim)
    return torch.randn(*shape, generator=gen)


# --------------------------------------------------------------------------- shapes and tables


@pytest.mark.parametrize("size", [8, 16, 32, 64, 128, 256, 512, 1024])
def test_output_shape_every_size(size):
    g = make_generator(size, width=4)
    assert g.n_latent == 2 * int(math.log2(size)) - 2
    assert g.num_layers == 2 * int(math.log2(size)) - 3
    assert len(g.convs) == 2 * (int(math.log2(size)) - 2) and len(g.to_rgbs) == int(math.log2(size)) - 2
    with torch.no_grad():
        img, latents = g([codes(g, batch=1)], randomize_noise=False, return_latents=True)
    assert img.shape == (1, 3, size, size)
    assert latents.shape == (1, g.n_latent, STYLE_DIM)
    assert torch.isfinite(img).all()
    noise = g.make_noise()
    assert [tuple(n.shape) for n in noise] == [tuple(n.shape) for n in g.fixed_noise()]
    assert noise[-1].shape == (1, 1, size, size)


def test_rosinality_channel_tables():
    assert rosinality_channels(2) == {
        4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32, 2048: 16,
    }
    assert rosinality_channels(1)[64] == 256 and rosinality_channels(1)[1024] == 16
    assert GeneratorConfig(size=256, channel_multiplier=1).channel_table() == {
        4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64,
    }


def test_nvidia_channel_table():
    assert nvidia_channels(1024) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    assert nvidia_channels(256, channel_base=16384) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}


def test_channel_multiplier_sets_layer_widths():
    g = Generator(GeneratorConfig(size=64, channel_multiplier=1, style_dim=32, n_mlp=1))
    sd = g.state_dict()
    assert sd["input.input"].shape == (1, 512, 4, 4)
    assert sd["convs.6.conv.weight"].shape == (1, 256, 512, 3, 3)  # 32 -> 64 px, 256 * 1
    assert sd["convs.7.conv.weight"].shape == (1, 256, 256, 3, 3)
    assert sd["to_rgbs.3.conv.weight"].shape == (1, 3, 256, 1, 1)
    assert sd["style.1.weight"].shape == (32, 32)


def test_explicit_channel_table_sets_layer_widths():
    g = Generator(GeneratorConfig(size=16, style_dim=8, n_mlp=1, channels={4: 6, 8: 5, 16: 3}))
    sd = g.state_dict()
    assert sd["input.input"].shape == (1, 6, 4, 4)
    assert sd["conv1.conv.weight"].shape == (1, 6, 6, 3, 3)
    assert sd["convs.0.conv.weight"].shape == (1, 5, 6, 3, 3)
    assert sd["convs.2.conv.weight"].shape == (1, 3, 5, 3, 3)
    assert sd["convs.3.conv.modulation.weight"].shape == (3, 8)


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("size", [100, 48, 4, 0, -8])
def test_size_must_be_power_of_two(size):
    with pytest.raises(ConfigError, match=rf"generator.size={size} must be a (power of two|positive integer)"):
        GeneratorConfig(size=size)


def test_channel_table_must_cover_every_resolution():
    with pytest.raises(ConfigError, match=r"lacks resolutions \[16, 64\]") as info:
        GeneratorConfig(size=64, channels={4: 8, 8: 8, 32: 8})
    assert "[4, 8, 16, 32, 64]" in str(info.value)


@pytest.mark.parametrize("field, value", [("style_dim", 0), ("n_mlp", -1), ("channel_multiplier", 1.5)])
def test_positive_integers_are_checked(field, value):
    with pytest.raises(ConfigError, match=rf"generator.{field}={value}"):
        GeneratorConfig(size=32, **{field: value})


def test_config_dict_round_trip():
    cfg = narrow_config(64)
    again = GeneratorConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown generator key"):
        GeneratorConfig.from_dict({**cfg.to_dict(), "sizee": 64})


def test_forward_rejects_bad_style_shapes(g32):
    with pytest.raises(ValueError, match=r"one or two style codes, got 3"):
        g32([codes(g32)] * 3)
    with pytest.raises(ValueError, match=rf"\[B, {STYLE_DIM}\]"):
        g32([torch.zeros(2, STYLE_DIM + 1)])
    with pytest.raises(ValueError, match=rf"must be \[B, {g32.n_latent}, {STYLE_DIM}\]"):
        g32([torch.zeros(2, g32.n_latent + 1, STYLE_DIM)], input_is_latent=True)
    with pytest.raises(ValueError, match=rf"expected {g32.num_layers} noise maps, got 2"):
        g32([codes(g32)], noise=[None, None])
    with pytest.raises(ValueError, match="truncation_latent"):
        g32([codes(g32)], truncation=0.5)


# --------------------------------------------------------------------------- forward features


@torch.no_grad()
def test_z_goes_through_mapping_network(g32):
    z = codes(g32)
    img_z, lat_z = g32([z], randomize_noise=False, return_latents=True)
    w = g32.get_latent(z)
    img_w, lat_w = g32([w], input_is_latent=True, randomize_noise=False, return_latents=True)
    torch.testing.assert_close(img_z, img_w, rtol=0, atol=0)
    torch.testing.assert_close(lat_z, w[:, None].expand(-1, g32.n_latent, -1), rtol=0, atol=0)
    assert not torch.allclose(lat_z, z[:, None].expand_as(lat_z))  # z != w


@torch.no_grad()
def test_mapping_network_formula(g32):
    """PixelNorm, then n_mlp equalised linear layers (lr_mul 0.01) with fused leaky ReLU."""
    z = codes(g32)
    x = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
    for layer in list(g32.style)[1:]:
        x = F.linear(x, layer.weight * (0.01 / math.sqrt(STYLE_DIM)), layer.bias * 0.01)
        x = F.leaky_relu(x, 0.2) * math.sqrt(2)
    torch.testing.assert_close(g32.get_latent(z), x)


@torch.no_grad()
def test_wplus_input(g32):
    wp = codes(g32, plus=True)
    img, lat = g32([wp], input_is_latent=True, randomize_noise=False, return_latents=True)
    torch.testing.assert_close(lat, wp, rtol=0, atol=0)
    # W+ with identical rows is the same as a single w.
    w = wp[:, 0]
    img_w, _ = g32([w], input_is_latent=True, randomize_noise=False)
    img_rep, _ = g32([w[:, None].repeat(1, g32.n_latent, 1)], input_is_latent=True, randomize_noise=False)
    torch.testing.assert_close(img_w, img_rep, rtol=0, atol=0)
    assert not torch.allclose(img, img_w)  # the other rows matter
    torch.testing.assert_close(g32.synthesize(wp), img, rtol=0, atol=0)


@torch.no_grad()
def test_wplus_z_rows_are_mapped_independently(g32):
    zp = codes(g32, plus=True)
    _, lat = g32([zp], randomize_noise=False, return_latents=True)
    for i in range(g32.n_latent):
        torch.testing.assert_close(lat[:, i], g32.get_latent(zp[:, i]))


@torch.no_grad()
@pytest.mark.parametrize("inject_index", [1, 4, 7])
def test_style_mixing_with_inject_index(g32, inject_index):
    w1, w2 = g32.get_latent(codes(g32, seed=1)), g32.get_latent(codes(g32, seed=2))
    img, lat = g32([w1, w2], input_is_latent=True, inject_index=inject_index, randomize_noise=False,
                   return_latents=True)
    n = g32.n_latent
    torch.testing.assert_close(lat[:, :inject_index], w1[:, None].expand(-1, inject_index, -1), rtol=0, atol=0)
    torch.testing.assert_close(lat[:, inject_index:], w2[:, None].expand(-1, n - inject_index, -1), rtol=0, atol=0)
    img_direct, _ = g32([lat], input_is_latent=True, randomize_noise=False)
    torch.testing.assert_close(img, img_direct, rtol=0, atol=0)
    # z codes are mapped first, then mixed.
    z1, z2 = codes(g32, seed=1), codes(g32, seed=2)
    _, lat_z = g32([z1, z2], inject_index=inject_index, randomize_noise=False, return_latents=True)
    torch.testing.assert_close(lat_z, lat)


@torch.no_grad()
def test_style_mixing_random_index_is_a_valid_crossover(g32):
    w1, w2 = codes(g32, seed=1), codes(g32, seed=2)
    for _ in range(5):
        _, lat = g32([w1, w2], input_is_latent=True, randomize_noise=False, return_latents=True)
        from_first = [torch.equal(lat[:, i], w1) for i in range(g32.n_latent)]
        from_second = [torch.equal(lat[:, i], w2) for i in range(g32.n_latent)]
        k = from_first.index(False)
        assert 1 <= k <= g32.n_latent - 1
        assert all(from_first[:k]) and all(from_second[k:])


@torch.no_grad()
def test_truncation(g32):
    z = codes(g32, batch=3)
    centre = g32.mean_latent(256, seed=0)
    _, lat0 = g32([z], truncation=0.0, truncation_latent=centre, randomize_noise=False, return_latents=True)
    torch.testing.assert_close(lat0, centre[:, None].expand(3, g32.n_latent, -1), rtol=0, atol=0)
    img0, _ = g32([z], truncation=0.0, truncation_latent=centre, randomize_noise=False)
    torch.testing.assert_close(img0[0], img0[2])  # every sample is the centre image
    _, lat_half = g32([z], truncation=0.5, truncation_latent=centre, randomize_noise=False, return_latents=True)
    w = g32.get_latent(z)
    torch.testing.assert_close(lat_half[:, 3], centre + 0.5 * (w - centre))
    _, lat1 = g32([z], truncation=1.0, truncation_latent=centre, randomize_noise=False, return_latents=True)
    torch.testing.assert_close(lat1[:, 0], w, rtol=0, atol=0)


@torch.no_grad()
def test_noise_inputs(g32):
    w = codes(g32, plus=True)
    fixed_a, _ = g32([w], input_is_latent=True, randomize_noise=False)
    fixed_b, _ = g32([w], input_is_latent=True, randomize_noise=False)
    torch.testing.assert_close(fixed_a, fixed_b, rtol=0, atol=0)
    explicit, _ = g32([w], input_is_latent=True, noise=g32.fixed_noise())
    torch.testing.assert_close(explicit, fixed_a, rtol=0, atol=0)

    torch.manual_seed(5)
    rand_a, _ = g32([w], input_is_latent=True, randomize_noise=True)
    rand_b, _ = g32([w], input_is_latent=True, randomize_noise=True)
    assert not torch.allclose(rand_a, rand_b)
    assert not torch.allclose(rand_a, fixed_a)

    gen = torch.Generator().manual_seed(3)
    maps = g32.make_noise(gen)
    other, _ = g32([w], input_is_latent=True, noise=maps)
    again, _ = g32([w], input_is_latent=True, noise=g32.make_noise(torch.Generator().manual_seed(3)))
    torch.testing.assert_close(other, again, rtol=0, atol=0)
    assert not torch.allclose(other, fixed_a)
    # Per-sample noise maps: sample 1 with map set B equals a batch-1 call with set B.
    maps_b = g32.make_noise(torch.Generator().manual_seed(4))
    per_sample = [torch.cat([a, b]) for a, b in zip(maps, maps_b)]
    both, _ = g32([w], input_is_latent=True, noise=per_sample)
    single, _ = g32([w[1:]], input_is_latent=True, noise=maps_b)
    torch.testing.assert_close(both[1:], single, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_noise_strength_zero_ignores_noise():
    g = make_generator(16, noise_strength=0.0)
    w = codes(g)
    a, _ = g([w], input_is_latent=True, randomize_noise=True)
    b, _ = g([w], input_is_latent=True, randomize_noise=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@torch.no_grad()
def test_batch_samples_are_independent(g32):
    w = codes(g32, batch=3, plus=True)
    img, _ = g32([w], input_is_latent=True, randomize_noise=False)
    for i in range(3):
        one, _ = g32([w[i : i + 1]], input_is_latent=True, randomize_noise=False)
        torch.testing.assert_close(img[i : i + 1], one, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_return_latents_and_features(g32):
    z = codes(g32)
    img, none = g32([z], randomize_noise=False)
    assert none is None
    img2, lat = g32([z], randomize_noise=False, return_latents=True)
    assert lat.shape == (2, g32.n_latent, STYLE_DIM)
    img3, feat = g32([z], randomize_noise=False, return_features=True)
    assert feat.shape == (2, g32.channels[32], 32, 32)
    torch.testing.assert_close(img, img2, rtol=0, atol=0)
    torch.testing.assert_close(img, img3, rtol=0, atol=0)
    single, _ = g32(z, randomize_noise=False)  # a bare tensor is one style code
    torch.testing.assert_close(single, img, rtol=0, atol=0)


def test_mean_latent_is_deterministic(g32):
    a = g32.mean_latent(128, seed=7)
    b = g32.mean_latent(128, seed=7)
    c = g32.mean_latent(128, seed=8)
    assert a.shape == (1, STYLE_DIM)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    z = torch.randn(128, STYLE_DIM, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(a, g32.get_latent(z).mean(0, keepdim=True))


@torch.no_grad()
def test_modulated_conv_matches_per_sample_formula():
    """Grouped-conv formulation == one plain conv per sample with its modulated kernel."""
    torch.manual_seed(0)
    for upsample in (False, True):
        mod = ModulatedConv2d(5, 4, 3, STYLE_DIM, upsample=upsample)
        x, style = torch.randn(3, 5, 6, 6), torch.randn(3, STYLE_DIM)
        out = mod(x, style)
        for b in range(3):
            s = mod.modulation(style[b : b + 1])[0]  # [in]
            wgt = mod.weight[0] * mod.scale * s.view(1, 5, 1, 1)  # [out, in, k, k]
            wgt = wgt / torch.sqrt(wgt.pow(2).sum([1, 2, 3], keepdim=True) + 1e-8)
            if upsample:
                ref = F.conv_transpose2d(x[b : b + 1], wgt.transpose(0, 1), stride=2)
                ref = mod.blur(ref)
            else:
                ref = F.conv2d(x[b : b + 1], wgt, padding=1)
            torch.testing.assert_close(out[b : b + 1], ref, rtol=1e-5, atol=1e-5)
        assert out.shape == ((3, 4, 12, 12) if upsample else (3, 4, 6, 6))
    with pytest.raises(ValueError, match=r"expects x \[B, 5, H, W\]"):
        mod(torch.zeros(3, 4, 6, 6), style)


# --------------------------------------------------------------------------- parameter names


ROSINALITY_NAMES = [
    "style.1.weight", "style.1.bias", "input.input", "conv1.conv.weight", "conv1.conv.modulation.weight",
    "conv1.noise.weight", "conv1.activate.bias", "to_rgb1.conv.weight", "to_rgb1.bias",
    "convs.0.conv.blur.kernel", "convs.1.conv.weight", "to_rgbs.0.upsample.kernel", "to_rgbs.0.conv.weight",
    "noises.noise_0", "noises.noise_6",
]


def test_rosinality_parameter_names(g32):
    sd = g32.state_dict()
    missing = [k for k in ROSINALITY_NAMES if k not in sd]
    assert not missing
    assert "latent_avg" not in sd  # non-persistent: rosinality/official keys map 1:1
    assert "convs.1.conv.blur.kernel" not in sd  # only the upsampling convs blur


def test_state_dict_equals_official_decoder_key_list(shared_dir):
    """Names, shapes, dtypes and order of a 256 px, channel_multiplier 2 generator vs the
    decoder entries of the official checkpoint's key list (config A)."""
    path = shared_dir / "conformance" / "keys" / "A.txt"
    expected = [(n[len("decoder."):], s, d) for n, s, d in read_key_list(path) if n.startswith("decoder.")]
    g = Generator(GeneratorConfig(size=256, channel_multiplier=2))
    got = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in g.state_dict().items()]
    assert len(got) == len(expected)
    assert [k for k, _, _ in got] == [k for k, _, _ in expected]
    assert got == expected
    # The fixed FIR kernels have the official values.
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    fir = torch.outer(k, k) / 64 * 4
    torch.testing.assert_close(g.state_dict()["convs.0.conv.blur.kernel"], fir, rtol=0, atol=0)
    torch.testing.assert_close(g.state_dict()["to_rgbs.5.upsample.kernel"], fir, rtol=0, atol=0)
