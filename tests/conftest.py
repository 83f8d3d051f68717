"""Shared fixtures: tiny deterministic models and the location of ``../shared``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# One torch thread per test process (and for the subprocesses tests start): the models are
# tiny, and on a small shared machine OpenMP spin-waiting costs more than it gains (the
# non-slow suite measured 231 s with the default threads, 112 s with one, on 2 cores).
# INSTYLE_TEST_THREADS=N sets another count.
_THREADS = int(os.environ.get("INSTYLE_TEST_THREADS", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
torch.set_num_threads(_THREADS)

REPO = Path(__file__).resolve().parents[1]

#: The shared fixtures folder beside the project root (override with INSTYLE_SHARED).
SHARED = Path(os.environ.get("INSTYLE_SHARED", REPO.parent / "shared")).resolve()


def shared_path(*parts: str) -> Path:
    """A path under ``../shared``; skips the calling test with a reason when absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (the shared fixtures beside the project root; set INSTYLE_SHARED to relocate)")
    return p


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return shared_path()


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return shared_path("data", "faces")


@pytest.fixture
def tiny_psp():
    """A tiny randomly initialised pSp (64 px in/out, 64-D styles) in eval mode, seeded."""
    from instyle.models import create_psp

    torch.manual_seed(0)
    model = create_psp("tiny")
    model.set_latent_avg(model.decoder.mean_latent(512, seed=0))
    return model.eval()


@pytest.fixture(scope="module")
def single_thread():
    """Run a test's models on one thread even when ``INSTYLE_TEST_THREADS`` asks for more (the
    benchmark tests time both loops alike); with the default one thread per process it changes
    nothing, so tests that merely want one thread need no mark."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ``--precision auto`` / ``--backend auto`` remember their measurements: tests keep them out of
# the user's cache (tests of the cache itself pass their own file).
os.environ.setdefault("INSTYLE_PROBE_CACHE", os.path.join(tempfile.mkdtemp(prefix="instyle-probe-"), "probe.json"))
