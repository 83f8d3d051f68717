"""Deployment: ONNX export, ONNX Runtime / OpenVINO backends and a measured ``auto``.

* :mod:`instyle.export.onnx`: :func:`export_onnx` writes a model's encoder, generator and
  whole model as ONNX graphs with a dynamic batch, checks them against PyTorch and writes
  ``export.json`` (everything a deployer needs without instyle).
* :mod:`instyle.export.backends`: :func:`attach_backend` makes a loaded model's
  ``encode`` / ``decode`` run on ONNX Runtime or OpenVINO, exporting into the cache on
  first use.
* :mod:`instyle.export.probe`: ``--backend auto`` / ``--precision auto`` by a short timed
  probe on this machine, cached per machine, model and batch size.

The ONNX packages are optional (``pip install 'instyle[deploy]'``); importing this package
does not need them.
"""

from __future__ import annotations

from instyle.export.onnx import PARITY_BOUND, ExportError, ExportResult, export_onnx, model_fingerprint

__all__ = ["PARITY_BOUND", "ExportError", "ExportResult", "export_onnx", "model_fingerprint"]
