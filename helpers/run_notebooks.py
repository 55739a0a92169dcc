"""Execute the notebooks headless (the main job): ``python -m helpers.run_notebooks``.

Executed copies go to ``outputs/<profile>/notebooks/``, figures to
``outputs/<profile>/figures/<dataset>/``. A notebook that fails stops the run with its error
message (for example how to supply checkpoints without network) and the partly executed copy
is kept for inspection. Each cell has a time limit (``--cell-timeout``): a hung cell fails the
run instead of waiting for ever. Kernels talk over local sockets (IPC), not TCP.
"""

from __future__ import annotations

import argparse
import collections
import html
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from tqdm.std import Bar

from .config import banner, load_config, remember_start_dir
from .files import write_text

CELL_TIMEOUT = {"smoke": 300, "demo": 300, "full": 3600}  # seconds; full runs embed whole datasets in one cell


def _run_client(client: NotebookClient, timeout: int) -> str | None:
    """Execute the client's notebook; None, or the error to report."""
    try:
        client.execute()
        return None
    except CellExecutionError as exc:
        return f"{exc.ename}: {exc.evalue}"
    except (CellTimeoutError, DeadKernelError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc} (cell time limit {timeout} s)"


def progress_bars_as_text(notebook: nbformat.NotebookNode) -> int:
    """Give each tqdm widget in an executed notebook the text of its last state; returns how many.

    A widget's saved ``text/plain`` (what viewers without widgets show: GitHub, nbviewer, an editor's
    preview) is its first frame, ``0%|          | 0/12``; the widget state nbclient saves holds the
    last one, written back here as ``100%|██████████| 12/12 [00:13<00:00, ...]``."""
    widgets = notebook.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    state = widgets.get("state", {})

    def model(ref: str) -> dict:
        return state.get(str(ref).removeprefix("IPY_MODEL_"), {})

    def text(part: dict) -> str:  # tqdm's HTML, its spaces written as U+2007
        return html.unescape(part["state"].get("value", "")).replace("\u2007", " ")

    count = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            box = model(view.get("model_id", "")) if view else {}
            parts = [model(c) for c in box.get("state", {}).get("children", [])]
            if box.get("model_name") != "HBoxModel" or [p.get("model_name") for p in parts] != [
                "HTMLModel",
                "FloatProgressModel",
                "HTMLModel",
            ]:
                continue  # not tqdm's bar: its description, the bar, the count
            left, bar, right = parts
            if text(left):  # a known total: "desc: 42%|bar| 5/12 [...]"
                done = bar["state"].get("value", 0) / (bar["state"].get("max") or 1)
                output["data"]["text/plain"] = f"{text(left)}|{Bar(min(max(done, 0.0), 1.0), 10)}|{text(right)}"
            else:  # no total: tqdm writes the whole line in the count
                output["data"]["text/plain"] = text(right)
            count += 1
    return count


def _bars_as_text(notebook: nbformat.NotebookNode) -> None:
    """``progress_bars_as_text``, never at the cost of the copy: a widget state it cannot read leaves the text."""
    try:
        progress_bars_as_text(notebook)
    except (AttributeError, KeyError, TypeError, ValueError, ZeroDivisionError):
        pass


def execute(path: Path, out_dir: Path, timeout: int) -> str | None:
    """Run one notebook in a kernel of its own into ``out_dir``; returns None or the error to report."""
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="samclip-kernel-") as runtime:
        manager = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(runtime) / "kernel"))
        client = NotebookClient(
            notebook, km=manager, timeout=timeout, resources={"metadata": {"path": str(path.parent)}}
        )
        try:
            error = _run_client(client, timeout)
        finally:
            if manager.has_kernel:  # the client does not own a kernel manager it was given: stop it here
                manager.shutdown_kernel(now=False)
    _bars_as_text(notebook)
    nbformat.write(notebook, out_dir / path.name)
    return error


