"""A Gradio theme that loads nothing from the internet: system fonts only."""

from __future__ import annotations

__all__ = ["SYSTEM_FONTS", "MONO_FONTS", "local_theme"]

SYSTEM_FONTS = ("system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")

#: Page tweaks: a visible banner for random-weight models.
CSS = """
.instyle-warning {border: 2px solid #d97706; background: #fffbeb; color: #78350f; border-radius: 8px; padding: 4px 12px;}
"""


def local_theme():
    """``gr.themes.Base`` with system fonts (plain font names never produce ``@import`` rules)."""
    import gradio as gr

    return gr.themes.Base(primary_hue="indigo", font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS))
