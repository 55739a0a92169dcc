"""Another commit's tree beside this one, for benchmarks that time this tree against it in one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def baseline_tree(revision: str) -> Iterator[Path]:
    """``revision`` checked out with ``git worktree`` into a scratch folder, removed after (without masking an error
    of the caller's; prune drops the record of a folder already gone)."""
    with tempfile.TemporaryDirectory(prefix="bench_baseline_") as scratch:
        tree = Path(scratch) / "baseline"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), revision], cwd=ROOT, check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
            subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


def run_in_tree(tree: Path, script: str, args: list[str], what: str, env: dict[str, str] | None = None) -> dict:
    """``python -c script *args`` with ``tree``'s own ``helpers`` (PYTHONPATH, cwd; ``env`` added to the environment):
    the JSON object its last line prints, whose ``helpers`` (the imported package's file) must lie in ``tree``.
    ``what`` names the work in the error when the script fails."""
    environment = {**os.environ, "PYTHONPATH": str(tree), **(env or {})}
    command = [sys.executable, "-c", script, *args]
    run = subprocess.run(command, cwd=tree, env=environment, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"Timing {what} of {tree} failed (a revision of 5 Dec 2026 or later?):\n{run.stderr}")
    report = json.loads(run.stdout.strip().splitlines()[-1])
    if not Path(report["helpers"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"The timer imported {report['helpers']}, not {tree}'s helpers: check PYTHONPATH.")
    return report