# Run before each notebook in a shared kernel: no variable, figure or setting of the notebook before.
_FRESH_NAMESPACE = """%reset -f
import os as _os
import matplotlib.pyplot as _plt
_plt.close("all")
for _name in [n for n in _os.environ if n.startswith("SAMCLIP_")]:
    del _os.environ[_name]
_os.environ.update({env!r})
del _os, _plt, _name
"""


class SharedKernel:
    """One kernel that runs several notebooks in a row, for the tests: a kernel's start-up (the
    imports of torch, CLIP and SAM) costs more than a smoke notebook's work. Before each notebook
    the namespace is reset, figures closed and the ``SAMCLIP_*`` settings set; imported modules stay.
    ``make run`` keeps a fresh kernel per notebook (``execute``)."""

    def __init__(self, folder: Path, timeout: int) -> None:
        self.folder, self.timeout = Path(folder), timeout
        self._runtime = tempfile.TemporaryDirectory(prefix="samclip-kernel-")
        self.manager = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(self._runtime.name) / "k"))

    def __enter__(self) -> SharedKernel:
        self.manager.start_kernel(cwd=str(self.folder))
        return self

    def __exit__(self, *exc) -> None:
        if self.manager.has_kernel:
            self.manager.shutdown_kernel(now=False)
        self._runtime.cleanup()

    def execute(self, path: Path, out_dir: Path, settings: dict[str, str] | None = None) -> str | None:
        """Run ``path`` (from ``folder``) into ``out_dir`` with ``settings`` as its ``SAMCLIP_*``
        variables (default: this process's); returns None or the error to report."""
        notebook = nbformat.read(path, as_version=4)
        settings = {n: v for n, v in os.environ.items() if n.startswith("SAMCLIP_")} if settings is None else settings
        fresh = _FRESH_NAMESPACE.format(env=dict(settings))
        notebook.cells.insert(0, nbformat.v4.new_code_cell(fresh))
        client = NotebookClient(notebook, km=self.manager, timeout=self.timeout)
        client.kc = self.manager.client()
        client.kc.start_channels()
        client.kc.wait_for_ready(timeout=60)
        try:
            error = _run_client(client, self.timeout)
        finally:
            client.kc.stop_channels()
        notebook.cells.pop(0)
        _bars_as_text(notebook)
        nbformat.write(notebook, out_dir / path.name)
        return error


RAN = ".ran.json"  # in outputs/<profile>/notebooks/: each notebook run to its end here, and what it ran with


def run_key(config) -> dict:
    """What a run's outputs depend on, as ``load_config`` reads it (paths resolved, ``auto`` resolved; where the
    weights are fetched from, a mirror or a Drive cache, left out): ``run`` records it, ``run_earlier`` compares it."""

    def text(path: Path | None) -> str | None:
        return str(path) if path else None

    return {
        "root": str(config.root),
        "profile": config.profile,
        "device": str(config.device),
        "sam": config.sam_model,
        "clip": config.clip_model,
        "dataset": config.dataset,
        "classes": list(config.classes),
        "max_images": config.max_images,
        "precision": config.pipeline.precision,
        "data": text(config.data_path),
        "sam_checkpoint": text(config.sam_checkpoint),
        "clip_checkpoint": text(config.clip_checkpoint),
        "finetune_data": text(config.finetune_data),
    }


