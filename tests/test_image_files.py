"""One image reader for training and inference: EXIF orientation and float images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.data import PairedImageDataset
from instyle.inference.io import ImageLoadError, load_image


def _rotated_photo(path):
    """A 40x20 image stored sideways with EXIF orientation 6 (display rotated 90° clockwise):
    shown upright it is 20 wide, 40 tall, red on top, blue at the bottom."""
    upright = np.zeros((40, 20, 3), np.uint8)
    upright[:20, :, 0] = 255
    upright[20:, :, 2] = 255
    stored = Image.fromarray(np.rot90(upright, k=1).copy())  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif)
    return upright


def test_training_pairs_apply_exif_orientation_like_inference(tmp_path):
    upright = _rotated_photo(tmp_path / "a.jpg")
    shown = np.asarray(load_image(tmp_path / "a.jpg"))
    assert shown.shape == upright.shape
    ds = PairedImageDataset.from_folders(tmp_path, image_size=32, flip=False)
    x, y = ds.load(0, seed=0)
    # top row red, bottom row blue, as displayed: ([-1, 1] range)
    assert y[0, 0].mean() > 0.8 and y[2, 0].mean() < -0.8
    assert y[2, -1].mean() > 0.8 and y[0, -1].mean() < -0.8


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_a_float_tiff_keeps_its_brightness(tmp_path, scale):
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    Image.fromarray(ramp * scale, mode="F").save(tmp_path / "f.tif")
    img = np.asarray(load_image(tmp_path / "f.tif", mode="L"), dtype=np.float64)
    np.testing.assert_allclose(img, ramp * 255, atol=1.0)
    ds = PairedImageDataset.from_folders(tmp_path, image_size=32, flip=False)
    _, y = ds.load(0, seed=0)
    assert torch.allclose(y[0], torch.from_numpy(ramp * 2 - 1), atol=2 / 255 + 1e-3)


def test_a_float_tiff_outside_any_known_range_is_refused(tmp_path):
    Image.fromarray(np.full((32, 32), -3.0, np.float32), mode="F").save(tmp_path / "neg.tif")
    with pytest.raises(ImageLoadError, match="neg.tif.*range"):
        load_image(tmp_path / "neg.tif")
