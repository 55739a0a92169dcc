"""Writing files so that a reader never sees half of one and an interruption loses nothing.

Every file or folder the package writes for later (caches, prepared datasets, exports, checkpoints and their
stamps) is built under an unused name beside its place and renamed into it (``os.replace``, atomic on one file
system); what it replaces is deleted only once the new one is in place.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def unused_name(path: str | Path, suffix: str = ".part", hidden: bool = False) -> Path:
    """A name beside ``path`` that no other process or thread uses (pid and a random token), ending in
    ``suffix``; with ``hidden`` it starts with a dot, so that file browsers and globs skip it."""
    path = Path(path)
    return path.with_name(f"{'.' if hidden else ''}{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def remove(path: Path) -> None:
    """``path`` deleted, a file or a whole folder; nothing when it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".part", hidden: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write a file at: renamed to ``path`` when the block ends, removed
    when it raises (Ctrl-C included). ``with atomic_path(p) as tmp: torch.save(obj, tmp)``."""
    tmp = unused_name(path, suffix, hidden)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        remove(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    """``data`` written to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as tmp, open(tmp, "xb") as out:
        out.write(data)


def write_text(path: str | Path, text: str) -> None:
    """``text`` (UTF-8) written to ``path`` atomically (``atomic_path``)."""
    write_bytes(path, text.encode("utf-8"))


def new_folder_beside(path: str | Path, hidden: bool = True) -> Path:
    """An empty folder under an unused name beside ``path``, to be filled and then moved into place by
    ``replace_folder``. Made as ``mkdir`` makes folders, with the umask's permissions (``tempfile.mkdtemp``'s
    are private, 0700, and what is built there for others to read would stay so)."""
    tmp = unused_name(path, hidden=hidden)
    tmp.mkdir(parents=True)
    return tmp


def replace_folder(tmp: str | Path, folder: str | Path) -> None:
    """``tmp`` becomes ``folder``. What was there is moved aside first and deleted only once the new one is in
    place; when the move fails, it is put back. Only a process killed between the two renames leaves it under
    a hidden ``.<name>.<pid>-<token>.old`` beside ``folder``, never deleted."""
    folder = Path(folder)
    old = unused_name(folder, ".old", hidden=True) if folder.exists() or folder.is_symlink() else None
    if old is not None:
        os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        if old is not None and not folder.exists():
            os.replace(old, folder)
        raise
    if old is not None:
        remove(old)
