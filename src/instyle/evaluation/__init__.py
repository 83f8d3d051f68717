"""Measuring reconstructions the way the pSp paper does (Table 1) and comparing runs.

* :mod:`~instyle.evaluation.metrics`: MSE, PSNR, SSIM on image tensors.
* :mod:`~instyle.evaluation.identity`: identity similarity (dlib descriptors by default,
  ArcFace/CurricularFace weights by path).
* :mod:`~instyle.evaluation.fid`: FID with user-provided Inception weights.
* :mod:`~instyle.evaluation.report`: ``evaluate`` a model or saved outputs on a folder and
  write JSON + CSV + Markdown reports; ``compare`` two reports.

Heavy optional pieces (dlib, lpips, scipy) are imported on first use.
"""

from instyle.evaluation.metrics import mse, psnr, ssim
from instyle.evaluation.report import compare, evaluate

__all__ = ["compare", "evaluate", "mse", "psnr", "ssim"]
