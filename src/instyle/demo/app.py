"""The Gradio web app behind ``instyle serve``, and the FastAPI server it is mounted in.

``build_demo`` lays out the page (one tab per capability), ``create_app`` wraps it in a FastAPI
app with a ``/healthz`` readiness route, ``serve`` runs it with uvicorn. This is the only module
of instyle that imports Gradio; analytics and update checks are switched off *before* that import.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

# Must precede the gradio import: no telemetry, no version check, no hub calls.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("GRADIO_SSR_MODE", "False")

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from instyle import __version__  # noqa: E402
from instyle.demo import actions  # noqa: E402
from instyle.demo.editing import EncodingCache, edit_photo, estimate_step_seconds, load_edits, slider_names  # noqa: E402
from instyle.demo.inputs import DemoInputError, UploadArea, read_upload, upload_file  # noqa: E402
from instyle.demo.settings import ServeSettings  # noqa: E402
from instyle.demo.store import ModelStore  # noqa: E402
from instyle.demo.theme import CSS, local_theme  # noqa: E402
from instyle.inference.io import save_image  # noqa: E402

__all__ = ["API_EXAMPLE", "api_example", "build_demo", "create_app", "serve"]

log = logging.getLogger("instyle.serve")

def api_example(settings: ServeSettings | None = None) -> str:
    """Calling the server from Python, with this server's address (shown on its API tab)."""
    settings = settings or ServeSettings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"""\
from gradio_client import Client, handle_file

client = Client("http://{host}:{settings.port}/")
image, network_input, latent_npy = client.predict(
    None,                          # model: None = the server's default
    handle_file("face.jpg"),       # the photo
    False,                         # align the face first
    api_name="/reconstruct",
)
"""


#: The API example for the default address (docs/demo.md shows it).
API_EXAMPLE = api_example()

#: Tabs for task inputs: title, input label and how the input is given.
TASK_TABS = {
    "sketch2face": ("Sketch → face", "a sketch (dark lines on white)", "sketch"),
    "seg2face": ("Label map → face", "a label map (class-index or palette PNG)", "labels"),
    "super_resolution": ("Super-resolution", "a low-resolution face", "image"),
    "inpainting": ("Inpainting", "a face with the region to fill painted white", "paint"),
    "frontalization": ("Frontalization", "a face photo (any pose)", "image"),
    "image2image": ("Image → image", "an input image", "image"),
}


#: Output images: shown large, with download/fullscreen but no "share" button (it would upload elsewhere).
VIEW = {"height": 256, "buttons": ["download", "fullscreen"]}


class OutputDir:
    """Files the server hands out (latents, GIFs), in a private temp folder; old ones are pruned
    and the folder is removed by :meth:`close` (the server calls it when it stops)."""

    def __init__(self, max_age_s: float = 3600.0):
        self.root = Path(tempfile.mkdtemp(prefix="instyle-serve-"))
        self.max_age_s = max_age_s
        self._lock = threading.Lock()

    def new(self, filename: str) -> Path:
        """A fresh path ``<root>/<unique>/<filename>`` (the visitor downloads it under ``filename``)."""
        self._prune()
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        return folder / filename

    def close(self) -> None:
        """Remove the folder and everything in it (safe to call more than once)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def _prune(self) -> None:
        now = time.time()
        with self._lock:
            for folder in self.root.iterdir():
                try:
                    if now - folder.stat().st_mtime > self.max_age_s:
                        for f in folder.iterdir():
                            f.unlink()
                        folder.rmdir()
                except OSError:
                    pass


#: Inputs whose values name files on the server.
_FILE_INPUTS = (gr.Image, gr.ImageEditor, gr.File, gr.Gallery)


class _UploadsOnlyBlocks(gr.Blocks):
    """``gr.Blocks`` that checks every file an event's inputs name *before* Gradio acts on it.

    Gradio hashes and copies a named file into its cache before any handler runs (and under
    ``mount_gradio_app`` its own "was this uploaded?" check is skipped), so a client naming
    ``/etc/passwd``, ``/dev/zero`` or a URL would have it read, on the event loop. Here only
    uploads of this server pass (:meth:`UploadArea.check_payload`, no file is opened);
    everything else gets the one message :data:`~instyle.demo.inputs.NOT_AN_UPLOAD`.
    """

    uploads: UploadArea | None = None

    async def preprocess_data(self, block_fn, inputs, *args, **kwargs):
        if self.uploads is not None:
            for block, value in zip(block_fn.inputs, inputs):
                try:
                    self.uploads.check_payload(value, file_slot=isinstance(block, _FILE_INPUTS))
                except DemoInputError as e:
                    raise gr.Error(str(e), duration=30, print_exception=False) from None
        return await super().preprocess_data(block_fn, inputs, *args, **kwargs)


def _guard(fn: Callable) -> Callable:
    """Turn input problems into a message on the page and anything else into a short notice
    (the traceback goes to the server log, never to the visitor)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DemoInputError as e:
            raise gr.Error(str(e), duration=30, print_exception=False) from None
        except gr.Error:
            raise
        except torch.OutOfMemoryError:
            raise gr.Error("The server ran out of memory for this request; please try a smaller input later.") from None
        except Exception:
            log.exception("request failed")
            raise gr.Error("Something went wrong on the server; the details are in its log.", print_exception=False) from None

    return wrapper


