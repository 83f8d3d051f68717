#!/usr/bin/env bash
# Create .venv and install instyle with everything its tests and tools use.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# PyTorch first, pinned to the release tested here (any torch>=2.1 works for the library).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[all]"
# fpie (--blend poisson) is a source package whose native build is optional; where it cannot be
# had, setup goes on and its tests skip.
.venv/bin/python -m pip install -q -e ".[poisson]" \
  || echo "setup: fpie unavailable; --blend poisson and its tests will skip" >&2
# System packages for the browser test of the web demo (skipped quietly where apt is unavailable).
if [ -x scripts/setup-browser.sh ]; then bash scripts/setup-browser.sh || echo "setup: browser test dependencies unavailable; that test will skip" >&2; fi
echo "setup: done ($(.venv/bin/python -c 'import torch, instyle; print("torch", torch.__version__, "instyle", instyle.__version__)'))"
