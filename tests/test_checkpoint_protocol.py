"""The checkpoint protocol survives a crash at every filesystem step, twice in a row.

A crash is injected instead of a real signal: every filesystem mutation (mkdir,
rename/replace, unlink, rmdir -- also those inside ``shutil.rmtree`` and the atomic
writers) is counted, and the k-th one raises instead of running; from then on every
further one raises too, so no clean-up code can run, as after a SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest
import torch

from instyle.training.state import RunFolder, capture_rng, read_training_state, write_checkpoint

MUTATIONS = ("mkdir", "replace", "rename", "unlink", "remove", "rmdir")


class Killed(BaseException):
    """Not an Exception: nothing in the code under test may catch it."""


class Crash:
    """Counts filesystem mutations and raises :class:`Killed` from the ``at``-th on."""

    def __init__(self, monkeypatch, at: int | None):
        self.at, self.count, self.dead = at, 0, False
        for name in MUTATIONS:
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))

    def _wrap(self, fn):
        def op(*args, **kwargs):
            if self.dead or self.count == self.at:
                self.dead = True
                raise Killed
            self.count += 1
            return fn(*args, **kwargs)

        return op


def _state(step: int) -> dict:
    """A minimal well-formed training state whose optimizer entry records ``step``."""
    optimizer = {"state": {0: {"dummy": torch.full((3,), float(step))}}, "param_groups": [{"params": [0]}]}
    return {"step": step, "optimizer": optimizer, "rng": [capture_rng()]}


def _save(run: RunFolder, model, step: int) -> None:
    write_checkpoint(run, "latest", model, {"step": step}, _state(step))


def _save_crashing(monkeypatch, run: RunFolder, model, step: int, at: int | None) -> int:
    """Save step ``step`` with a crash at mutation ``at`` (None: no crash). Returns the
    number of mutations a full save performs when it did not crash."""
    with monkeypatch.context() as m:
        crash = Crash(m, at)
        with contextlib.suppress(Killed):
            _save(run, model, step)
        return crash.count


def _resume_step(run: RunFolder) -> int:
    """What ``--resume`` would resume from; fails when it finds nothing."""
    folder = run.resumable()
    assert folder is not None, f"nothing to resume in {sorted(p.name for p in run.checkpoints.iterdir())}"
    model, state = read_training_state(folder)
    assert int(state["optimizer"]["state"][0]["dummy"][0]) == state["step"]
    return int(state["step"])


@pytest.mark.slow
def test_a_checkpoint_survives_two_crashes_at_any_filesystem_step(tmp_path, tiny_psp, monkeypatch):
    base = RunFolder(tmp_path / "base")
    _save(base, tiny_psp, 1)
    _save(base, tiny_psp, 2)  # a run that has replaced its checkpoint once
    n_ops = _save_crashing(monkeypatch, RunFolder(tmp_path / "count"), tiny_psp, 1, None)
    assert n_ops >= 4
    tried = 0
    for first in range(n_ops + 1):
        once = RunFolder(tmp_path / f"once{first}")
        shutil.copytree(base.root, once.root)
        _save_crashing(monkeypatch, once, tiny_psp, 3, first)
        resumed = _resume_step(once)
        assert resumed in (2, 3)
        for second in range(n_ops + 1):
            twice = RunFolder(tmp_path / "twice")
            shutil.rmtree(twice.root, ignore_errors=True)
            shutil.copytree(once.root, twice.root)
            _save_crashing(monkeypatch, twice, tiny_psp, resumed + 1, second)
            assert _resume_step(twice) >= resumed, (first, second)
            tried += 1
    assert tried > 10


def test_resume_picks_the_newest_complete_checkpoint_and_skips_a_corrupt_one(tmp_path, tiny_psp, monkeypatch):
    from instyle.training.state import read_latest_state

    run = RunFolder(tmp_path / "run")
    _save(run, tiny_psp, 1)
    # A crash right after the new folder became complete, before it was renamed in.
    n = _save_crashing(monkeypatch, RunFolder(tmp_path / "count"), tiny_psp, 2, None)
    with monkeypatch.context() as m:
        Crash(m, n - 3)  # the renames and the clean-up are the last mutations
        with pytest.raises(Killed):
            _save(run, tiny_psp, 2)
    folder, _, state = read_latest_state(run)
    assert state["step"] == 2 and folder.name != "latest"
    # Flip one byte of the newest one's model: the previous checkpoint is used instead.
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    folder2, _, state2 = read_latest_state(run)
    assert state2["step"] == 1 and folder2 != folder


def test_a_finished_save_leaves_only_the_named_folder(tmp_path, tiny_psp):
    run = RunFolder(tmp_path / "run")
    for step in (1, 2, 3):
        _save(run, tiny_psp, step)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["latest"]
    assert (run.checkpoint("latest") / "checkpoint.json").is_file()


def test_metrics_are_cut_back_to_the_resumed_step(tmp_path):
    """A killed run logged steps 1-10 (the last line cut off) after its checkpoint at 6."""
    from instyle.training.logger import RunLogger

    path = tmp_path / "metrics.jsonl"
    lines = [f'{{"split": "train", "step": {i}, "loss": 0.5}}' for i in range(1, 11)]
    path.write_text("\n".join(lines) + '\n{"split": "val", "st')
    RunLogger(tmp_path, enabled=True, total_steps=20, start_step=6, progress=False).close()
    assert path.read_text().splitlines() == lines[:6]
