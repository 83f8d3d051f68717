"""The ONNX export and backend tests (``tests/onnx_runtimes/``), run in a child pytest process.

ONNX Runtime and OpenVINO load native thread pools into the process that uses them. With
them in the suite's process, pytest is killed by SIGSEGV (exit 139) a few modules later, so
they run apart: the same marker expression (``-m "not slow"`` keeps the fast loop fast),
their own report in the assertion message when anything fails.

What is known of the crash (root cause open):

* It reproduces with the modules of a full run up to ``test_demo.py`` in their order, with
  ``tests/onnx_runtimes/test_backends.py`` where ``test_backends.py`` used to be
  (``INSTYLE_ONNX_CHILD=1 python -X faulthandler -m pytest -v tests/test_alignment.py
  tests/onnx_runtimes/test_backends.py tests/test_batch_safety.py ... tests/test_data.py
  tests/test_demo.py``, 12 to 45 min on 2 loaded cores): twice out of twice, as in the two
  full runs before, at ``test_demo.py::test_gradio_is_imported_only_by_the_web_app``, which
  starts a Python subprocess. ``test_backends.py`` with ``test_demo.py`` alone passes, and so does a script
  that uses both runtimes and then starts 30 subprocesses.
* ``faulthandler`` prints nothing, although its SIGSEGV handler is still installed after
  both runtimes load and run: the fault is where the handler cannot run (e.g. a native
  thread overflowing its stack) or the process is killed otherwise. A native stack (``gdb
  -batch -ex run -ex "thread apply all bt" --args python -m pytest ...``) is the next step.
* Under gdb the main thread "received SIGSEGV" inside ``wait4`` (``os.waitpid`` on that
  subprocess): a signal the kernel forced, not a faulting instruction. The likely cause,
  found then: compiling an OpenVINO model replaces the calling thread's signal alternate
  stack (``sigaltstack``) with one of its own (11568 bytes) and freeing it restores the
  previous one, so models freed in another order than LIFO leave the main thread's alternate
  stack pointing into a freed model's memory (two models compiled, then freed first-in
  first-out: the stack left is the first model's). The next signal whose handler runs on
  the alternate stack (faulthandler's own SIGSEGV handler, ...) cannot be delivered and the
  kernel kills the process with SIGSEGV, silently. Not yet fixed (e.g. save and restore the
  thread's ``sigaltstack`` around OpenVINO compile / free, or compile and free OpenVINO
  models on one dedicated thread); until then the child process stays.
* Not the cause: the backends' reference cycles (``model.backend`` <-> ``OnnxBackend.model``,
  a lambda over ``self`` in ``GraphSession``), which kept native sessions alive until the
  cycle collector ran. They are gone (``test_a_dropped_model_frees_its_native_sessions_...``)
  and the crash reproduced the same without them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_onnx_export_and_backend_cases_pass_in_a_child_process(request):
    markexpr = request.config.getoption("markexpr") or ""
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "onnx_runtimes"), "-q", "-rfE", "-p", "no:cacheprovider", "-n", "0"]
    if markexpr:
        cmd += ["-m", markexpr]
    env = {**os.environ, "INSTYLE_ONNX_CHILD": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    summary = r.stdout.strip().splitlines()[-1:] if r.stdout.strip() else []
    print(*summary)  # the child's own count, shown with -rP / in the captured output
    assert r.returncode == 0 or (r.returncode == 5 and markexpr), f"exit {r.returncode}\n{r.stdout[-8000:]}\n{r.stderr[-2000:]}"
    assert "passed" in r.stdout or r.returncode == 5