def run(notebooks: list[Path], out_dir: Path, timeout: int, key: dict | None = None) -> int:
    """Run ``notebooks`` in order into ``out_dir``; 1 at the first failure, else 0. With ``key`` (``run_key``) each
    one that runs to its end is recorded in ``out_dir/.ran.json`` (``run_earlier`` reads it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in notebooks:
        started = time.time()
        print(f"running {path.name} ...", flush=True)
        if key is not None:
            _record(out_dir, path.name[:2], None)
        error = execute(path, out_dir, timeout)
        if error:
            print(f"\n{path.name} stopped: {error}\n(partly executed copy: {out_dir / path.name})", file=sys.stderr)
            return 1
        if key is not None:
            _record(out_dir, path.name[:2], key)
        print(f"  done in {time.time() - started:.0f} s -> {out_dir / path.name}", flush=True)
    return 0


def _ran(out_dir: Path) -> dict:
    try:
        record = json.loads((out_dir / RAN).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _record(out_dir: Path, name: str, key: dict | None) -> None:
    record = _ran(out_dir)
    if key is None:  # running: not to its end (yet)
        record.pop(name, None)
    else:
        record[name] = key
    write_text(out_dir / RAN, json.dumps(record, indent=1))


def stream(command: list[str], cwd: Path, keep: int = 30) -> tuple[int, list[str]]:
    """Run ``command``, printing its output line by line as it comes (a kernel older than ipykernel 6, as Colab's,
    shows nothing a child process writes itself); its exit status and last ``keep`` lines. Ctrl-C stops it too."""
    tail: collections.deque[str] = collections.deque(maxlen=keep)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in child.stdout:
            print(line, end="", flush=True)
            tail.append(line)
        return child.wait(), list(tail)
    except BaseException:
        child.kill()
        child.wait()
        raise
    finally:
        child.stdout.close()


def run_earlier(names: str | list[str]) -> None:
    """Run notebooks ``names`` (e.g. ``"01 02"``) headless, from the first that has not run to its end in this
    checkout with the current settings (``run_key``; the later ones read its outputs); nothing when all have.
    For Colab, where every notebook gets a runtime of its own: the set-up cell of notebook 03 runs 01 and 02 first.
    In a separate process (``python -m helpers.run_notebooks``); RuntimeError with its last lines when one fails."""
    names = [name[:2].zfill(2) for name in (names.split() if isinstance(names, str) else names)]
    config = load_config()
    out_dir = config.output_dir / "notebooks"
    ran, key = _ran(out_dir), run_key(config)
    todo = next((names[i:] for i, name in enumerate(names) if ran.get(name) != key), [])
    if not todo:
        print(
            f"notebooks {' '.join(names)} ran here with these settings already: their outputs are read (to run them "
            f"again: !python -m helpers.run_notebooks {' '.join(names)})."
        )
        return
    print(f"running notebooks {' '.join(todo)} first (this notebook reads their outputs) ...", flush=True)
    status, tail = stream([sys.executable, "-m", "helpers.run_notebooks", *todo], config.root)
    if status:
        raise RuntimeError(
            f"notebook(s) {' '.join(todo)} stopped; the end of their output:\n{''.join(tail)}\nMend that and run this "
            "cell again."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.run_notebooks",
        description="Execute the notebooks headless (settings: SAMCLIP_* variables).",
    )
    parser.add_argument("--cell-timeout", type=int, default=None, help="seconds per cell (smoke, demo 300; full 3600)")
    parser.add_argument("names", nargs="*", help="notebook name prefixes to run (default: all), e.g. 03 04")
    args = parser.parse_args(argv)
    remember_start_dir()
    config = load_config()
    folder = config.root / "notebooks"
    notebooks = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print(
            f"no notebooks in {folder}: they come with the project's checkout (an installed package has none); run "
            "this in the checkout, or set SAMCLIP_HOME to it.",
            file=sys.stderr,
        )
        return 1
    if args.names:
        notebooks = [p for p in notebooks if any(p.name.startswith(n) for n in args.names)]
    if not notebooks:
        print(f"no notebook in {folder} starts with {' or '.join(args.names)}", file=sys.stderr)
        return 1
    print(banner(config), flush=True)
    timeout = args.cell_timeout or CELL_TIMEOUT[config.profile]
    return run(notebooks, config.output_dir / "notebooks", timeout, run_key(config))


if __name__ == "__main__":
    raise SystemExit(main())
