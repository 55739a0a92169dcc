"""A careful file downloader: verified, resumable, atomic, one process at a time; remembered hashes.

A download holds a lock on the destination (``<file>.lock``, via filelock), streams into
``<file>.part`` (resumed only from the source that wrote it, see ``http_source``), is
checked against its size and sha256 (or, with no published checksum, the size the server
announced and a ``check`` function), and only then renamed into place, so a file under its final
name is always complete. A file that fails its check is moved to ``<file>.corrupt`` and never
loaded. Sources (URLs or local paths) are tried in order; a cut transfer is retried while it makes
progress. A second process asking for the same file waits for the lock, then finds it verified.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

import requests
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from ..files import unused_name
from .http_source import (
    CHUNK_BYTES,
    DISK_MARGIN_BYTES,
    ChecksumMismatchError,
    DownloadError,
    HttpFetcher,
    NotEnoughDiskError,
    SourceFailed,
    SourceMissing,
    check_disk,
    discard_part,
    read_record,
    record_path,
    write_record,
)
from .stamps import (
    file_sha256,
    is_verified,
    passed_check,
    remember_sha256,
    set_aside,
    sha256_of,
)

__all__ = [
    "CHUNK_BYTES",
    "DISK_MARGIN_BYTES",
    "ChecksumMismatchError",
    "DownloadError",
    "NotEnoughDiskError",
    "SourceFailed",
    "SourceMissing",
    "download_file",
    "file_sha256",
    "is_verified",
    "set_aside",
    "sha256_of",
]


def is_local(source: str) -> bool:
    return urlparse(source).scheme in ("", "file") or Path(source).exists()


def local_path(source: str) -> Path:
    parsed = urlparse(source)
    return Path(parsed.path if parsed.scheme == "file" else source).expanduser()


def _fetch_local(source: str, part: Path, size: int | None, progress: bool) -> int:
    path = local_path(source)
    if not path.is_file():
        raise SourceMissing(f"no file at {path}")
    total = path.stat().st_size
    if size is not None and total != size:
        raise SourceFailed(f"holds {total} bytes, expected {size} (a different file)")
    discard_part(part)
    check_disk(part.parent, total)
    write_record(part, {"source": str(path), "total": total})
    with open(path, "rb") as src, open(part, "wb") as f:
        with tqdm(total=total, unit="B", unit_scale=True, desc=path.name, disable=not progress) as bar:
            for block in iter(lambda: src.read(CHUNK_BYTES), b""):
                f.write(block)
                bar.update(len(block))
    return total


@dataclass
class _Job:
    """One destination and how to accept a file for it."""

    dest: Path
    part: Path
    sha256: str | None
    size: int | None
    check: Callable[[Path], None] | None
    fetcher: HttpFetcher
    retries: int
    max_attempts: int
    backoff: float
    backoff_cap: float
    bad_file: bool = False

    def accept(self, source: str) -> str | None:
        """Move a complete, verified part into place (None), or set it aside and say why."""
        if self.sha256:
            digest = sha256_of(self.part)
            reason = None if digest == self.sha256 else "checksum mismatch"
        else:
            reason = None
            try:
                if self.check:
                    self.check(self.part)
            except (ValueError, RuntimeError) as exc:
                reason = f"failed its check: {exc}"
            digest = sha256_of(self.part)
        record_path(self.part).unlink(missing_ok=True)
        if reason:
            self.bad_file = True
            return f"{source}: {reason} (file kept aside as {set_aside(self.part)})"
        os.replace(self.part, self.dest)
        remember_sha256(self.dest, digest, checked=self.check is not None)
        return None

    def from_source(self, source: str) -> str | None:
        """None once ``dest`` holds a verified copy from ``source``; else what went wrong."""
        stalls = attempts = 0
        while True:
            attempts += 1
            self.fetcher.received = 0
            try:
                if is_local(source):
                    self.fetcher.received = _fetch_local(source, self.part, self.size, self.fetcher.progress)
                else:
                    self.fetcher.fetch(source, self.part, self.size)
                got = self.part.stat().st_size if self.part.exists() else 0
                expected = self.size if self.size is not None else (read_record(self.part) or {}).get("total")
                if expected is None or got == expected:
                    return self.accept(source)
                if got > expected:
                    discard_part(self.part)
                    return f"{source}: sent {got} bytes, more than the {expected} announced"
                error = f"stopped at {got} of {expected} bytes on try {attempts}"
            except SourceMissing as exc:
                return f"{source}: not there ({exc})"
            except SourceFailed as exc:
                return f"{source}: {exc}"
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                error = f"connection failed on try {attempts} ({type(exc).__name__})"  # resumed from the .part
            except requests.RequestException as exc:
                return f"{source}: {type(exc).__name__}: {exc}"
            except OSError as exc:
                return f"{source}: {exc}"
            stalls = 0 if self.fetcher.received else stalls + 1
            if stalls >= self.retries or attempts >= self.max_attempts:
                return f"{source}: {error}; gave up after {attempts} tries ({stalls} in a row without progress)"
            time.sleep(min(self.backoff_cap, self.backoff * 2**stalls))


def _usable(dest: Path, sha256: str | None, size: int | None, check: Callable | None, full: bool) -> bool:
    """Whether ``dest`` already holds the file; with no checksum, ``check`` decides (and is remembered)."""
    if check is None or sha256 or not dest.is_file():
        return is_verified(dest, sha256, size, full=full)
    if size is not None and dest.stat().st_size != size:
        return False
    if not full and passed_check(dest):
        return True
    try:
        check(dest)
    except (ValueError, RuntimeError) as exc:
        print(f"{dest} failed its check ({exc}); moved aside to {set_aside(dest)}.", file=sys.stderr)
        return False
    remember_sha256(dest, sha256_of(dest), checked=True)
    return True


@contextmanager
def _exclusive(dest: Path) -> Iterator[Path]:
    """Hold ``dest``'s lock while downloading; yields the ``.part`` name to write."""
    lock = FileLock(str(dest) + ".lock")
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"Waiting for another process that is downloading {dest.name} ...", file=sys.stderr)
            lock.acquire()
    except (OSError, NotImplementedError) as exc:  # a file system without locks: a private, one-off part
        warnings.warn(f"Cannot lock {dest} ({exc}); downloading to a private temporary file.", stacklevel=3)
        part = unused_name(dest)
        try:
            yield part
        finally:
            discard_part(part)
        return
    try:
        yield dest.with_name(dest.name + ".part")
    finally:
        lock.release()


