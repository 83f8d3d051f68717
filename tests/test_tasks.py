"""Task presets and their degradations: registry, loss weights, SR, masks, labels, sketches."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from instyle.interop.keymaps import task_for_dataset_type
from instyle.tasks import LOSS_LAMBDAS, get_task, list_tasks
from instyle.tasks.transforms import (
    CELEBAMASK_PALETTE,
    LabelError,
    degrade_resolution,
    downsample,
    labels_from_image,
    labels_from_landmarks,
    labels_to_onehot,
    labels_to_palette_image,
    palette_to_labels,
    pencil_sketch,
    random_stroke_mask,
    resize_labels,
    triangle_mask,
)
from instyle.training import TrainConfig, get_preset
from instyle.utils.config import ConfigError

TASKS = ["frontalization", "image2image", "inpainting", "inversion", "seg2face", "sketch2face", "super_resolution"]


def astronaut(size: int = 256) -> Image.Image:
    with resources.as_file(resources.files("instyle") / "assets" / "astronaut.png") as p:
        return Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def psnr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return 10 * np.log10(255.0**2 / np.mean((a - b) ** 2))


def block_labels(h=32, w=32, label_nc=19, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, label_nc, (h // 8, w // 8)), np.ones((8, 8), dtype=np.int64))


# ---------------------------------------------------------------- registry


def test_registry_lists_all_tasks_and_rejects_unknown_names():
    assert list_tasks() == TASKS
    with pytest.raises(ConfigError, match="available tasks: .*sketch2face"):
        get_task("sketch2photo")
    with pytest.raises(ConfigError, match="no option"):
        get_task("inversion", factors=(2,))


#: ``dataset_type`` of the original's ``configs/data_configs.py`` and the task it trains.
OFFICIAL_DATASET_TYPES = {
    "ffhq_encode": "inversion",
    "ffhq_frontalize": "frontalization",
    "celebs_sketch_to_face": "sketch2face",
    "celebs_seg_to_face": "seg2face",
    "celebs_super_resolution": "super_resolution",
}


def test_official_dataset_types_map_to_presets():
    for dataset_type, name in OFFICIAL_DATASET_TYPES.items():
        assert get_task(task_for_dataset_type(dataset_type)).name == name
    # the one rule for the others (the pSp and the e4e/ReStyle readers once disagreed)
    assert task_for_dataset_type("something_custom") == "image2image"
    assert task_for_dataset_type("afhq_wild_encode") == task_for_dataset_type(None) == "inversion"


# The original's published training commands (README of pixel2style2pixel).
PUBLISHED = {
    "inversion": {"lpips_lambda": 0.8, "l2_lambda": 1, "id_lambda": 0.1},
    "frontalization": {
        "lpips_lambda": 0.08, "l2_lambda": 0.001, "lpips_lambda_crop": 0.8, "l2_lambda_crop": 0.01,
        "id_lambda": 1, "w_norm_lambda": 0.005,
    },
    "sketch2face": {"lpips_lambda": 0.8, "l2_lambda": 1, "id_lambda": 0, "w_norm_lambda": 0.005},
    "seg2face": {"lpips_lambda": 0.8, "l2_lambda": 1, "id_lambda": 0, "w_norm_lambda": 0.005},
    "super_resolution": {"lpips_lambda": 0.8, "l2_lambda": 1, "id_lambda": 0.1, "w_norm_lambda": 0.005},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_loss_weights_follow_the_published_commands(name):
    task = get_task(name)
    expected = {k: float(PUBLISHED[name].get(k, 0.0)) for k in LOSS_LAMBDAS}
    assert dict(task.loss) == expected
    cfg = TrainConfig.from_dict(dict(get_preset(name).overrides))  # accepted as the trainer's config
    assert (cfg.optim_name, cfg.learning_rate, cfg.batch_size, cfg.objective.start_from_latent_avg) == ("ranger", 1e-4, 8, True)
    assert {k: float(getattr(cfg.objective, k)) for k in LOSS_LAMBDAS} == expected
    assert (cfg.task, cfg.input_nc) == (name, task.input_nc)


def test_channels_and_options():
    assert (get_task("sketch2face").input_nc, get_task("sketch2face").label_nc) == (1, 1)
    assert (get_task("seg2face").input_nc, get_task("seg2face").label_nc) == (19, 19)
    assert get_task("seg2face", label_nc=11).input_nc == 11  # e.g. Helen
    assert get_task("inpainting", mask_channel=True).input_nc == 4
    assert get_task("super_resolution").factors == (1, 2, 4, 8, 16, 32)
    with pytest.raises(ConfigError, match="factors"):
        get_task("super_resolution", factors=(3,))
    with pytest.raises(ConfigError, match="mask"):
        get_task("inpainting", mask="circle")


@pytest.mark.parametrize("name", TASKS)
def test_make_pair_shapes_and_ranges(name):
    task = get_task(name, size=64)
    photo = astronaut(64)
    source = None
    if name == "seg2face":
        source = labels_to_palette_image(block_labels(64, 64))
    elif name == "image2image":
        source = photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    x, y = task.make_pair(photo, np.random.default_rng(0), source=source)
    assert x.shape == (task.input_nc, 64, 64) and y.shape == (3, 64, 64)
    assert y.min() >= -1 and y.max() <= 1 and x.dtype == torch.float32
    if name == "sketch2face":
        assert x.min() >= 0 and x.max() <= 1
    if name == "seg2face":
        torch.testing.assert_close(x.sum(0), torch.ones(64, 64))


def test_needs_source_tasks_refuse_to_invent_inputs():
    from instyle.tasks import TaskInputError

    with pytest.raises(TaskInputError, match="instyle prepare image2image"):
        get_task("image2image", size=32).make_pair(astronaut(32), np.random.default_rng(0))


def test_frontalization_flips_the_target_only():
    task = get_task("frontalization", size=32)
    photo = astronaut(32)
    flipped = 0
    for seed in range(8):
        x, y = task.make_pair(photo, np.random.default_rng(seed))
        torch.testing.assert_close(x, task.input_from_image(photo))  # input never flipped
        flipped += bool(torch.equal(y, x.flip(-1)))
    assert 0 < flipped < 8


def test_frontalization_flips_training_inputs_but_not_validation_inputs():
    from types import SimpleNamespace

    from instyle.data import validation_transform

    train_t = get_preset("frontalization").make_input_transform(SimpleNamespace(image_size=32, train_source=None))
    val_t = validation_transform(train_t)
    source = torch.rand(3, 32, 32) * 2 - 1
    outs = [train_t(source, torch.Generator().manual_seed(i)) for i in range(16)]
    assert all(torch.equal(x, source) or torch.equal(x, source.flip(-1)) for x in outs)
    assert 0 < sum(torch.equal(x, source.flip(-1)) for x in outs) < 16
    assert all(torch.equal(val_t(source, torch.Generator().manual_seed(i)), source) for i in range(16))
    # Transforms without training-only randomness are used for validation as they are.
    assert validation_transform(None) is None
    def plain(source, generator):
        return source

    assert validation_transform(plain) is plain


# ---------------------------------------------------------------- super-resolution


def test_sr_x4_size_and_quality():
    photo = astronaut(256)
    small = downsample(photo, 4)
    assert small.size == (64, 64)
    up = {f: degrade_resolution(photo, f) for f in (2, 4, 8, 16)}
    assert all(im.size == (256, 256) for im in up.values())
    values = [psnr(up[f], photo) for f in (2, 4, 8, 16)]
    assert values[1] > 22  # x4 of a 256 px face keeps its structure
    assert values == sorted(values, reverse=True)  # more downsampling, lower PSNR


def test_sr_x1_is_identity_and_resampling_is_pixel_aligned():
    photo = astronaut(64)
    assert np.array_equal(np.asarray(degrade_resolution(photo, 1)), np.asarray(photo))
    # A symmetric blob keeps its centroid through down + up sampling (no half-pixel shift).
    yy, xx = np.mgrid[:128, :128] + 0.5
    blob = np.exp(-((xx - 50.0) ** 2 + (yy - 70.0) ** 2) / (2 * 12.0**2))
    img = Image.fromarray((blob * 255).round().astype(np.uint8))
    for f in (2, 4, 8):
        out = np.asarray(degrade_resolution(img, f), np.float64)
        cy, cx = (out * yy).sum() / out.sum(), (out * xx).sum() / out.sum()
        assert abs(cx - 50.0) < 0.1 and abs(cy - 70.0) < 0.1, (f, cx, cy)


def test_sr_task_draws_factors_and_upsamples_small_inputs():
    task = get_task("super_resolution", size=64, factors=(2, 4))
    rng = np.random.default_rng(0)
    assert {task.pick_factor(rng) for _ in range(50)} == {2, 4}
    assert task.input_from_image(astronaut(16)).shape == (3, 64, 64)


# ---------------------------------------------------------------- inpainting masks


@pytest.mark.parametrize("width", [64, 65])
def test_triangle_mask_is_exactly_symmetric_and_has_the_defined_area(width):
    m = triangle_mask(80, width, apex_y=0.25, base_y=1.0, half_base=0.4)
    assert np.array_equal(m, m[:, ::-1])
    expected = 0.5 * (0.75 * 80) * (0.8 * width)
    assert abs(m.sum() - expected) / expected < 0.03
    rows = np.flatnonzero(m.any(1))
    assert rows[0] >= int(0.25 * 80) - 1 and rows[-1] == 79
    assert m[-1].sum() == pytest.approx(0.8 * width, abs=2)


def test_random_masks_are_seeded_and_vary():
    a = random_stroke_mask(64, rng=np.random.default_rng(1))
    b = random_stroke_mask(64, rng=np.random.default_rng(1))
    c = random_stroke_mask(64, rng=np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.02 < a.mean() < 0.8


def test_inpainting_fill_and_mask_channel():
    task = get_task("inpainting", size=64, mask_channel=True)
    masked = task.make_input_image(astronaut(64))
    x = task.input_from_image(masked)
    mask = task.make_mask()
    assert x.shape == (4, 64, 64)
    assert torch.equal(x[3].bool(), torch.from_numpy(mask))
    assert torch.all(x[:3, torch.from_numpy(mask)] == 1.0)  # white fill = 1 in [-1, 1]


# ---------------------------------------------------------------- label maps


def test_onehot_sums_to_one_and_out_of_range_is_an_error():
    labels = block_labels()
    onehot = labels_to_onehot(labels, 19)
    assert onehot.shape == (19, 32, 32)
    torch.testing.assert_close(onehot.sum(0), torch.ones(32, 32))
    assert torch.equal(onehot.argmax(0), torch.from_numpy(labels))
    bad = labels.copy()
    bad[0, 0] = 19
    with pytest.raises(LabelError, match=r"19 .*outside \[0, 18\]"):
        labels_to_onehot(bad, 19)
    with pytest.raises(LabelError, match="outside"):
        labels_to_onehot(-labels - 1, 19)


def test_nearest_resize_keeps_the_label_set():
    labels = block_labels(64, 64)
    for size in (256, 37, 16):
        out = resize_labels(labels, size)
        assert out.shape == (size, size)
        assert set(np.unique(out)) <= set(np.unique(labels))
    assert set(np.unique(resize_labels(labels, 256))) == set(np.unique(labels))


def test_palette_roundtrip_and_tolerance():
    labels = block_labels()
    img = labels_to_palette_image(labels)
    assert img.mode == "P"
    assert np.array_equal(labels_from_image(img, 19), labels)  # index image
    rgb = np.asarray(img.convert("RGB")).astype(int)
    assert np.array_equal(palette_to_labels(rgb, CELEBAMASK_PALETTE), labels)
    noisy = np.clip(rgb + np.random.default_rng(0).integers(-8, 9, rgb.shape), 0, 255)  # JPEG-like noise
    assert np.array_equal(labels_from_image(Image.fromarray(noisy.astype(np.uint8)), 19), labels)
    with pytest.raises(LabelError, match="not in the 19-class palette"):
        labels_from_image(astronaut(32), 19)


def test_seg_task_reads_label_files_of_any_size():
    task = get_task("seg2face", size=64)
    x = task.input_from_image(labels_to_palette_image(block_labels(32, 32)))
    assert x.shape == (19, 64, 64)
    assert set(x.argmax(0).unique().tolist()) == set(np.unique(block_labels(32, 32)))


def test_landmark_label_map_draws_the_face_parts():
    from instyle.tasks.transforms import CELEBAMASK_CLASSES

    lm = np.zeros((68, 2))
    t = np.linspace(np.pi, 0, 17)
    lm[0:17] = np.stack([100 - 60 * np.cos(t), 110 + 70 * np.sin(t)], 1)  # jaw: a U from (40,110) to (160,110)
    lm[17:22] = np.stack([np.linspace(55, 90, 5), np.full(5, 85.0)], 1)
    lm[22:27] = np.stack([np.linspace(110, 145, 5), np.full(5, 85.0)], 1)
    lm[27:31] = np.stack([np.full(4, 100.0), np.linspace(95, 130, 4)], 1)
    lm[31:36] = np.stack([np.linspace(90, 110, 5), np.full(5, 135.0)], 1)
    for start, cx in ((36, 72.0), (42, 128.0)):
        a = np.linspace(np.pi, -np.pi, 6, endpoint=False)
        lm[start : start + 6] = np.stack([cx + 12 * np.cos(a), 100 + 5 * np.sin(a)], 1)
    a = np.linspace(np.pi, -np.pi, 12, endpoint=False)
    lm[48:60] = np.stack([100 + 25 * np.cos(a), 155 + 10 * np.sin(a)], 1)
    a = np.linspace(np.pi, -np.pi, 8, endpoint=False)
    lm[60:68] = np.stack([100 + 15 * np.cos(a), 155 + 3 * np.sin(a)], 1)
    labels = labels_from_landmarks(lm, (200, 220))
    present = {CELEBAMASK_CLASSES[i] for i in np.unique(labels)}
    expected = {"background", "skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "u_lip", "l_lip", "mouth", "hair"}
    assert expected <= present
    assert CELEBAMASK_CLASSES[labels[100, 72]] == "r_eye" and CELEBAMASK_CLASSES[labels[100, 128]] == "l_eye"
    assert CELEBAMASK_CLASSES[labels[155, 100]] == "mouth" and CELEBAMASK_CLASSES[labels[120, 100]] == "nose"
    assert CELEBAMASK_CLASSES[labels[5, 5]] == "background"


# ---------------------------------------------------------------- sketches


def test_sketch_is_one_channel_with_lines_where_the_photo_has_edges():
    photo = astronaut(256)
    sketch = pencil_sketch(photo)
    assert sketch.mode == "L" and sketch.size == photo.size
    lines = np.asarray(sketch) < 128
    assert 0.01 < lines.mean() < 0.3
    # Strong edges of the (slightly smoothed) photo: the top 20% gradient magnitudes.
    gray = np.asarray(photo.convert("L").filter(ImageFilter.GaussianBlur(1.5)), np.float64)
    gy, gx = np.gradient(gray)
    grad = np.hypot(gx, gy)
    edges = Image.fromarray(((grad > np.percentile(grad, 80)) * 255).astype(np.uint8))
    near_edge = np.asarray(edges.filter(ImageFilter.MaxFilter(7))) > 0  # within 3 px of one
    # Strokes lie along the photo's edges (a dark band beside each), not elsewhere.
    assert near_edge[lines].mean() > 0.9
    assert near_edge[lines].mean() > near_edge.mean() + 0.25
    flat = np.asarray(pencil_sketch(Image.new("RGB", (64, 64), (90, 120, 40))))
    assert flat.min() >= 250  # nothing to draw on a flat image

    x = get_task("sketch2face", size=64).make_input(astronaut(64))
    assert x.shape == (1, 64, 64) and float(x.min()) >= 0 and float(x.max()) <= 1


def test_one_input_preview_for_every_task():
    from instyle.tasks import preview_input
    from instyle.tasks.transforms.labels import CELEBAMASK_PALETTE

    sketch = torch.zeros(1, 4, 4)
    sketch[:, :, 2:] = 1.0  # fed in [0, 1]: black left, white right
    shown = preview_input(sketch, get_task("sketch2face"))
    assert shown.shape == (3, 4, 4) and shown[:, :, :2].max() == -1 and shown[:, :, 2:].min() == 1
    assert torch.equal(preview_input(sketch * 2 - 1), shown)  # no task: one channel is taken as [-1, 1]
    onehot = torch.zeros(19, 4, 4)
    onehot[0], onehot[13, :2] = 1, 1
    onehot[0, :2] = 0
    colours = preview_input(onehot, get_task("seg2face"))
    expected = torch.from_numpy(CELEBAMASK_PALETTE[13].astype(np.float32)) / 127.5 - 1
    torch.testing.assert_close(colours[:, 0, 0], expected)
    assert torch.equal(preview_input(onehot), colours)
    rgb_mask = torch.rand(4, 4, 4) * 2 - 1
    assert torch.equal(preview_input(rgb_mask, get_task("inpainting", mask_channel=True)), rgb_mask[:3])
    photo = torch.rand(3, 4, 4) * 2 - 1
    assert torch.equal(preview_input(photo, get_task("inversion")), photo)


def test_published_checkpoint_table_agrees_with_configs_and_dataset_types():
    """The file table names a dataset type and a registered config; task and size follow."""
    from instyle.interop.loading import published_info
    from instyle.interop.published import list_published

    psp_files = [e.name for e in list_published(family="psp")]
    tasks = {name: published_info(name)["task"] for name in psp_files}
    assert tasks == {  # the pSp README's table of pretrained models
        "psp_ffhq_encode.pt": "inversion",
        "psp_ffhq_frontalization.pt": "frontalization",
        "psp_celebs_sketch_to_face.pt": "sketch2face",
        "psp_celebs_seg_to_face.pt": "seg2face",
        "psp_celebs_super_resolution.pt": "super_resolution",
        "psp_ffhq_toonify.pt": "image2image",
    }
    for name in psp_files:
        info = published_info(name)
        assert info["output_size"] == 1024 and get_task(info["task"]).input_nc == info["input_nc"]
