"""Randomly corrupted latent, offset and edit files through mix, interpolate and edit.

A few hundred files derived from real ones (``tests/fuzz_latents.py`` writes them, seeded)
run in a separate process under an address-space cap: no traceback, no hang, peak memory
under 2 GB, and the good inputs beside them are always processed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Most resident memory the whole run may reach.
PEAK_LIMIT_MB = 2048
#: Address-space cap of the fuzz process (a safety net for the shared machine; torch's
#: import alone reserves about 1 GB of address space).
ADDRESS_LIMIT = 6 << 30


def _limit() -> None:  # runs in the child, before exec
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_LIMIT, ADDRESS_LIMIT))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_corrupted_latent_files_never_crash_hang_or_allocate(tmp_path):
    seed, n = 0, 240
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_latents", str(tmp_path), str(seed), str(n)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
        preexec_fn=_limit if hasattr(os, "fork") and sys.platform.startswith("linux") else None,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["files"] == n and result["runs"] > 10
    assert not result["failures"], "\n\n".join(result["failures"][:5])
    assert result["peak_rss_mb"] < PEAK_LIMIT_MB, result["peak_rss_mb"]
