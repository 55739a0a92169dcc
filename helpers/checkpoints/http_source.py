"""One HTTP(S) source of a file: a resumable, validated transfer into a ``.part`` file.

A ``.part`` is resumed only from the source that wrote it: ``<file>.part.json`` records that
source's URL and validators (ETag, Last-Modified, announced size). A resume sends ``Range`` and
``If-Range``; a 206 answer must carry the expected ``Content-Range`` and the same validators,
and a 200 answer to a ``Range`` request starts over. A source that answers with an HTML page,
announces a wrong size, loops on redirects or stays under a speed floor is given up.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import requests
import urllib3
from tqdm.auto import tqdm

from ..files import write_text

CHUNK_BYTES = 2**20
DISK_MARGIN_BYTES = 200 * 2**20


class DownloadError(RuntimeError):
    """No source delivered the file; the message lists what each source answered and what to do."""


class ChecksumMismatchError(DownloadError):
    pass


class NotEnoughDiskError(DownloadError):
    pass


class SourceMissing(Exception):
    """A source answered that it does not have the file (HTTP 404/410, no such local file)."""


class SourceFailed(Exception):
    """A source cannot deliver the right file (redirect loop, HTML page, wrong size, too slow): try the next."""


def check_disk(folder: Path, needed: int | None) -> None:
    """Raise NotEnoughDiskError unless ``needed`` bytes (plus a margin) are free in ``folder``."""
    if not needed:
        return
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_MARGIN_BYTES:
        raise NotEnoughDiskError(
            f"Not enough free disk in {folder}: {needed / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free. "
            "Free some space or set SAMCLIP_CHECKPOINT_DIR to a larger disk (on Colab, a Drive folder)."
        )


def record_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def read_record(part: Path) -> dict | None:
    """What is known about the source that wrote ``part``, or None."""
    try:
        record = json.loads(record_path(part).read_text())
        return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None


def write_record(part: Path, record: dict) -> None:
    write_text(record_path(part), json.dumps(record))


def discard_part(part: Path) -> None:
    """Remove a ``.part`` file and its record."""
    for path in (part, record_path(part)):
        path.unlink(missing_ok=True)


def _validators(response: requests.Response) -> dict:
    etag = response.headers.get("ETag")
    return {"etag": etag, "last_modified": response.headers.get("Last-Modified")}


def _changed(record: dict, now: dict) -> bool:
    """True when a validator both sides know differs."""
    return any(record.get(key) and now.get(key) and record[key] != now[key] for key in ("etag", "last_modified"))


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass
class HttpFetcher:
    """Fetches URLs into ``.part`` files; ``received`` counts the bytes written by the last call.

    ``min_speed`` (bytes/s) over ``speed_window`` seconds is the floor under which a source is
    abandoned; ``timeout`` is the connect and per-read timeout.
    """

    session: requests.Session
    timeout: float = 30.0
    min_speed: float = 10 * 1024
    speed_window: float = 60.0
    progress: bool = True
    received: int = 0

    def fetch(self, url: str, part: Path, size: int | None) -> None:
        """Bring ``part`` as far as the source allows; the caller checks whether it is complete."""
        self.received = 0
        record = read_record(part)
        start = part.stat().st_size if part.exists() else 0
        if start and (record is None or record.get("source") != url or (size is not None and start > size)):
            discard_part(part)  # written by another source (or an older version): never mixed
            start, record = 0, None
        if start and record and record.get("total") is not None and start >= record["total"]:
            return  # complete already; the checksum decides
        for _ in range(2):  # a second time only after a wrong answer to a Range request
            if self._request(url, part, size, start, record or {}):
                return
            discard_part(part)
            start, record = 0, None

    def _request(self, url: str, part: Path, size: int | None, start: int, record: dict) -> bool:
        """One GET; False when the answer to a Range request does not fit the bytes kept."""
        headers = {"Accept-Encoding": "identity"}  # sizes and ranges then count the file's own bytes
        if start:
            headers["Range"] = f"bytes={start}-"
            validator = record.get("etag") if not str(record.get("etag", "")).startswith("W/") else None
            if validator or record.get("last_modified"):
                headers["If-Range"] = validator or record["last_modified"]
        try:
            response = self.session.get(url, stream=True, timeout=self.timeout, headers=headers)
        except requests.TooManyRedirects as exc:
            raise SourceFailed(f"redirect loop ({exc})") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as exc:
            raise SourceFailed(f"unusable URL ({exc})") from None
        with response:
            if response.status_code in (404, 410):
                raise SourceMissing(f"HTTP {response.status_code}")
            if response.status_code == 416 and start:
                return False  # the server does not have the bytes we think we have
            try:
                response.raise_for_status()
            except requests.HTTPError as exc:
                raise SourceFailed(str(exc)) from None
            validators = _validators(response)
            if start and response.status_code == 206:
                match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
                total = None if not match or match[3] == "*" else int(match[3])
                if not match or int(match[1]) != start or _changed(record, validators):
                    return False
                total = total if total is not None else record.get("total")
                if total is not None and (total != record.get("total", total) or total != (size or total)):
                    return False
            else:
                start = 0  # a 200 answer (or none to a Range request): the whole file from the start
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            if size is not None and total is not None and total != size:
                raise SourceFailed(f"serves a file of {total} bytes, expected {size} (a different file)")
            chunks = _read_chunks(response)
            first = next(chunks, b"")
            if not start and "html" in response.headers.get("Content-Type", "") and _looks_like_html(first):
                raise SourceFailed("answered with an HTML page (an error or login page?), not the file")
            check_disk(part.parent, (total - start) if total is not None else None)
            write_record(part, {"source": url, "total": total if total is not None else size, **validators})
            self._write(first, chunks, part, start, total if total is not None else size)
        return True

    def _write(self, first: bytes, chunks: Iterator[bytes], part: Path, start: int, total: int | None) -> None:
        label = part.name.removesuffix(".part")
        window_start, window_bytes = time.monotonic(), 0
        try:
            with (
                open(part, "ab" if start else "wb") as f,
                tqdm(
                    total=total,
                    initial=start,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=label,
                    disable=not self.progress,
                ) as bar,
            ):
                for chunk in _chain(first, chunks):
                    f.write(chunk)
                    bar.update(len(chunk))
                    self.received += len(chunk)
                    now = time.monotonic()
                    if now - window_start >= self.speed_window:
                        speed = (self.received - window_bytes) / (now - window_start)
                        if speed < self.min_speed:
                            raise SourceFailed(
                                f"too slow: {speed / 1024:.1f} KiB/s over {now - window_start:.0f} s, under the "
                                f"floor of {self.min_speed / 1024:.1f} KiB/s (download_file's min_speed)"
                            )
                        window_start, window_bytes = now, self.received
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise NotEnoughDiskError(
                    f"The disk filled up while writing {part}. The partial file is kept and the download resumes "
                    "once space is free (or set SAMCLIP_CHECKPOINT_DIR to a larger disk)."
                ) from exc
            raise


def _looks_like_html(data: bytes) -> bool:
    return data.lstrip()[:16].lower().startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<!--"))


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _read_chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives: ``read1`` returns whatever came in, so a trickle cannot block the speed check."""
    raw = response.raw
    try:
        if not hasattr(raw, "read1"):  # urllib3 < 2.3
            yield from raw.stream(64 * 1024, decode_content=True)
            return
        while chunk := raw.read1(CHUNK_BYTES, decode_content=True):
            yield chunk
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.exceptions.ReadTimeout(exc) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # a cut connection, an incomplete body
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