def download_file(
    sources: list[str],
    dest: Path,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 30.0,
    session: requests.Session | None = None,
    hint: str = "",
    check: Callable[[Path], None] | None = None,
    min_speed: float = 10 * 1024,
    speed_window: float = 60.0,
    max_attempts: int = 30,
    backoff: float = 0.25,
    backoff_cap: float = 30.0,
    full: bool = False,
) -> Path:
    """Fetch ``dest`` from the first source that delivers a verified copy.

    ``sources`` are URLs or local paths, tried in order. A cut transfer resumes from ``dest.part``;
    a source is retried while each try makes progress, giving up after ``retries`` tries in a row
    without progress or ``max_attempts`` in all, waiting ``backoff`` seconds (doubling per stalled
    try, at most ``backoff_cap``) in between. A source slower than ``min_speed`` bytes/s over
    ``speed_window`` seconds is abandoned. With no ``sha256``, ``check(path)`` (raising ValueError or
    RuntimeError) must pass. ``full`` re-hashes an existing ``dest``. Returns ``dest``; raises
    ``ChecksumMismatchError``, ``NotEnoughDiskError`` or ``DownloadError`` (with ``hint`` appended).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _usable(dest, sha256, size, check, full):
        return dest
    with _exclusive(dest) as part, requests.Session() if session is None else nullcontext(session) as http:
        if _usable(dest, sha256, size, check, full=False):  # another process may have finished it meanwhile
            return dest
        fetcher = HttpFetcher(http, timeout, min_speed, speed_window, progress)
        job = _Job(dest, part, sha256, size, check, fetcher, max(1, retries), max_attempts, backoff, backoff_cap)
        failures: list[str] = []
        for source in sources:
            failure = job.from_source(source)
            if failure is None:
                return dest
            failures.append(failure)
    tried = "\n  ".join(failures) or "no sources"
    if job.bad_file:
        expected = f"the expected sha256 {sha256}" if sha256 else "the expected size and structure"
        raise ChecksumMismatchError(
            f"{dest.name}: no source delivered a file with {expected}.\n  {tried}\n"
            f"Bad downloads are moved to {dest.name}.corrupt and never used. Check the mirror, then retry.{hint}"
        )
    raise DownloadError(f"Could not download {dest.name} (network down or every source gone?).\n  {tried}{hint}")