def _mode_for(entry) -> str | None:
    """PIL mode uploads are read in: label-map models keep palette / index images as they are,
    everything else becomes RGB (transparent pixels over white)."""
    return None if entry.model.input_nc > 3 else "RGB"


def _stem(payload, default: str) -> str:
    """A safe file stem for downloads, from the visitor's file name."""
    try:
        found = upload_file(payload)
    except DemoInputError:
        found = None
    stem = Path(found[1]).stem if found else default
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:64] or default


def _header(store: ModelStore, settings: ServeSettings) -> str:
    rows = "\n".join(
        f"| {d['name']} | {d['family']} | {d['iterations']} | {d['task']} | {d['input_channels']} × {d['input_size']}² "
        f"| {d['output_size']}² | {d['n_styles']} |"
        for d in store.describe()
    )
    return (
        "# instyle: pixel2style2pixel\n"
        "Encode a face photo, sketch or label map into StyleGAN2's W+ space and decode it back.\n\n"
        "| model | family | iterations | task | input | output | styles |\n|---|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Uploads: PNG, JPEG or WebP, at most {settings.max_upload_mb:g} MB and "
        f"{settings.max_pixels / 1e6:g} megapixels."
    )


RANDOM_WARNING = (
    "**This server runs a model with RANDOM weights: {names}.** "
    "It is not a trained pSp model, so its outputs are abstract textures, not faces. Start the "
    "server with `instyle serve --checkpoint psp_ffhq_encode.pt` for real results."
)


def _random_names(store: ModelStore) -> str:
    return ", ".join(d["name"] for d in store.describe() if d["random_weights"])


def build_demo(store: ModelStore, settings: ServeSettings | None = None, outputs: OutputDir | None = None) -> gr.Blocks:
    """The page: one tab per capability. Model calls share one queue with ``settings.concurrency`` slots."""
    settings = settings or ServeSettings()
    outputs = outputs or OutputDir()
    ui = _Ui(store, settings, {"concurrency_limit": settings.concurrency, "concurrency_id": "model", "preprocess": False})
    with _UploadsOnlyBlocks(title="instyle: pSp demo", analytics_enabled=False, delete_cache=(900, 3600)) as demo:
        # The upload area needs the page (its cache folder and the files it handed out).
        demo.uploads = UploadArea(
            demo.GRADIO_CACHE, settings.max_upload_bytes, known=lambda p: any(p in s for s in demo.temp_file_sets)
        )
        h = _Handlers(store, settings, outputs, demo.uploads)
        gr.Markdown(_header(store, settings))
        if store.any_random:
            warning = RANDOM_WARNING.format(names=_random_names(store))
            gr.Markdown(warning, elem_classes=["instyle-warning"], elem_id="random-weights-warning")
        _reconstruct_tab(ui, h)
        for task in store.tasks:
            if task in TASK_TABS and task != "inversion":
                _task_tab(ui, h, task)
        _mix_tab(ui, h)
        _interpolation_tab(ui, h)
        _edit_tab(ui, h)
        _api_tab(settings)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    return demo


class _Ui:
    """What every tab needs: the model dropdown, the server's limits and the shared-queue
    limits of model calls."""

    def __init__(self, store: ModelStore, settings: ServeSettings, limits: dict):
        self.store, self.settings, self.limits = store, settings, limits

    def model_choice(self, task: str | None = None, label: str = "Model"):
        names = self.store.names_for(task)
        return gr.Dropdown(choices=names, value=names[0], label=label, interactive=len(names) > 1)


