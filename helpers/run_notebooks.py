"""Execute notebooks 00-04 headless (the main job): ``python -m helpers.run_notebooks``.

Executed copies go to ``outputs/<profile>/notebooks/``, figures to ``outputs/<profile>/figures/``.
A notebook that fails stops the run with its error message (for example how to supply
checkpoints without network) and the partly executed copy is kept for inspection.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from .config import banner, load_config


def run(notebooks: list[Path], out_dir: Path, timeout: int = 3600) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in notebooks:
        started = time.time()
        print(f"running {path.name} ...", flush=True)
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(
            notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        try:
            client.execute()
        except CellExecutionError as exc:
            nbformat.write(notebook, out_dir / path.name)
            print(
                f"\n{path.name} stopped: {exc.ename}: {exc.evalue}\n(partly executed copy: {out_dir / path.name})",
                file=sys.stderr,
            )
            return 1
        nbformat.write(notebook, out_dir / path.name)
        print(f"  done in {time.time() - started:.0f} s -> {out_dir / path.name}", flush=True)
    return 0


def main() -> int:
    config = load_config()
    print(banner(config), flush=True)
    notebooks = sorted((config.root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print(f"no notebooks found in {config.root / 'notebooks'}", file=sys.stderr)
        return 1
    return run(notebooks, config.output_dir / "notebooks")


if __name__ == "__main__":
    raise SystemExit(main())
