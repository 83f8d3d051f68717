"""Streaming helpers of batch jobs, and `instyle encode` sharded over torchrun processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import pytest
import torch

from instyle.inference.pipeline import BackgroundWriter, prefetch_batches, shard
from instyle.models import get_config
from instyle.models.init import random_psp

from .helpers import rgb


def test_prefetch_keeps_order_and_reports_failures():
    def prepare(i):
        if i % 4 == 3:
            raise ValueError(f"item {i} is bad")
        return torch.full((2,), float(i))

    batches = list(prefetch_batches(list(range(10)), prepare, batch_size=3, errors=(ValueError,)))
    assert [b.items for b in batches] == [[0, 1, 2], [4, 5], [6, 8], [9]]
    assert [f for b in batches for f in b.failures] == [(3, "item 3 is bad"), (7, "item 7 is bad")]
    assert torch.equal(batches[1].tensors[:, 0], torch.tensor([4.0, 5.0]))


def test_prefetch_runs_ahead_of_the_consumer():
    started = []
    ahead = threading.Event()

    def prepare(i):
        started.append(i)
        if len(started) >= 3:
            ahead.set()
        return torch.zeros(1)

    it = prefetch_batches(list(range(8)), prepare, batch_size=1, prefetch=2, workers=1)
    next(it)
    # Batches 1 and 2 get prepared while batch 0 is being consumed (nothing else asks for them).
    assert ahead.wait(10)
    assert len(list(it)) == 7


def test_prefetch_batch_with_only_failures():
    batches = list(prefetch_batches([1], lambda i: (_ for _ in ()).throw(ValueError("x")), 4))
    assert batches[0].tensors is None and batches[0].failures == [(1, "x")]


def test_background_writer_collects_errors_and_bounds_queue():
    written = []
    gate = threading.Event()

    entered = threading.Event()
    submitted = []

    def slow(i):
        entered.set()
        gate.wait(10)
        if i == 2:
            raise OSError("disk full")
        written.append(i)

    def submit_all():
        for i in range(6):
            writer.submit(slow, i, tag=f"f{i}")
            submitted.append(i)

    writer = BackgroundWriter(max_pending=2)
    t = threading.Thread(target=submit_all)
    t.start()
    assert entered.wait(10)  # job 0 runs (held at the gate); jobs 1 and 2 fill the queue
    for _ in range(200):
        if len(submitted) >= 3:
            break
        t.join(0.05)
    t.join(0.3)
    assert t.is_alive() and submitted == [0, 1, 2]  # the fourth submit blocks: the queue is bounded
    gate.set()
    t.join(5)
    writer.close()
    assert written == [0, 1, 3, 4, 5]
    assert [(tag, str(e)) for tag, e in writer.errors] == [("f2", "disk full")]


def test_shard():
    items = list(range(7))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items and parts[0] == [0, 3, 6]
    with pytest.raises(ValueError, match="outside world size"):
        shard(items, 3, 3)


@pytest.mark.slow
def test_encode_under_torchrun_shards_the_inputs(tmp_path):
    torchrun = shutil.which("torchrun", path=str(__import__("pathlib").Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    model_dir = tmp_path / "model"
    random_psp(get_config("tiny"), seed=0, latent_samples=64).save_pretrained(model_dir)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        rgb((64, 64), i).save(photos / f"p{i}.png")
    out = tmp_path / "out"
    r = subprocess.run(
        [torchrun, "--nproc_per_node=2", "--master_port=0", "-m", "instyle.cli.main", "encode", "-c", str(model_dir),
         str(photos), "--out", str(out), "--device", "cpu", "--save-latents"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.glob("p*.png")) == [f"p{i}.png" for i in range(5)]
    counts = [json.loads((out / f"summary_rank{k}.json").read_text())["encoded"] for k in range(2)]
    assert counts == [3, 2]
