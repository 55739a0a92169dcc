"""On-disk cache of SAM masks and region embeddings, one file per image and stage.

Keys are content hashes: the image's pixels, plus the model and every setting that changes
the result. Files are written to a temporary name and renamed, so an interrupted run leaves
only whole files, and a rerun picks up where it stopped. An unreadable file counts as a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zipfile
from pathlib import Path

import numpy as np

from .masks import MaskSet


def image_key(image: np.ndarray) -> str:
    digest = hashlib.sha256(str((image.shape, image.dtype.str)).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()[:20]


def settings_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResultCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, stage: str, image: str, key: str) -> Path:
        return self.root / stage / f"{image}_{key}.npz"

    def _write(self, path: Path, write) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.part")  # unique: concurrent writers never share one
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)

    def load_masks(self, image: str, key: str) -> MaskSet | None:
        path = self._path("masks", image, key)
        try:
            return MaskSet.load(path) if path.is_file() else None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None

    def save_masks(self, image: str, key: str, masks: MaskSet) -> None:
        self._write(self._path("masks", image, key), masks.save)

    def load_embeddings(self, image: str, key: str) -> np.ndarray | None:
        path = self._path("embeddings", image, key)
        try:
            with np.load(path) as f:
                return f["embeddings"].astype(np.float32)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None

    def save_embeddings(self, image: str, key: str, embeddings: np.ndarray) -> None:
        self._write(
            self._path("embeddings", image, key),
            lambda f: np.savez_compressed(f, embeddings=embeddings.astype(np.float32)),
        )
