"""A careful file downloader: verified, resumable, atomic; and remembered file hashes.

A download streams into ``<file>.part`` (resumed with an HTTP Range request after an
interruption), is checked against its size and sha256, and only then renamed into place, so a
file under its final name is always complete. A file that fails its checksum is moved to
``<file>.corrupt`` and never loaded. Sources (URLs or local paths) are tried in order.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import requests
from tqdm.auto import tqdm

DISK_MARGIN_BYTES = 200 * 2**20
CHUNK_BYTES = 2**20


class DownloadError(RuntimeError):
    """No source delivered the file; the message lists what each source answered and what to do."""


class ChecksumMismatchError(DownloadError):
    pass


class NotEnoughDiskError(DownloadError):
    pass


class SourceMissing(Exception):
    """A source answered that it does not have the file (HTTP 404/410, no such local file)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES * 8), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The sha256 of ``path``, remembered beside it (keyed by size and mtime) so a large file
    is hashed once; used to identify weights in cache keys."""
    path = Path(path)
    stat = path.stat()
    try:
        stamp = json.loads(_marker(path).read_text())
        if stamp.get("size") == stat.st_size and stamp.get("mtime_ns") == stat.st_mtime_ns and stamp.get("sha256"):
            return stamp["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = sha256_of(path)
    try:
        _marker(path).write_text(json.dumps({"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
    except OSError:
        pass  # a read-only folder: hashed again next time
    return digest


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def is_verified(path: Path, sha256: str | None, size: int | None = None) -> bool:
    """True when ``path`` exists and matches size and sha256; the hash is remembered in a marker
    file (keyed by size and mtime) so a 2.5 GB file is hashed once, not on every run."""
    path = Path(path)
    if not path.is_file():
        return False
    stat = path.stat()
    if size is not None and stat.st_size != size:
        return False
    if sha256 is None:
        return True
    stamp = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        if json.loads(_marker(path).read_text()) == stamp:
            return True
    except (OSError, ValueError):
        pass
    if sha256_of(path) != sha256:
        return False
    try:
        _marker(path).write_text(json.dumps(stamp))
    except OSError:
        pass  # a read-only folder (e.g. a shared mirror) still verifies, just not remembered
    return True


def is_local(source: str) -> bool:
    return urlparse(source).scheme in ("", "file") or Path(source).exists()


def local_path(source: str) -> Path:
    parsed = urlparse(source)
    return Path(parsed.path if parsed.scheme == "file" else source).expanduser()


def _check_disk(folder: Path, needed: int | None) -> None:
    if not needed:
        return
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_MARGIN_BYTES:
        raise NotEnoughDiskError(
            f"Not enough free disk in {folder}: {needed / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free. "
            "Free some space or set SAMCLIP_CHECKPOINT_DIR to a larger disk (on Colab, a Drive folder)."
        )


def _write_stream(chunks, part: Path, mode: str, total: int | None, initial: int, label: str, progress: bool) -> None:
    try:
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=initial,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                disable=not progress,
            ) as bar,
        ):
            for chunk in chunks:
                f.write(chunk)
                bar.update(len(chunk))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NotEnoughDiskError(
                f"The disk filled up while writing {part}. The partial file is kept and the download resumes "
                "once space is free (or set SAMCLIP_CHECKPOINT_DIR to a larger disk)."
            ) from exc
        raise


def _fetch_local(source: str, part: Path, progress: bool) -> None:
    path = local_path(source)
    if not path.is_file():
        raise SourceMissing(f"no file at {path}")
    _check_disk(part.parent, path.stat().st_size)
    with open(path, "rb") as f:
        _write_stream(iter(lambda: f.read(CHUNK_BYTES), b""), part, "wb", path.stat().st_size, 0, path.name, progress)


def _fetch_http(
    url: str, part: Path, session: requests.Session, size: int | None, progress: bool, timeout: float
) -> None:
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start >= size:
        return  # already complete; the checksum decides
    headers = {"Range": f"bytes={start}-"} if start else {}
    with session.get(url, stream=True, timeout=timeout, headers=headers) as response:
        if response.status_code in (404, 410):
            raise SourceMissing(f"HTTP {response.status_code}")
        if response.status_code == 416 and start:
            return  # the server says the part already holds every byte
        response.raise_for_status()
        if start and response.status_code != 206:
            start = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = size if size is not None else (int(length) + start if length else None)
        _check_disk(part.parent, (total - start) if total else None)
        _write_stream(
            response.iter_content(CHUNK_BYTES),
            part,
            "ab" if start else "wb",
            total,
            start,
            part.name.removesuffix(".part"),
            progress,
        )


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
) -> Path:
    """Fetch ``dest`` from the first source that delivers a verified copy.

    ``sources`` are URLs or local paths, tried in order. Interrupted transfers resume from
    ``dest.part`` up to ``retries`` times per source. Returns ``dest``; raises
    ``ChecksumMismatchError``, ``NotEnoughDiskError`` or ``DownloadError`` (with ``hint`` appended).
    """
    dest = Path(dest)
    if is_verified(dest, sha256, size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    corrupt = dest.with_name(dest.name + ".corrupt")
    session = session or requests.Session()
    failures: list[str] = []
    bad_checksum = False
    for source in sources:
        for attempt in range(retries):
            try:
                if is_local(source):
                    _fetch_local(source, part, progress)
                else:
                    _fetch_http(source, part, session, size, progress, timeout)
            except SourceMissing as exc:
                failures.append(f"{source}: not there ({exc})")
                break
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                # includes a transfer cut off mid-way: resume from the .part file
                failures.append(f"{source}: connection failed on try {attempt + 1} ({type(exc).__name__})")
                continue
            except requests.HTTPError as exc:
                failures.append(f"{source}: {exc}")
                break
            if is_verified(part, sha256, size):
                os.replace(part, dest)
                return dest
            got = part.stat().st_size
            if size is not None and got < size:
                failures.append(f"{source}: stopped at {got} of {size} bytes on try {attempt + 1}")
                continue
            os.replace(part, corrupt)
            bad_checksum = True
            failures.append(f"{source}: checksum mismatch (file kept aside as {corrupt})")
            break
    tried = "\n  ".join(failures) or "no sources"
    if bad_checksum:
        raise ChecksumMismatchError(
            f"{dest.name}: no source delivered a file with the expected sha256 {sha256}.\n  {tried}\n"
            f"The bad download was moved to {corrupt} and is not used. Delete it, check the mirror, and retry.{hint}"
        )
    raise DownloadError(f"Could not download {dest.name} (network down or every source gone?).\n  {tried}{hint}")
