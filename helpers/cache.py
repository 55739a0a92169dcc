"""On-disk cache of SAM masks and region embeddings, one file per image and stage.

Keys are content hashes: the image's pixels, plus the model and every setting that changes
the result. Each entry holds a header with the sha256 of its payload (the ``.npz`` bytes), so
a flipped bit is caught even where the file still decompresses. Entries are written to a
private temporary name and renamed, so an interrupted run or a second run sharing the folder
leaves only whole files. An entry that cannot be read is a miss: it is moved aside
(``.corrupt``) and recomputed. A cache that cannot be written (read-only folder, full disk)
warns once; the run goes on without caching, with identical results.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from .files import write_bytes
from .masks import MaskSet

MAGIC = b"SAMCLIP-CACHE-1\n"  # then 32 bytes of sha256(payload), then the payload
T = TypeVar("T")


def image_key(image: np.ndarray) -> str:
    """The cache key of an image: a hash of its shape, dtype and pixels."""
    digest = hashlib.sha256(str((image.shape, image.dtype.str)).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()[:20]


def settings_key(**parts) -> str:
    """A short hash of every setting (and model identity) that changes a cached result."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResultCache:
    """Masks and embeddings per (image key, settings key); every failure is a miss, never an error."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.writable = True
        self.set_aside = 0  # unreadable entries moved aside (or removed) so far
        self._warned: set[str] = set()

    def _path(self, stage: str, image: str, key: str) -> Path:
        return self.root / stage / f"{image}_{key}.npz"

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _discard(self, path: Path, reason: str) -> None:
        """Move an unreadable entry aside (removing it when that fails too); it is recomputed."""
        self.set_aside += 1
        try:
            os.replace(path, path.with_name(path.name + ".corrupt"))
        except OSError:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        self._warn_once(
            "unreadable",
            f"Unreadable cache entry {path} ({reason}) moved aside as .corrupt and recomputed; "
            "any further ones in this run are handled the same way without a message.",
        )

    def _load(self, path: Path, parse: Callable[[io.BytesIO], T]) -> T | None:
        try:
            data = path.read_bytes()
        except OSError:
            return None  # absent (the usual miss) or unreadable: recomputed either way
        if data[:2] == b"PK":
            return None  # an entry from before checksums: recomputed and overwritten
        payload = data[len(MAGIC) + 32 :]
        if data[: len(MAGIC)] != MAGIC or hashlib.sha256(payload).digest() != data[len(MAGIC) : len(MAGIC) + 32]:
            self._discard(path, "checksum mismatch")
            return None
        try:
            return parse(io.BytesIO(payload))
        except Exception as exc:  # any decoding error (zlib, numpy header, pickle...) is a miss
            self._discard(path, f"{type(exc).__name__}: {exc}")
            return None

    def _write(self, path: Path, write: Callable[[io.BytesIO], None]) -> None:
        if not self.writable:
            return
        buffer = io.BytesIO()
        write(buffer)
        payload = buffer.getvalue()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(path, MAGIC + hashlib.sha256(payload).digest() + payload)
        except OSError as exc:
            self.writable = False
            self._warn_once(
                "unwritable",
                f"The result cache {self.root} cannot be written ({exc}); this run goes on without "
                "caching (same results, nothing saved for the next run). Free disk space or choose "
                "another cache folder.",
            )

    def load_masks(self, image: str, key: str) -> MaskSet | None:
        return self._load(self._path("masks", image, key), MaskSet.load)

    def save_masks(self, image: str, key: str, masks: MaskSet) -> None:
        self._write(self._path("masks", image, key), masks.save)

    def load_embeddings(self, image: str, key: str) -> np.ndarray | None:
        def parse(f: io.BytesIO) -> np.ndarray:
            with np.load(f) as archive:
                return archive["embeddings"].astype(np.float32)

        return self._load(self._path("embeddings", image, key), parse)

    def save_embeddings(self, image: str, key: str, embeddings: np.ndarray) -> None:
        self._write(
            self._path("embeddings", image, key),
            lambda f: np.savez_compressed(f, embeddings=embeddings.astype(np.float32)),
        )
