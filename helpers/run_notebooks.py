"""Execute the notebooks headless (the main job): ``python -m helpers.run_notebooks``.

Executed copies go to ``outputs/<profile>/notebooks/``, figures to
``outputs/<profile>/figures/<dataset>/``. A notebook that fails stops the run with its error
message (for example how to supply checkpoints without network) and the partly executed copy
is kept for inspection. Each cell has a time limit (``--cell-timeout``): a hung cell fails the
run instead of waiting for ever. Kernels talk over local sockets (IPC), not TCP.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from .config import banner, load_config, remember_start_dir

CELL_TIMEOUT = {"smoke": 300, "demo": 300, "full": 3600}  # seconds; full runs embed whole datasets in one cell


def execute(path: Path, out_dir: Path, timeout: int) -> str | None:
    """Run one notebook into ``out_dir``; returns None or the error to report."""
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="samclip-kernel-") as runtime:
        manager = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(runtime) / "kernel"))
        client = NotebookClient(
            notebook, km=manager, timeout=timeout, resources={"metadata": {"path": str(path.parent)}}
        )
        try:
            client.execute()
            error = None
        except CellExecutionError as exc:
            error = f"{exc.ename}: {exc.evalue}"
        except (CellTimeoutError, DeadKernelError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc} (cell time limit {timeout} s)"
        finally:
            if manager.has_kernel:  # the client does not own a kernel manager it was given: stop it here
                manager.shutdown_kernel(now=False)
    nbformat.write(notebook, out_dir / path.name)
    return error


def run(notebooks: list[Path], out_dir: Path, timeout: int) -> int:
    """Run ``notebooks`` in order into ``out_dir``; 1 at the first failure, else 0."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in notebooks:
        started = time.time()
        print(f"running {path.name} ...", flush=True)
        error = execute(path, out_dir, timeout)
        if error:
            print(f"\n{path.name} stopped: {error}\n(partly executed copy: {out_dir / path.name})", file=sys.stderr)
            return 1
        print(f"  done in {time.time() - started:.0f} s -> {out_dir / path.name}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Execute the notebooks headless (settings: SAMCLIP_* variables).")
    parser.add_argument("--cell-timeout", type=int, default=None, help="seconds per cell (smoke, demo 300; full 3600)")
    parser.add_argument("names", nargs="*", help="notebook name prefixes to run (default: all), e.g. 03 04")
    args = parser.parse_args(argv)
    remember_start_dir()
    config = load_config()
    print(banner(config), flush=True)
    notebooks = sorted((config.root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.names:
        notebooks = [p for p in notebooks if any(p.name.startswith(n) for n in args.names)]
    if not notebooks:
        print(f"no notebooks found in {config.root / 'notebooks'}", file=sys.stderr)
        return 1
    timeout = args.cell_timeout or CELL_TIMEOUT[config.profile]
    return run(notebooks, config.output_dir / "notebooks", timeout)


if __name__ == "__main__":
    raise SystemExit(main())
