"""The one form every reader returns: samples of an RGB image with one boolean mask per class."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DatasetError(ValueError):
    """Input that cannot be turned into a dataset; the message says what to fix."""


class UnknownClassError(DatasetError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class Sample:
    image_id: str
    image: np.ndarray  # H x W x 3, uint8, RGB
    masks: dict[str, np.ndarray]  # class name -> H x W bool
    ignore: dict[str, np.ndarray] = field(default_factory=dict)  # class -> pixels evaluation ignores

    def ignore_mask(self, name: str) -> np.ndarray | None:
        return self.ignore.get(name)


@dataclass
class Dataset:
    name: str
    samples: list[Sample]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def check_classes(self, names: list[str]) -> None:
        unknown = [name for name in names if name not in self.classes]
        if unknown:
            raise UnknownClassError(
                f"Unknown class {unknown} for dataset {self.name!r}. Known classes: {', '.join(self.classes)}."
            )

    def class_counts(self) -> list[dict]:
        """Per class: images that contain it and its share of all pixels."""
        rows = []
        total = sum(s.image.shape[0] * s.image.shape[1] for s in self.samples) or 1
        for name in self.classes:
            areas = [int(s.masks[name].sum()) for s in self.samples if name in s.masks]
            rows.append(
                {
                    "class": name,
                    "images": sum(a > 0 for a in areas),
                    "pixels": sum(areas),
                    "pixel_share": sum(areas) / total,
                }
            )
        return rows

    def report(self) -> str:
        lines = [f"{self.name}: {len(self.samples)} images, {len(self.classes)} classes"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} item(s):")
            lines += [f"  {item}: {reason}" for item, reason in self.skipped]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def finish(dataset: Dataset, strict: bool) -> Dataset:
    if strict and dataset.skipped:
        item, reason = dataset.skipped[0]
        raise DatasetError(f"{item}: {reason}")
    if not dataset.samples:
        detail = f" ({len(dataset.skipped)} item(s) skipped, first: {dataset.skipped[0]})" if dataset.skipped else ""
        raise DatasetError(f"Dataset {dataset.name!r} is empty{detail}. Check the paths and file names.")
    return dataset


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 array; raises DatasetError for unreadable or truncated files."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


# --- COCO ---------------------------------------------------------------------------------------


@dataclass
class LabelledImage:
    image: np.ndarray
    label: str
    path: str
