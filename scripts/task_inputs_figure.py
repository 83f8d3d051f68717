"""Draw docs/images/task_inputs.png: the bundled public-domain photo, the sketch
`instyle prepare sketch2face` makes from it, and the approximate label map `instyle prepare
seg2face` draws from its dlib landmarks (in the CelebAMask-HQ palette), side by side.

    python scripts/task_inputs_figure.py [OUT.png]
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from instyle.tasks import get_task
from instyle.tasks.transforms.labels import labels_to_palette_image


def main(out: str = "docs/images/task_inputs.png") -> None:
    photo = Image.open(resources.files("instyle") / "assets" / "astronaut.png").convert("RGB")
    photo = photo.crop((100, 0, 356, 256))  # the face, framed roughly as an FFHQ crop (512 x 512 asset)
    sketch = get_task("sketch2face").make_input_image(photo).convert("RGB")
    labels = get_task("seg2face").make_input_image(photo)
    palette = labels_to_palette_image(np.asarray(labels)).convert("RGB")
    sheet = Image.new("RGB", (3 * 256 + 16, 256), "white")
    for i, img in enumerate((photo, sketch, palette)):
        sheet.paste(img, (i * (256 + 8), 0))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
