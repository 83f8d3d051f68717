#!/usr/bin/env bash
# One call on a GPU machine: environment, conformance, inference, encode, training -> a report.
#
#   benchmarks/device_check.sh prepare               # here, once: fixtures from ../shared into
#                                                    # benchmarks/.device_fixtures (git-ignored, ~30 MB)
#   benchmarks/device_check.sh REPORT_DIR            # on the GPU machine (<= ~6 min)
#   benchmarks/device_check.sh REPORT_DIR --dry-run  # rehearsal on CPU with the tiny config (< 3 min)
#
# Extra options go to `device_check.py run` (--budget SECONDS, --fixtures DIR). Runs on the
# machine's own python (PYTHON=... to choose); wheels placed in benchmarks/.device_fixtures/wheels
# are installed offline into benchmarks/.device_fixtures/site first, for modules the machine lacks.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-python3}"
FIX="$HERE/.device_fixtures"

if [ "${1:-}" = "prepare" ]; then
  shift
  exec "$PY" "$HERE/device_check.py" prepare "$@"
fi
if [ $# -lt 1 ]; then
  echo "usage: $0 prepare [--shared DIR] | $0 REPORT_DIR [--dry-run] [--budget S]" >&2
  exit 2
fi
if ls "$FIX"/wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --no-index --no-deps --target "$FIX/site" "$FIX"/wheels/*.whl \
    || echo "device_check: offline wheel install failed; continuing with what is installed" >&2
  export PYTHONPATH="$FIX/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$HERE/device_check.py" run "$@"
