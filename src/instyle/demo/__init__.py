"""A local web demo and service for pSp models: ``instyle serve`` (needs ``pip install 'instyle[demo]'``).

One tab per capability -- reconstruct (with optional FFHQ alignment), the checkpoint's own
task input (sketch, label map, low-resolution or masked face), style mixing, interpolation --
plus W+ latent downloads, a ``/healthz`` readiness route and Gradio's client API. Nothing is
fetched from outside hosts: analytics and update checks are off and the theme uses system fonts.

Only :mod:`instyle.demo.app` imports Gradio; the other modules (settings, model store, input
checks, the actions behind the tabs) are plain Python and usable without it::

    from instyle.demo import ServeSettings, ModelStore, serve
    serve(ServeSettings(port=7860), ModelStore.from_checkpoints(["psp_ffhq_encode.pt"]))
"""

from __future__ import annotations

from instyle.demo.inputs import DemoInputError
from instyle.demo.settings import ServeSettings
from instyle.demo.store import ModelEntry, ModelStore

__all__ = ["DemoInputError", "ModelEntry", "ModelStore", "ServeSettings", "build_demo", "create_app", "serve"]


def __getattr__(name):
    # Gradio (heavy) is imported only when the web app itself is wanted.
    if name in ("build_demo", "create_app", "serve"):
        from instyle.demo import app

        return getattr(app, name)
    raise AttributeError(f"module 'instyle.demo' has no attribute {name!r}")
