"""The temporal-consistency report of a video run: measured, printed, saved.

* **crop motion**: per frame, how far the crop's centre moved (pixels), how much its side
  changed (relative) and how much it turned (degrees) since the previous frame, for the raw
  per-frame quads and the smoothed ones;
* **flicker**: mean absolute frame-to-frame change of the edited (or reconstructed) crop,
  against the same for the source crops (a ratio near 1: the result changes no more
  between frames than the face itself does);
* **reconstruction**: per-frame MSE of the reconstruction against the aligned crop (images
  in [-1, 1]), LPIPS with its weights given, identity similarity with an identity model;
* the frames whose landmarks were interpolated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from instyle.evaluation.identity import build_identity
from instyle.utils.atomic import atomic_path
from instyle.video.track import crop_motion

__all__ = ["build_report", "format_report", "write_plot"]


def _img(folder: Path, name: str) -> np.ndarray:
    with Image.open(folder / name) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0


def _stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(v.mean()), 6), "max": round(float(v.max()), 6)} if len(v) else {"mean": None, "max": None}


def _r(values, digits: int = 5) -> list[float]:
    return [round(float(v), digits) for v in values]


def build_report(*, info, selection, fps, raw_quads, quads, missing, crops: Path, render: Path, results: Path, kind: str,
                 edits, strengths, lpips=None, identity: str | None = None, pti=None, stitch=None, options: dict) -> dict:
    """The report dict (JSON-ready); see the module docstring for what is measured."""
    n = len(selection)
    mse, lp, change_src, change_out = [], [], [0.0], [0.0]
    prev_src = prev_out = None
    sources, recons = [], []
    for k in range(n):
        src = _img(crops, f"{k:06d}.png")
        recon = _img(render, f"recon_{k:06d}.png")
        result = recon if kind == "recon" else _img(results, f"{kind}_{k:06d}.png")
        mse.append(float(np.mean((recon - src) ** 2)))
        if lpips is not None:
            with torch.no_grad():
                t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None]  # noqa: E731
                lp.append(float(lpips(t(recon), t(src))))
        if identity:
            sources.append(Image.open(crops / f"{k:06d}.png").convert("RGB"))
            recons.append(Image.open(render / f"recon_{k:06d}.png").convert("RGB"))
        if prev_src is not None:
            change_src.append(float(np.mean(np.abs(src - prev_src))))
            change_out.append(float(np.mean(np.abs(result - prev_out))))
        prev_src, prev_out = src, result
    ids = None
    if identity:
        ids = build_identity(identity).similarity(recons, sources)
    raw, smooth = crop_motion(raw_quads), crop_motion(quads)
    flicker_src, flicker_out = float(np.mean(change_src[1:])) if n > 1 else 0.0, float(np.mean(change_out[1:])) if n > 1 else 0.0
    report = {
        "clip": info.to_dict(),
        "selection": {"first": selection.first, "stop": selection.stop, "every": selection.every, "frames": n},
        "output": {"frames": n, "fps": f"{fps.numerator}/{fps.denominator}", "audio": info.audio},
        "interpolated_frames": list(missing),
        "quads": {"raw": np.round(raw_quads, 3).tolist(), "smoothed": np.round(quads, 3).tolist()},
        "crop_motion": {
            "raw": {k: _stats(v[1:]) for k, v in raw.items()},
            "smoothed": {k: _stats(v[1:]) for k, v in smooth.items()},
            "per_frame": {"raw_centre": _r(raw["centre"], 3), "smoothed_centre": _r(smooth["centre"], 3)},
        },
        "flicker": {
            "source": round(flicker_src, 6),
            "result": round(flicker_out, 6),
            "ratio": round(flicker_out / flicker_src, 4) if flicker_src > 0 else None,
            "of": kind,
            "per_frame": {"source": _r(change_src), "result": _r(change_out)},
        },
        "reconstruction": {
            "mse": _stats(mse),
            "lpips": _stats(lp) if lp else None,
            "identity": _stats([v for v in ids if v is not None]) if ids else None,
            "per_frame": {"mse": _r(mse, 6), **({"lpips": _r(lp)} if lp else {}), **({"identity": ids} if ids else {})},
        },
        "edits": list(edits),
        "edit_strengths": [_r(row, 4) for row in strengths],
        "pti": pti,
        "stitch": stitch,
        "options": options,
    }
    return report


def format_report(report: dict) -> list[str]:
    """A few printable lines."""
    cm, fl, rec = report["crop_motion"], report["flicker"], report["reconstruction"]
    lines = [
        f"frames: {report['output']['frames']} at {report['output']['fps']} fps, audio: "
        + {"copied": "copied unchanged", "aac": "re-encoded to AAC", None: "none"}[report["output"].get("audio_mode")],
        f"interpolated (no face found): {len(report['interpolated_frames'])} frame(s)"
        + (f" {report['interpolated_frames'][:20]}" if report["interpolated_frames"] else ""),
        f"crop centre motion per frame: raw {cm['raw']['centre']['mean']} px, smoothed {cm['smoothed']['centre']['mean']} px (mean)",
        f"flicker ({fl['of']} vs source crops): {fl['result']} vs {fl['source']} (ratio {fl['ratio']})",
        f"reconstruction MSE: mean {rec['mse']['mean']}, max {rec['mse']['max']}"
        + (f"; LPIPS mean {rec['lpips']['mean']}" if rec["lpips"] else "")
        + (f"; identity mean {rec['identity']['mean']}" if rec["identity"] else ""),
    ]
    if report.get("pti"):
        p = report["pti"]
        lines.append(f"pti: {p['passes']}/{p['passes_asked']} {'steps' if p.get('unit') == 'step' else 'passes'}, loss {p['loss_first']} -> {p['loss_last']}")
    return lines


def _panel(draw: ImageDraw.ImageDraw, box, series: list[tuple[list[float], tuple[int, int, int], str]], title: str) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(160, 160, 160))
    draw.text((x0 + 6, y0 + 4), title, fill=(0, 0, 0))
    top = max([max(v) for v, _, _ in series if v] + [1e-9])
    for j, (values, colour, label) in enumerate(series):
        draw.text((x1 - 150, y0 + 4 + 12 * j), label, fill=colour)
        if len(values) < 2:
            continue
        pts = [
            (x0 + 4 + (x1 - x0 - 8) * i / (len(values) - 1), y1 - 4 - (y1 - y0 - 30) * v / top) for i, v in enumerate(values)
        ]
        draw.line(pts, fill=colour, width=2)
    draw.text((x0 + 6, y1 - 16), f"max {top:.4g}", fill=(90, 90, 90))


def write_plot(report: dict, path: Path, width: int = 640) -> Path:
    """A small PNG: crop-centre motion (raw vs smoothed) and per-frame change (source vs result)."""
    img = Image.new("RGB", (width, 360), "white")
    draw = ImageDraw.Draw(img)
    cm, fl = report["crop_motion"]["per_frame"], report["flicker"]["per_frame"]
    _panel(draw, (4, 4, width - 4, 178), [(cm["raw_centre"], (200, 60, 40), "raw quads"),
                                           (cm["smoothed_centre"], (30, 90, 200), "smoothed quads")],
           "crop centre motion per frame (px)")
    _panel(draw, (4, 182, width - 4, 356), [(fl["source"], (90, 90, 90), "source crops"),
                                             (fl["result"], (30, 150, 60), f"{report['flicker']['of']} crops")],
           "mean frame-to-frame change of the crop")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