class _Handlers:
    """The event handlers of every tab. Payloads arrive unprocessed (``preprocess=False``): every
    upload is read through :meth:`_read`, which accepts only this server's uploads."""

    def __init__(self, store: ModelStore, settings: ServeSettings, outputs: OutputDir, uploads: UploadArea):
        self.store, self.settings, self.outputs, self.uploads = store, settings, outputs, uploads
        self.edits = load_edits(settings.directions)
        self.edit_names = slider_names(self.edits)
        self.encodings = EncodingCache()  # the Edit tab re-uses the encoding of the same upload

    def _read(self, payload, what: str, mode: str | None = "RGB"):
        return read_upload(payload, what, self.settings, mode=mode, uploads=self.uploads)

    def _latent_file(self, enc, stem: str, meta=None) -> str:
        # named as `instyle encode --save-latents` names it: <name>.npy, or .npz where the
        # encoding carries more (its family's extra, a meta)
        path = self.outputs.new(f"{stem}{enc.file_suffix(meta)}")
        return str(actions.write_latent(enc, path, meta))

    def _png(self, img, stem: str = "image") -> str:
        # Handing Gradio a finished file (written atomically) rather than a PIL image: Gradio
        # rewrites PIL outputs in place under a content hash, so two requests with identical
        # outputs could truncate the file while the other's client downloads it.
        return str(save_image(img, self.outputs.new(f"{stem}.png")))

    @_guard
    def reconstruct(self, model_name, photo, align, progress=gr.Progress()):  # noqa: B008 (Gradio's API)
        entry = self.store.get(model_name)
        image = self._read(photo, "a face photo")
        if align:
            progress(0.1, desc="aligning the face")
            image = actions.align(image, size=actions.photo_size(entry.model))
        progress(0.3, desc=_encoding(entry))
        r = actions.reconstruct(entry.model, image)
        return self._png(r.output), self._png(r.input, "input"), self._latent_file(r.encoding, _stem(photo, "image"))

    @_guard
    def task_run(self, model_name, payload, progress=gr.Progress()):  # noqa: B008 (Gradio's API)
        entry = self.store.get(model_name)
        what = TASK_TABS.get(entry.task, ("", "an input image", ""))[1]
        progress(0.3, desc=_encoding(entry))
        r = actions.reconstruct(entry.model, self._read(payload, what, mode=_mode_for(entry)))
        drawn = isinstance(payload, dict) and "composite" in payload  # editor canvases have no file name
        stem = entry.task if drawn else _stem(payload, entry.task)
        return self._png(r.output), self._png(r.input, "input"), self._latent_file(r.encoding, stem)

    @_guard
    def preview_labels(self, model_name, payload):
        if upload_file(payload) is None:
            return None
        entry = self.store.get(model_name)
        x = actions._prepare(entry.model, self._read(payload, "a label map", mode=None))[0].cpu()
        return self._png(actions.input_preview(x, entry.task), "input")

    @_guard
    def mix(self, model_name, photo, n_outputs, layers, blend, alpha, seed, truncation, progress=gr.Progress()):  # noqa: B008 (Gradio's API)
        entry = self.store.get(model_name)
        n = int(n_outputs)
        if not 1 <= n <= self.settings.max_mix_outputs:
            raise DemoInputError(f"number of outputs must be between 1 and {self.settings.max_mix_outputs}, got {n}")
        progress(0.1, desc=_encoding(entry))
        latent, offsets = actions.encode_image(entry.model, self._read(photo, "a face photo", mode=_mode_for(entry)))
        images = actions.mix(
            entry.model,
            latent,
            n,
            layers=str(layers or "").strip() or None,
            alpha=float(alpha) if blend else None,
            seed=int(seed),
            truncation=float(truncation),
            offsets=offsets,
            progress=lambda k: progress((k, n), desc=f"rendering variant {k}/{n}", unit="image"),
        )
        return [(self._png(im, f"variant_{k + 1}"), f"variant {k + 1}") for k, im in enumerate(images)]

    @_guard
    def interpolate(self, model_name, photo_a, photo_b, frames, progress=gr.Progress()):  # noqa: B008 (Gradio's API)
        entry = self.store.get(model_name)
        steps = int(frames)
        if not 2 <= steps <= self.settings.max_frames:
            raise DemoInputError(f"number of frames must be between 2 and {self.settings.max_frames}, got {steps}")
        progress(0.05, desc=_encoding(entry, "photo A"))
        w_a, off_a = actions.encode_image(entry.model, self._read(photo_a, "photo A", mode=_mode_for(entry)))
        progress(0.15, desc=_encoding(entry, "photo B"))
        w_b, off_b = actions.encode_image(entry.model, self._read(photo_b, "photo B", mode=_mode_for(entry)))
        images = actions.interpolate(
            entry.model, w_a, w_b, steps, None if off_a is None else (off_a, off_b),
            progress=lambda k: progress((k, steps), desc=f"rendering frame {k}/{steps}", unit="frame"),
        )
        gif = actions.write_animation(images, self.outputs.new("interpolation.gif"))
        frames_out = [(self._png(im, f"frame_{k:02d}"), f"λ = {1 - k / (steps - 1):.2f}") for k, im in enumerate(images)]
        return frames_out, str(gif), str(gif)

    @_guard
    def edit(self, model_name, photo, refine, steps, extra, progress=gr.Progress(), *values):  # noqa: B008 (Gradio's API)
        entry = self.store.get(model_name)
        n = int(steps)
        if refine != "none" and not 1 <= n <= self.settings.max_refine_steps:
            raise DemoInputError(f"refinement steps must be between 1 and {self.settings.max_refine_steps}, got {n}")
        image = self._read(photo, "a face photo")
        progress(0.05, desc=_encoding(entry) + (f", then {refine} for {n} steps" if refine != "none" else ""))
        on_step = lambda k, loss: progress((k, n), desc=f"{refine}: step {k}/{n}, loss {loss:.4f}", unit="step")  # noqa: E731
        r = edit_photo(entry.model, image, self.edits, dict(zip(self.edit_names, values)), extra or "", refine, n,
                       cache=self.encodings, on_step=on_step)
        if r.refine_seconds:
            gr.Info(f"{refine}: {n} steps in {r.refine_seconds:.1f} s ({r.refine_seconds / n:.2f} s per step); "
                    "further edits of this photo re-use it")
        before, after = self._png(r.before, "reconstruction"), self._png(r.after, "edited")
        stem = _stem(photo, "photo")
        return before, after, self._latent_file(r.encoding, f"{stem}_{r.name}", meta=r.meta)


