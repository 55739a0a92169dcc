"""Samples read from disk when touched: a dataset's size no longer decides its memory.

A reader indexes its files and annotations up front into ``SampleRef`` records (plain JSON: the
prepared dataset's manifest holds them) and decodes one sample when it is touched. ``LazySamples``
is the sequence a ``Dataset`` holds: ``len()``, indexing, slicing and iteration work as on a list,
with the last few samples kept (``CACHED``). When items turn bad:

- up front, while indexing (cheap): missing files, malformed annotations and label lines, headers;
- by ``LazySamples.scan()`` (what the readers run by default, ``check=True``): every sample is
  decoded once, one at a time, and kept nowhere; unreadable ones move to ``Dataset.skipped``;
- when a prepared dataset opens (``storage.load_prepared``): files gone or resized since are listed;
- at first touch, for a file that changed (its size) or broke after indexing: iteration drops it from
  the sequence and lists it in ``Dataset.skipped`` (with a warning); ``dataset[i]`` raises DatasetError.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .types import DatasetError, Sample, sample_stats

CACHED = 4  # decoded samples kept per sequence (the tuner flips between a few images)
Reader = Callable[["SampleRef"], tuple[Sample, int]]  # -> (sample, EXIF orientation)
_READERS: dict[str, Reader] = {}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    """Name the function that decodes a ``SampleRef`` of kind ``name`` (each reader module registers its own)."""

    def register(function: Reader) -> Reader:
        _READERS[name] = function
        return function

    return register


@dataclass
class SampleRef:
    """Where one sample lies and how to read it. ``label`` names it in ``Dataset.skipped``;
    ``source`` is the reader's JSON (paths, file fingerprints, annotations); ``stats`` (height,
    width, pixels per class) is filled by ``scan`` so that class counts need no decoding."""

    image_id: str
    reader: str
    label: str
    source: dict
    stats: dict | None = None

    def read(self) -> tuple[Sample, int]:
        """(sample, EXIF orientation), decoded now; DatasetError when the files cannot give it."""
        if self.reader not in _READERS:
            raise DatasetError(f"{self.label}: no reader {self.reader!r} (known: {sorted(_READERS)})")
        return _READERS[self.reader](self)

    def to_json(self) -> dict:
        return {
            "id": self.image_id,
            "reader": self.reader,
            "label": self.label,
            "source": self.source,
            **({"stats": self.stats} if self.stats is not None else {}),
        }

    @classmethod
    def from_json(cls, entry: dict) -> "SampleRef":
        return cls(str(entry["id"]), entry["reader"], entry["label"], entry["source"], entry.get("stats"))


CHANGED = (
    "changed since the dataset was indexed"  # ``check_sources``' word for a resized file (``load_prepared`` reads it)
)


def fingerprints(source: dict, *keys: str, hashed: tuple[str, ...] = ()) -> dict[str, list | None]:
    """{key: [size, mtime_ns]} of the files ``source[key]`` names (None for a file not there now: its read
    fails with the reader's own message), recorded when indexing and checked by ``check_sources``; for the
    ``hashed`` keys (small files whose edits may keep their size, e.g. a classes.txt) the content's sha256 too."""
    recorded: dict[str, list | None] = {}
    for key in (*keys, *hashed):
        try:
            status = os.stat(source[key])
            recorded[key] = [status.st_size, status.st_mtime_ns]
            if key in hashed:
                recorded[key].append(hashlib.sha256(Path(source[key]).read_bytes()).hexdigest())
        except OSError:
            recorded[key] = None
    return recorded


def check_sources(source: dict) -> None:
    """DatasetError when a file of ``source`` is gone or its size (for a hashed one, its content) differs from when
    it was indexed. The date is recorded but not compared: copies (Drive, ``cp`` without ``-p``) change it, not the
    pixels."""
    for key, recorded in source.get("fingerprint", {}).items():
        if recorded is None:
            continue
        path = Path(source[key])
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise DatasetError(f"{key} {path} is gone since the dataset was indexed ({exc})") from exc
        if size != recorded[0]:
            raise DatasetError(
                f"{key} {path} {CHANGED} ({recorded[0]} -> {size} bytes); "
                "prepare the dataset again (notebook 01) to use the new file"
            )
        if len(recorded) > 2 and hashlib.sha256(path.read_bytes()).hexdigest() != recorded[2]:
            raise DatasetError(
                f"{key} {path} {CHANGED} (its content); prepare the dataset again (notebook 01) to use the new file"
            )


def missing_sources(refs: Sequence["SampleRef"]) -> list[tuple[str, str]]:
    """(label, reason) of the refs whose files are gone or resized: one ``stat`` per file, no decoding."""
    gone = []
    for ref in refs:
        try:
            check_sources(ref.source)
        except DatasetError as exc:
            gone.append((ref.label, str(exc)))
    return gone


def pack(value: object) -> str:
    """Annotations as one compact JSON string: far smaller in memory than nested Python lists."""
    return json.dumps(value, separators=(",", ":"))


class LazySamples(Sequence[Sample]):
    """A dataset's samples, decoded on touch from their ``SampleRef`` (see the module docstring)."""

    def __init__(self, refs: Sequence[SampleRef], skipped: list | None = None) -> None:
        self.refs = list(refs)
        self.skipped = skipped if skipped is not None else []
        self._recent: OrderedDict[int, Sample] = OrderedDict()  # id(ref) -> sample

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return LazySamples(self.refs[index], self.skipped)
        ref = self.refs[index]
        sample = self._recent.get(id(ref))
        if sample is None or sample.image_id != ref.image_id:
            sample = ref.read()[0]
            self._recent[id(ref)] = sample
            while len(self._recent) > CACHED:
                self._recent.popitem(last=False)
        self._recent.move_to_end(id(ref))
        return sample

    def __iter__(self) -> Iterator[Sample]:
        position = 0
        while position < len(self.refs):
            try:
                sample = self[position]
            except DatasetError as exc:
                self._drop(position, f"{exc} (found when the sample was read, after indexing)")
                continue
            position += 1
            yield sample

    def _drop(self, position: int, reason: str) -> None:
        ref = self.refs.pop(position)
        self._recent.pop(id(ref), None)
        if all(item != ref.label for item, _ in self.skipped):  # a slice and its parent share the list
            self.skipped.append((ref.label, reason))
            warnings.warn(f"skipped {ref.label}: {reason}", RuntimeWarning, stacklevel=3)

    @property
    def ids(self) -> list[str]:
        return [ref.image_id for ref in self.refs]

    def scan(
        self, progress: bool = False, read: Callable[[SampleRef], tuple[Sample, list[str]]] | None = None
    ) -> list[str]:
        """Decode every sample once (one at a time, none kept): unreadable ones move to ``skipped``,
        the others get their ``stats``. Returns the names of files carrying an EXIF orientation.
        ``read``: (sample, names of its files with an orientation) per ref; default ``ref.read``."""
        from tqdm.auto import tqdm

        read = read or _read_noting_orientation
        kept, oriented = [], []
        for ref in tqdm(self.refs, desc="checking samples", disable=not progress):
            try:
                sample, turned = read(ref)
            except DatasetError as exc:
                self.skipped.append((ref.label, str(exc)))
                continue
            ref.stats = sample_stats(sample)
            oriented += turned
            kept.append(ref)
        self.refs = kept
        self._recent.clear()
        return oriented


def _read_noting_orientation(ref: SampleRef) -> tuple[Sample, list[str]]:
    sample, orientation = ref.read()
    return sample, [ref.source.get("name", ref.label)] if orientation != 1 else []


def path_text(path: Path) -> str:
    """An absolute path as the manifest records it."""
    return str(Path(path).absolute())
