"""Paired folders, transforms, flips, bad files, the resumable sharded sampler."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.data import (
    BadFileLog,
    EvalBatchSampler,
    InputTransform,
    PairedImageDataset,
    TrainBatchSampler,
    make_loader,
    pair_folders,
)


def write_image(path, seed: int, size: int = 40, mode: str = "RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def asymmetric(path, value: int, size: int = 32):
    """Left half black, right half ``value`` (flips are visible)."""
    arr = np.zeros((size, size, 3), np.uint8)
    arr[:, size // 2 :] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_pairing_by_relative_stem(tmp_path, caplog):
    for name in ("a.png", "sub/b.jpg", "c.png", ".hidden.png"):
        write_image(tmp_path / "tgt" / name, 1)
    for name in ("a.jpg", "sub/b.png", "d.png", "notes.txt"):
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".txt"):
            (tmp_path / "src" / name).write_text("x")
        else:
            write_image(tmp_path / "src" / name, 2)
    with caplog.at_level(logging.WARNING, logger="instyle.data"):
        pairs = pair_folders(tmp_path / "tgt", tmp_path / "src")
    assert [(s.name, t.name) for s, t in pairs.items] == [("a.jpg", "a.png"), ("b.png", "b.jpg")]
    assert pairs.unmatched_sources == ["d"] and pairs.unmatched_targets == ["c"]
    assert "1 source(s) without target" in caplog.text
    alone = pair_folders(tmp_path / "tgt")
    assert len(alone.items) == 3 and all(s is None for s, _ in alone.items)
    write_image(tmp_path / "other" / "zzz.png", 3)
    with pytest.raises(ValueError, match="names must match"):
        pair_folders(tmp_path / "tgt", tmp_path / "other")
    with pytest.raises(FileNotFoundError):
        pair_folders(tmp_path / "missing")


def test_transforms_ranges_and_modes(tmp_path):
    write_image(tmp_path / "t" / "0.png", 0, size=50)
    write_image(tmp_path / "s" / "0.png", 1, size=50, mode="L")
    ds = PairedImageDataset.from_folders(tmp_path / "t", image_size=32)
    item = ds[0]
    assert item["y"].shape == (3, 32, 32) and item["y"].min() >= -1 and item["y"].max() <= 1
    assert torch.equal(item["x"], item["y"]) and item["bad"] == ()
    # the original: Resize((S, S)) bilinear on the PIL image, ToTensor, Normalize(0.5, 0.5)
    ref = np.asarray(Image.open(tmp_path / "t" / "0.png").convert("RGB").resize((32, 32), Image.BILINEAR))
    np.testing.assert_allclose(item["y"].permute(1, 2, 0).numpy(), ref / 127.5 - 1, atol=1e-6)
    gray = PairedImageDataset.from_folders(tmp_path / "t", tmp_path / "s", image_size=32, source_mode="gray")[0]
    assert gray["x"].shape == (1, 32, 32) and gray["x"].min() >= 0 and gray["x"].max() <= 1
    labels = np.random.default_rng(0).integers(0, 5, (50, 50), dtype=np.uint8)
    Image.fromarray(labels, "L").save(tmp_path / "s" / "0.png")
    lab = PairedImageDataset.from_folders(tmp_path / "t", tmp_path / "s", image_size=25, source_mode="label", label_nc=5)[0]
    assert lab["x"].shape == (5, 25, 25) and torch.equal(lab["x"].sum(0), torch.ones(25, 25))
    with pytest.raises(ValueError, match="left/right"):
        PairedImageDataset.from_folders(tmp_path / "t", tmp_path / "s", source_mode="label", label_nc=5, flip=True)


def test_flip_applied_to_source_and_target_together(tmp_path):
    asymmetric(tmp_path / "t" / "0.png", 255)
    asymmetric(tmp_path / "s" / "0.png", 128)
    ds = PairedImageDataset.from_folders(tmp_path / "t", tmp_path / "s", image_size=32, flip=True)
    flipped = []
    for seed in range(40):
        it = ds[(0, seed)]
        x_flipped = bool(it["x"][0, 0, 0] > it["x"][0, 0, -1])
        y_flipped = bool(it["y"][0, 0, 0] > it["y"][0, 0, -1])
        assert x_flipped == y_flipped
        flipped.append(y_flipped)
        assert torch.equal(ds[(0, seed)]["y"], it["y"])  # same seed, same sample
    assert 5 < sum(flipped) < 35
    no_flip = PairedImageDataset.from_folders(tmp_path / "t", tmp_path / "s", image_size=32, flip=False)
    assert all(no_flip[(0, s)]["y"][0, 0, 0] < no_flip[(0, s)]["y"][0, 0, -1] for s in range(10))


class AddNoise:
    """An InputTransform: seeded noise on the source."""

    def __call__(self, source, generator):
        return source + 0.1 * torch.randn(source.shape, generator=generator)


def test_input_transform_hook_is_seeded(tmp_path):
    write_image(tmp_path / "t" / "0.png", 0)
    assert isinstance(AddNoise(), InputTransform)
    ds = PairedImageDataset.from_folders(tmp_path / "t", image_size=32, input_transform=AddNoise())
    a, b, c = ds[(0, 1)], ds[(0, 1)], ds[(0, 2)]
    assert torch.equal(a["x"], b["x"]) and not torch.equal(a["x"], c["x"])
    assert not torch.equal(a["x"], a["y"])


def test_bad_files_skipped_logged_once_and_counted(tmp_path, caplog):
    for i in range(6):
        write_image(tmp_path / "t" / f"{i}.png", i)
    (tmp_path / "t" / "1.png").write_bytes(b"not an image at all")
    (tmp_path / "t" / "4.png").write_bytes((tmp_path / "t" / "0.png").read_bytes()[:60])  # truncated
    ds = PairedImageDataset.from_folders(tmp_path / "t", image_size=32)
    item = ds[1]
    assert item["index"] == 2 and len(item["bad"]) == 1 and "1.png" in item["bad"][0]
    sampler = EvalBatchSampler(len(ds), batch_size=3)
    bad = BadFileLog()
    with caplog.at_level(logging.WARNING, logger="instyle.data"):
        for _ in range(2):  # two passes: each bad file is logged once
            for batch in make_loader(ds, sampler, workers=2):
                assert batch["x"].shape[0] == 3
                bad.record(batch["bad"])
    assert bad.count == 2
    assert caplog.text.count("skipped unreadable image") == 2
    assert "1.png" in caplog.text and "4.png" in caplog.text


def test_all_files_bad_is_an_error(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"junk")
    with pytest.raises(RuntimeError, match="unreadable"):
        PairedImageDataset.from_folders(tmp_path, image_size=32)[0]


def test_train_sampler_resume_and_sharding():
    full = TrainBatchSampler(20, batch_size=4, seed=3)
    assert full.batches_per_epoch == 5
    stream = iter(full)
    batches = [next(stream) for _ in range(12)]  # crosses two epoch boundaries
    resumed = iter(TrainBatchSampler(20, batch_size=4, seed=3, start_batch=7))
    assert [next(resumed) for _ in range(5)] == batches[7:12]
    epoch0 = [i for b in batches[:5] for i, _ in b]
    assert sorted(epoch0) == list(range(20))  # a permutation per epoch
    assert [i for b in batches[5:10] for i, _ in b] != epoch0  # reshuffled
    # two ranks with batch 2 see exactly the single-process batch of 4, split in halves
    r0 = iter(TrainBatchSampler(20, batch_size=2, seed=3, rank=0, world_size=2))
    r1 = iter(TrainBatchSampler(20, batch_size=2, seed=3, rank=1, world_size=2))
    for b in batches[:6]:
        assert next(r0) + next(r1) == b
    assert TrainBatchSampler(20, 4, seed=4).__iter__().__next__() != batches[0]
    with pytest.raises(ValueError, match="fewer than one batch"):
        TrainBatchSampler(3, batch_size=2, world_size=2)


def test_eval_sampler():
    single = list(EvalBatchSampler(7, batch_size=3))
    assert [[i for i, _ in b] for b in single] == [[0, 1, 2], [3, 4, 5], [6]]
    ranks = [list(EvalBatchSampler(7, batch_size=2, rank=r, world_size=2)) for r in range(2)]
    # several processes: only complete global batches (4), the same count on every rank
    assert [[i for i, _ in b] for b in ranks[0]] == [[0, 1]]
    assert [[i for i, _ in b] for b in ranks[1]] == [[2, 3]]
    assert len(EvalBatchSampler(100, 2, max_batches=3)) == 3


def test_label_sources_in_palette_and_colour_files_read_as_classes(tmp_path):
    from instyle.tasks.seg2face import labels_to_palette

    write_image(tmp_path / "t" / "0.png", 0, size=40)
    labels = np.random.default_rng(1).integers(0, 19, (40, 40), dtype=np.uint8)
    results = []
    for kind in ("index", "palette", "colour"):
        src = tmp_path / f"s_{kind}"
        src.mkdir()
        img = {"index": Image.fromarray(labels, "L"), "palette": labels_to_palette(labels),
               "colour": labels_to_palette(labels).convert("RGB")}[kind]
        img.save(src / "0.png")
        ds = PairedImageDataset.from_folders(tmp_path / "t", src, image_size=40, source_mode="label", label_nc=19)
        results.append(ds.load(0, 0)[0])
    assert torch.equal(results[0].argmax(0), torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
