"""Writing files so that a reader never sees half of one and an interruption loses nothing.

Every file or folder the package writes for later (caches, prepared datasets, exports, runs, checkpoints and their
stamps) is built under an unused name beside its place and renamed into it (``os.replace``, atomic on one file
system); what it replaces is deleted only once the new one is in place. A path that is a symbolic link is written
through: its target is replaced, the link kept.
"""

from __future__ import annotations

import os
import re
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


def _target(path: str | Path) -> Path:
    """``path``, or where it points when it is a symbolic link (replaced there, the link kept)."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def remove_leftovers(path: str | Path) -> list[Path]:
    """The temporaries beside ``path`` (``.<name>.<pid>-<token>.part`` / ``.old``) that a process killed half way
    left behind, deleted: those of processes that are gone, and this process's own from an earlier interrupted
    call (a notebook cell stopped and run again). Returns what was deleted."""
    path = _target(path)
    pattern = re.compile(rf"\.?{re.escape(path.name)}\.(\d+)-[0-9a-f]{{8}}\.(part|old)")
    gone = []
    for candidate in path.parent.glob(f"*{path.name}.*"):
        match = pattern.fullmatch(candidate.name)
        if match and (int(match[1]) == os.getpid() or not _alive(int(match[1]))):
            remove(candidate)
            gone.append(candidate)
    return gone


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".part", hidden: bool = False) -> Iterator[Path]:
    """A temporary path to write a file at, renamed to ``path`` when the block ends and removed when it raises
    (Ctrl-C included): ``path``'s own file name in a new folder beside it (``unused_name``), so that a writer that
    reads the name writes what it writes at ``path`` (``torch.save`` names its zip records after the file: the
    same bytes; ``numpy.savez`` and ``savefig`` read the suffix). ``with atomic_path(p) as tmp: torch.save(obj,
    tmp)``."""
    path = _target(path)
    folder = unused_name(path, suffix, hidden)
    folder.mkdir()
    try:
        yield folder / path.name
        os.replace(folder / path.name, path)
    finally:
        remove(folder)


def write_bytes(path: str | Path, data: bytes) -> None:
    """``data`` written to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as tmp, open(tmp, "xb") as out:
        out.write(data)


def write_text(path: str | Path, text: str) -> None:
    """``text`` (UTF-8) written to ``path`` atomically (``atomic_path``)."""
    write_bytes(path, text.encode("utf-8"))


def new_folder_beside(path: str | Path, hidden: bool = True) -> Path:
    """An empty folder under an unused name beside ``path`` (what earlier interrupted writes left there removed
    first), to be filled and then moved into place by ``replace_folder``. Made as ``mkdir`` makes folders, with the
    umask's permissions (``tempfile.mkdtemp``'s are private, 0700, and what others should read would stay so)."""
    path = _target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = unused_name(path, hidden=hidden)
    tmp.mkdir()
    return tmp


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """An empty folder beside ``path`` to fill (``new_folder_beside``): it replaces ``path`` when the block ends
    (``replace_folder``) and is removed when the block raises (Ctrl-C included)."""
    tmp = new_folder_beside(path)
    try:
        yield tmp
        replace_folder(tmp, path)
    finally:
        remove(tmp)


def replace_folder(tmp: str | Path, folder: str | Path) -> None:
    """``tmp`` becomes ``folder``. What was there is moved aside first and deleted only once the new one is in
    place; when the move fails, it is put back. Only a process stopped between the two renames, or while the old
    one is deleted, leaves it under a hidden ``.<name>.<pid>-<token>.old``, removed by the next write there."""
    folder = _target(folder)
    old = unused_name(folder, ".old", hidden=True) if folder.exists() else None
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
