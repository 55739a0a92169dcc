"""Another commit's tree beside this one, for benchmarks that time this tree against it in one run."""

from __future__ import annotations

import subprocess
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
