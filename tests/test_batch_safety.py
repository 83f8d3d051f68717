"""Batch jobs never lose or overwrite data (issue 13 section 3): output names, output folders
inside input folders, resumable alignment, file modes, full disks and malformed inputs."""

from __future__ import annotations

import os
import stat

import pytest

from instyle.utils.atomic import atomic_path, atomic_write_bytes


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_honour_the_umask_like_open(tmp_path, umask022):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    with atomic_path(tmp_path / "b.png") as tmp:
        tmp.write_bytes(b"y")
    with open(tmp_path / "plain.bin", "wb") as f:
        f.write(b"z")
    for name in ("a.bin", "b.png", "plain.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    os.umask(0o077)
    atomic_write_bytes(tmp_path / "c.bin", b"x")
    assert stat.S_IMODE((tmp_path / "c.bin").stat().st_mode) == 0o600