def _encoding(entry, what: str = "") -> str:
    """What a request is doing while it encodes (shown in the tab's progress)."""
    steps = f" ({entry.iterations} iterations)" if entry.iterations > 1 else ""
    return f"encoding {what + ' ' if what else ''}with {entry.name}{steps}"


def _reconstruct_tab(ui: _Ui, h: _Handlers) -> None:
    with gr.Tab("Reconstruct"):
        with gr.Row():
            with gr.Column():
                model = ui.model_choice()
                photo = gr.Image(type="filepath", label="Face photo", sources=["upload", "clipboard"], elem_id="rec-input", height=320)
                align = gr.Checkbox(label="Align face first (FFHQ crop; needs dlib)", value=False)
                run = gr.Button("Reconstruct", variant="primary", elem_id="rec-run")
            with gr.Column():
                out = gr.Image(type="pil", format="png", label="Reconstruction", elem_id="rec-output", interactive=False, **VIEW)
                seen = gr.Image(type="pil", format="png", label="Network input", interactive=False, **VIEW)
                npy = gr.File(label="W+ latent (.npy, float32 [n_styles, style_dim])", elem_id="rec-latent")
        run.click(h.reconstruct, [model, photo, align], [out, seen, npy], api_name="reconstruct", **ui.limits)


def _task_input(task: str, what: str, kind: str):
    """The input of a task tab: a drawing canvas for sketches, a paintable photo for inpainting,
    else an upload box."""
    if kind == "sketch":
        return gr.ImageEditor(
            type="filepath",
            label="Draw a sketch, or upload one",
            value={"background": _blank(256), "layers": [], "composite": None},
            brush=gr.Brush(colors=["#000000"], default_color="#000000", color_mode="fixed"),
            canvas_size=(256, 256),
            format="png",
            elem_id=f"task-{task}-input",
        )
    if kind == "paint":
        return gr.ImageEditor(
            type="filepath",
            label="Upload a face, then paint the region to fill in white",
            brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed"),
            format="png",
            elem_id=f"task-{task}-input",
        )
    return gr.Image(
        type="filepath",
        label=what[0].upper() + what[1:],
        image_mode=None,
        sources=["upload", "clipboard"],
        elem_id=f"task-{task}-input",
    )


