"""Shared fixtures: a local HTTP file server, tiny checkpoints, the shared real data."""

from __future__ import annotations

import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n 2: two workers share the cores, one thread each, and
    import torch  # so do the kernels and scripts they start (OpenMP threads that outnumber the cores

    os.environ["OMP_NUM_THREADS"] = "1"  # spin and wait: vit_b's test took 50 s instead of 27 s)
    torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def __getattr__(name: str):
    """``LOOSE_SAM``: SAM's gates opened and few prompt points, so random tiny models return masks, fast.
    Made on first use: the pytest-xdist controller loads this file too, and needs no torch."""
    if name == "LOOSE_SAM":
        from helpers.segmentation import SamSettings

        return SamSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.95)
    raise AttributeError(name)


class QuietServer(ThreadingHTTPServer):
    """A client hanging up on purpose (the download gave up on a fault) is no error to print."""

    def handle_error(self, request, client_address) -> None:
        pass


class FileServer:
    """Serves ``files`` (url path -> bytes) on 127.0.0.1 with HTTP Range support, and injects faults.

    Every request is logged as (path, Range header). Faults, each keyed by url path:
    ``cut_once[p] = n``: the first full request stops after n bytes (a dropped connection);
    ``cuts[p] = [n, ...]``: each request (ranged or not) stops after the next n bytes of its body;
    ``redirects[p] = q``: 302 to q (a loop when q == p); ``html``: a 200 HTML error page;
    ``trickle[p] = (bytes, seconds)``: a slow body, bounded by ``trickle_limit`` seconds per request;
    ``slow[p] = seconds`` per 64 KiB; ``wrong_range``: 206 answers that start at 0 whatever was asked;
    ``ignore_range``: Range requests answered 200 with the whole body; ``etags[p]``: the ETag sent.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_once: dict[str, int] = {}
        self.cuts: dict[str, list[int]] = {}
        self.redirects: dict[str, str] = {}
        self.html: set[str] = set()
        self.trickle: dict[str, tuple[int, float]] = {}
        self.trickle_limit = 10.0
        self.slow: dict[str, float] = {}
        self.wrong_range: set[str] = set()
        self.ignore_range: set[str] = set()
        self.etags: dict[str, str] = {}
        self.log: list[tuple[str, str | None]] = []
        self.closed = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def answer(self, status: int, headers: dict, body: bytes = b"") -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                try:
                    self.serve()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def serve(self) -> None:
                path = self.path
                rng = self.headers.get("Range")
                server.log.append((path, rng))
                if path in server.redirects:
                    return self.answer(302, {"Location": server.redirects[path], "Content-Length": "0"})
                if path in server.html:
                    page = b"<!DOCTYPE html><html><body>Error: please log in</body></html>"
                    return self.answer(200, {"Content-Type": "text/html", "Content-Length": str(len(page))}, page)
                body = server.files.get(path)
                if body is None:
                    return self.answer(404, {"Content-Length": "0"})
                if path in server.ignore_range:
                    rng = None
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(body) and rng:
                    return self.answer(416, {"Content-Length": "0"})
                headers = {"Content-Type": "application/octet-stream"}
                if path in server.etags:
                    headers["ETag"] = server.etags[path]
                if rng:
                    claimed, start = (0, 0) if path in server.wrong_range else (start, start)
                    headers["Content-Range"] = f"bytes {claimed}-{len(body) - 1}/{len(body)}"
                headers["Content-Length"] = str(len(body) - start)
                self.send_response(206 if rng else 200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                cut = server.cut_once.pop(path, None) if not rng else None
                if server.cuts.get(path):
                    cut = start + server.cuts[path].pop(0)
                self.send_body(path, body[start:cut] if cut else body[start:])
                if cut:
                    self.wfile.flush()
                    self.close_connection = True

            def send_body(self, path: str, data: bytes) -> None:
                if path in server.trickle:
                    step, pause = server.trickle[path]
                    deadline = time.monotonic() + server.trickle_limit
                    for i in range(0, len(data), step):
                        if server.closed.is_set() or time.monotonic() > deadline:
                            self.close_connection = True
                            return
                        self.wfile.write(data[i : i + step])
                        self.wfile.flush()
                        time.sleep(pause)
                    return
                if path in server.slow:
                    for i in range(0, len(data), 64 * 1024):
                        if server.closed.is_set():
                            return
                        self.wfile.write(data[i : i + 64 * 1024])
                        self.wfile.flush()
                        time.sleep(server.slow[path])
                    return
                self.wfile.write(data)

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    from helpers.models.tiny import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny_checkpoints"))


@pytest.fixture(scope="session")
def open_clip_bytes() -> bytes:
    """A tiny CLIP state dict in the open_clip layout (``module.`` prefixes), as torch.save writes it."""
    import io

    import torch

    from helpers.models.tiny import build_clip_tiny

    buffer = io.BytesIO()
    torch.save({f"module.{k}": v for k, v in build_clip_tiny().state_dict().items()}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoints):
    from helpers.models.loading import load_clip, load_sam
    from helpers.models.tiny import TINY_SAM

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
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def registry_restored():
    """Tests may register checkpoints; the global registry is put back as it was after each."""
    from helpers.checkpoints.registry import REGISTRY

    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)


# Started first under pytest-xdist, so that no long test is left for the end while the other worker idles
# (the two groups below go first by themselves: xdist orders work by the number of tests in it).
SLOW_FIRST = ("tests/test_notebook_flow.py", "tests/test_package_layout.py::test_wheel", "tests/test_demo_models.py")


def pytest_collection_modifyitems(items) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(SLOW_FIRST))  # stable: the order is kept otherwise


def work_unit(nodeid: str) -> str:
    """What one pytest-xdist worker runs in a row: the notebooks in order (each reads what the one before
    wrote: checkpoints, the prepared dataset, the cache), Ray's tests together (one Ray instance), any
    other test alone."""
    if nodeid.startswith("notebooks/"):
        return "notebooks"
    if nodeid.startswith("tests/test_distributed.py"):
        return "ray"
    return nodeid


@pytest.hookimpl(optionalhook=True)  # pytest -p no:xdist: no such hook to check it against
def pytest_xdist_make_scheduler(config, log):
    """``pytest -n N`` schedules by ``work_unit`` (xdist's ``xdist_group`` marks do not reach the node ids
    of pytest 9 in pytest-xdist 3.8, so grouping is done here)."""
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnits(config, log)
