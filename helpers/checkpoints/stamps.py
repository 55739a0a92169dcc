"""File hashes remembered beside the files, so a 2.5 GB checkpoint is hashed once, not on every run.

``<file>.verified.json`` holds the sha256 with the file's size, mtime and ctime when it was
hashed; any change to one of them (``os.utime`` can restore mtime, never ctime) means hashing
again. ``full=True`` always hashes again. Files inside the installed package (the shipped demo
weights, which are sha256-checked against constants) are never stamped: the package folder is
read-only in many installs; their hashes are remembered for the process only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..files import write_text

HASH_BLOCK_BYTES = 8 * 2**20
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # helpers/: nothing is written here at run time
_IN_PROCESS: dict[tuple[str, int, int, int], dict] = {}  # stamps of files in PACKAGE_DIR, by path and stat


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _in_package(path: Path) -> bool:
    return Path(path).resolve().is_relative_to(PACKAGE_DIR)


def _memory_key(path: Path, stat: os.stat_result) -> tuple[str, int, int, int]:
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _fresh_stamp(path: Path, stat: os.stat_result) -> dict | None:
    """The stamp beside ``path`` if the file is unchanged since: same size, mtime and ctime.

    ctime cannot be set back by ``os.utime``, so an edit that restores size and mtime still shows.
    """
    if _in_package(path):
        return _IN_PROCESS.get(_memory_key(path, stat))
    try:
        stamp = json.loads(_marker(path).read_text())
        now = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        return stamp if (stamp["size"], stamp["mtime_ns"], stamp["ctime_ns"]) == now and stamp["sha256"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remembered_sha256(path: Path, stat: os.stat_result) -> str | None:
    """The sha256 stamped beside ``path``, if the file is unchanged since it was hashed."""
    stamp = _fresh_stamp(path, stat)
    return str(stamp["sha256"]) if stamp else None


def passed_check(path: Path) -> bool:
    """Whether ``path`` passed a structure check (``remember_sha256(checked=True)``) and is unchanged since."""
    stamp = _fresh_stamp(path, path.stat())
    return bool(stamp and stamp.get("checked") is True)


def remember_sha256(path: Path, digest: str, stat: os.stat_result | None = None, checked: bool = False) -> None:
    """Stamp ``path`` with its sha256, and whether it passed a structure check (a read-only folder:
    hashed again next time)."""
    stat = stat or path.stat()
    stamp = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}
    if checked:
        stamp["checked"] = True
    if _in_package(path):
        _IN_PROCESS[_memory_key(path, stat)] = stamp
        return
    try:
        write_text(_marker(path), json.dumps(stamp))
    except OSError:  # a read-only folder: hashed again next time
        pass


def file_sha256(path: str | Path, full: bool = False) -> str:
    """The sha256 of ``path``, remembered beside it (keyed by size, mtime and ctime) so a large file
    is hashed once; ``full`` hashes it again regardless. Used to identify weights in cache keys."""
    path = Path(path)
    stat = path.stat()
    remembered = None if full else remembered_sha256(path, stat)
    if remembered:
        return remembered
    digest = sha256_of(path)
    remember_sha256(path, digest, stat)
    return digest


def is_verified(path: Path, sha256: str | None, size: int | None = None, full: bool = False) -> bool:
    """True when ``path`` exists and matches size and sha256. The hash is remembered in a stamp
    (size, mtime, ctime), so a 2.5 GB file is hashed once, not on every run; ``full=True`` re-hashes."""
    path = Path(path)
    if not path.is_file():
        return False
    if size is not None and path.stat().st_size != size:
        return False
    return sha256 is None or file_sha256(path, full=full) == sha256


def set_aside(path: Path) -> Path:
    """Move a file that failed its check to ``<file>.corrupt``, where nothing loads it."""
    corrupt = path.with_name(path.name.removesuffix(".part") + ".corrupt")
    os.replace(path, corrupt)
    return corrupt