def _task_tab(ui: _Ui, h: _Handlers, task: str) -> None:
    title, what, kind = TASK_TABS[task]
    with gr.Tab(title):
        with gr.Row():
            with gr.Column():
                t_model = ui.model_choice(task)
                t_in = _task_input(task, what, kind)
                t_run = gr.Button("Generate", variant="primary", elem_id=f"task-{task}-run")
            with gr.Column():
                t_out = gr.Image(
                    type="pil", format="png", label="Output", interactive=False,
                    elem_id=f"task-{task}-output", **VIEW,
                )
                t_seen = gr.Image(
                    type="pil", format="png", label="Network input", interactive=False,
                    elem_id=f"task-{task}-seen", **VIEW,
                )
                t_npy = gr.File(label="W+ latent (.npy)", elem_id=f"task-{task}-latent")
        if kind == "labels":
            t_in.upload(h.preview_labels, [t_model, t_in], [t_seen], preprocess=False, api_name=False)
        t_run.click(h.task_run, [t_model, t_in], [t_out, t_seen, t_npy], api_name=task, **ui.limits)


def _mix_tab(ui: _Ui, h: _Handlers) -> None:
    settings = ui.settings
    with gr.Tab("Style mixing"):
        with gr.Row():
            with gr.Column():
                m_model = ui.model_choice()
                m_photo = gr.Image(type="filepath", label="Input", sources=["upload", "clipboard"], image_mode=None, elem_id="mix-input", height=320)
                m_n = gr.Slider(1, settings.max_mix_outputs, value=min(4, settings.max_mix_outputs), step=1, label="Number of outputs")
                m_layers = gr.Textbox(
                    label="Layers taken from random styles (0-based, e.g. 8-13; empty = 8 to the last)",
                    placeholder="8-13",
                )
                with gr.Row():
                    m_blend = gr.Checkbox(label="Blend instead of replace", value=False)
                    m_alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="α (weight of the random style)")
                with gr.Row():
                    m_seed = gr.Number(value=0, precision=0, label="Seed")
                    m_trunc = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Truncation ψ (1 = none)")
                m_run = gr.Button("Mix styles", variant="primary", elem_id="mix-run")
            with gr.Column():
                m_out = gr.Gallery(label="Variants", columns=4, format="png", elem_id="mix-output", buttons=["download", "fullscreen"])
        m_run.click(
            h.mix, [m_model, m_photo, m_n, m_layers, m_blend, m_alpha, m_seed, m_trunc], [m_out], api_name="mix", **ui.limits
        )


def _interpolation_tab(ui: _Ui, h: _Handlers) -> None:
    settings = ui.settings
    with gr.Tab("Interpolation"):
        with gr.Row():
            with gr.Column():
                i_model = ui.model_choice()
                with gr.Row():
                    i_a = gr.Image(type="filepath", label="Photo A", sources=["upload", "clipboard"], image_mode=None, elem_id="interp-a")
                    i_b = gr.Image(type="filepath", label="Photo B", sources=["upload", "clipboard"], image_mode=None, elem_id="interp-b")
                i_n = gr.Slider(2, settings.max_frames, value=min(8, settings.max_frames), step=1, label="Frames")
                i_run = gr.Button("Interpolate", variant="primary", elem_id="interp-run")
            with gr.Column():
                i_frames = gr.Gallery(label="Frames (A → B)", columns=4, format="png", elem_id="interp-frames", buttons=["download", "fullscreen"])
                i_gif = gr.Image(type="filepath", label="Animation", format="gif", interactive=False, elem_id="interp-gif", **VIEW)
                i_file = gr.File(label="GIF download")
        i_run.click(h.interpolate, [i_model, i_a, i_b, i_n], [i_frames, i_gif, i_file], api_name="interpolate", **ui.limits)


def _edit_tab(ui: _Ui, h: _Handlers) -> None:
    """The "Edit" tab: a slider per loaded direction, typed named edits, optional refinement."""
    settings = ui.settings
    with gr.Tab("Edit"):
        if not h.edits:
            gr.Markdown("No edit directions loaded: start the server with `--direction age.pt` (repeatable).")
        with gr.Row():
            with gr.Column():
                choices = ui.store.names_for("inversion") or ui.store.names
                e_model = gr.Dropdown(choices=choices, value=choices[0], label="Model", interactive=len(choices) > 1)
                e_photo = gr.Image(type="filepath", label="Photo", sources=["upload", "clipboard"], image_mode=None, elem_id="edit-input")
                sliders = [gr.Slider(-5.0, 5.0, value=0.0, step=0.25, label=n) for n in h.edit_names]
                e_extra = gr.Textbox(label="More edits (e.g. ganspace:54,7,8=20; sefa:0=3; one may be a strip: age=-3..3:7)", placeholder="ganspace:54,7,8=20")
                default_steps, info = _refine_defaults(ui.store, choices[0], settings)
                with gr.Row():
                    e_refine = gr.Radio(["none", "optimize", "pti"], value="none", label="Refine first")
                    e_steps = gr.Slider(
                        1, settings.max_refine_steps, value=default_steps, step=1, label="Refinement steps", info=info,
                        elem_id="edit-steps",
                    )
                e_run = gr.Button("Edit", variant="primary", elem_id="edit-run")
            with gr.Column():
                e_before = gr.Image(type="filepath", label="Reconstruction", interactive=False, **VIEW)
                e_after = gr.Image(type="filepath", label="Edited", interactive=False, elem_id="edit-output", **VIEW)
                e_npy = gr.File(label="Edited W+ latent (.npy)", elem_id="edit-latent")
        e_run.click(h.edit, [e_model, e_photo, e_refine, e_steps, e_extra, *sliders], [e_before, e_after, e_npy], api_name="edit", **ui.limits)


