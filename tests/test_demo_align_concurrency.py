"""Two visitors aligning at once: the dlib detector is not thread-safe, and ``serve
--concurrency 2`` used to die when two aligns ran together (one detector per thread now)."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from instyle.demo.settings import ServeSettings
from instyle.demo.store import ModelEntry, ModelStore

from .conftest import shared_path
from .helpers import free_port, serve_in_thread

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("gradio", reason="the web demo needs the demo extra (pip install 'instyle[demo]')")
    pytest.importorskip("dlib", reason="alignment needs the faces extra (pip install 'instyle[faces]')")

    from instyle.alignment.models import require_dlib
    from instyle.demo.app import create_app
    from instyle.models import create_psp

    try:
        require_dlib()
    except Exception as e:  # the landmark model files ship with face-recognition-models
        pytest.skip(f"dlib models unavailable: {e}")
    torch.manual_seed(0)
    model = create_psp("tiny")
    model.set_latent_avg(model.decoder.mean_latent(256, seed=0))
    store = ModelStore([ModelEntry("tiny", model.eval())])
    settings = ServeSettings(port=free_port(), concurrency=2)
    with serve_in_thread(create_app(store, settings), settings.port) as url:
        yield url


def test_concurrent_aligns_through_the_api(server):
    from gradio_client import Client, handle_file

    photos = sorted(shared_path("data", "faces", "unaligned").glob("*.jpg"))[:4]
    assert len(photos) >= 2

    def reconstruct(photo):
        client = Client(server, verbose=False)
        return client.predict(None, handle_file(str(photo)), True, api_name="/reconstruct")

    with ThreadPoolExecutor(max_workers=len(photos)) as pool:  # every request aligns, two at a time
        results = list(pool.map(reconstruct, photos * 2))
    assert len(results) == 2 * len(photos) and all(r[0] for r in results)
    with urllib.request.urlopen(server + "healthz", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"
