"""Shared fixtures: a local HTTP file server, tiny checkpoints, the shared real data."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers.segmentation import SamSettings

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# SAM's gates opened and few prompt points: random tiny models then return masks, fast
LOOSE_SAM = SamSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.95)


class FileServer:
    """Serves ``files`` (url path -> bytes) on 127.0.0.1 with HTTP Range support.

    ``cut_once[path] = n`` makes the first full request for ``path`` stop after ``n`` bytes
    (a dropped connection); every request is logged with its Range header.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_once: dict[str, int] = {}
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.log.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(body) and rng:
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.cut_once.pop(self.path, None)
                self.wfile.write(body[start:cut] if cut else body[start:])
                if cut:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    from helpers.tiny_models import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny_checkpoints"))


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoints):
    from helpers.models import load_clip, load_sam
    from helpers.tiny_models import TINY_SAM

    return load_sam(TINY_SAM, tiny_checkpoints["sam"]), load_clip(tiny_checkpoints["clip"])


def shared_data(name: str) -> Path:
    """Path of a shared real data set, or skip the test with a message saying why."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (it sits beside the checkout in the team workspace only)")
    return path


@pytest.fixture(autouse=True)
def no_user_checkpoint_settings(monkeypatch):
    """A developer's own SAMCLIP_* checkpoint and precision variables must not leak into the tests."""
    for name in (
        "SAMCLIP_MIRROR",
        "SAMCLIP_SAM_CHECKPOINT",
        "SAMCLIP_CLIP_CHECKPOINT",
        "SAMCLIP_DRIVE_CACHE",
        "SAMCLIP_CHECKPOINT_DIR",
        "SAMCLIP_PRECISION",
    ):
        monkeypatch.delenv(name, raising=False)


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (its naive baselines are the tests' slow references)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