def _refine_defaults(store: ModelStore, name: str, settings: ServeSettings) -> tuple[int, str]:
    """Refinement steps offered first -- a few on the CPU, 50 on a GPU -- and the expected time
    per step on this server (one generator pass timed at start, see :func:`estimate_step_seconds`)."""
    entry = store.get(name)
    on_cpu = store.device.type == "cpu"
    steps = min(5 if on_cpu else 50, settings.max_refine_steps)
    per_step = estimate_step_seconds(entry.model)
    if per_step != per_step:  # no average latent to time with
        return steps, "each step renders and back-propagates the generator"
    return steps, (f"about {per_step:.2f} s per step on this server ({store.device.type}): {steps} steps ≈ "
                   f"{steps * per_step:.1f} s, 50 steps ≈ {50 * per_step:.0f} s; the first Edit click refines, "
                   "later clicks on the same photo re-use it")


def _api_tab(settings: ServeSettings) -> None:
    with gr.Tab("API"):
        gr.Markdown(
            "This server also answers programs. Readiness: `GET /healthz`. "
            "Python (`pip install gradio_client`):\n\n"
            f"```python\n{api_example(settings)}```\n"
            "Endpoints: `/reconstruct`, `/mix`, `/interpolate`, `/edit` and one per task tab; "
            "the *Use via API* link at the bottom lists their parameters."
        )


def _blank(size: int):
    from PIL import Image

    return Image.new("RGB", (size, size), (255, 255, 255))


def create_app(store: ModelStore, settings: ServeSettings | None = None):
    """FastAPI app: ``GET /healthz`` (JSON readiness) plus the Gradio page mounted at ``/``.

    The app's temporary output folder (``app.state.outputs``) is removed when the server shuts
    down (its lifespan ends: normal exit, Ctrl-C or SIGTERM).
    """
    import fastapi

    settings = settings or ServeSettings()
    outputs = OutputDir()
    demo = build_demo(store, settings, outputs)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            outputs.close()

    app = fastapi.FastAPI(title="instyle serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.outputs = outputs

    @app.get("/healthz")
    def healthz() -> dict:
        return {
            "status": "ok",
            "version": __version__,
            "device": str(store.device),
            "models": store.describe(),
        }

    return gr.mount_gradio_app(
        app,
        demo,
        path="/",
        server_name=settings.host,
        server_port=settings.port,
        footer_links=["api"],
        allowed_paths=[str(outputs.root)],
        show_error=True,
        max_file_size=settings.max_upload_bytes,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        enable_monitoring=False,
        theme=local_theme(),
        css=CSS,
    )


def serve(settings: ServeSettings, store: ModelStore) -> None:
    """Run the server until interrupted (blocking)."""
    import uvicorn

    from instyle.utils.progress import timed

    with timed("building the demo page", "built the demo page"):
        app = create_app(store, settings)
    url = f"http://{settings.host}:{settings.port}/"
    print(f"instyle serve: {url}  (models: {', '.join(store.names)}; device {store.device})", flush=True)
    if store.any_random:
        print(f"instyle serve: serving RANDOM-WEIGHT (untrained) models: {_random_names(store)}", flush=True)
    if not settings.is_loopback:
        print(f"instyle serve: WARNING: listening on {settings.host}: other machines can reach this demo", flush=True)
    try:
        # SIGTERM / Ctrl-C: uvicorn shuts down gracefully (the app's lifespan removes its
        # temporary folder) and then re-raises the signal; other exits end here.
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        app.state.outputs.close()
