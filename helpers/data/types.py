"""The one form every reader returns: samples of an RGB image with one boolean mask per class.

``Dataset.samples`` is a list (generated or in-memory data) or a ``lazy.LazySamples`` that reads each
sample from disk when touched (the readers' default); every caller treats it as a sequence."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..instances import Instance

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # compared lower-cased


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file with an image suffix (``IMAGE_SUFFIXES``, in any case)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files of ``folder`` (``is_image_file``), sorted; ``recursive``: of its sub-folders too, symbolic
    links to folders followed (each folder once: no loops), but for hidden ones (``.git``, ``.ipynb_checkpoints``,
    ``.Trash``: a name that starts with a dot)."""
    if not recursive:
        return sorted(p for p in folder.iterdir() if is_image_file(p))
    found, seen = [], set()
    for parent, folders, files in os.walk(folder, followlinks=True):
        where = os.stat(parent)
        if (where.st_dev, where.st_ino) in seen:  # reached again through a link
            folders[:] = []
            continue
        seen.add((where.st_dev, where.st_ino))
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(parent, name) for name in files if is_image_file(Path(parent, name))]
    return sorted(found)


def path_id(path: Path, folder: Path) -> str:
    """The sample id of image file ``path`` read from ``folder``: its path below ``folder`` without the suffix, "/"
    between folders (``street/0001``; a file directly in ``folder``: its stem), the inverse of ``id_path``."""
    return path.relative_to(folder).with_suffix("").as_posix()


def id_path(image_id: str) -> str:
    """A sample id as the relative path of files named after it (exports, prepared copies): a plain id as it is, an
    id with folders (``street/0001``, from ``load_images(recursive=True)``) in those sub-folders; DatasetError for an
    id that would name no file or one outside the folder written."""
    parts = image_id.split("/")
    if not image_id or any(part in ("", ".", "..") for part in parts) or re.search(r"[\\:\x00]", image_id):
        raise DatasetError(
            f"Image id {image_id!r} cannot name an exported file (an empty or '..' folder name, a leading '/', a "
            "backslash or a colon, which Windows reads as a drive): rename that image file or folder, or give the "
            "samples plain ids (folder/name, '/' between)."
        )
    return image_id


ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 = as stored; 2-8 = flip and/or rotate for display
_ORIENT = {  # orientation -> the transpose that displays the stored pixels (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_UNDO = {**_ORIENT, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


class DatasetError(ValueError):
    """Input that cannot be turned into a dataset; the message says what to fix."""


class UnknownClassError(DatasetError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class Sample:
    """One image (H x W x 3 uint8 RGB) with a boolean mask per class, pixels to ignore per class, and
    its objects one by one (``instances``: per COCO annotation, YOLO label line, drawn demo shape, or
    connected component of a label map; their union per class is ``masks``)."""

    image_id: str
    image: np.ndarray  # H x W x 3, uint8, RGB
    masks: dict[str, np.ndarray]  # class name -> H x W bool
    ignore: dict[str, np.ndarray] = field(default_factory=dict)  # class -> pixels evaluation ignores
    instances: list[Instance] = field(default_factory=list)  # ground truth, score 1.0

    def ignore_mask(self, name: str) -> np.ndarray | None:
        return self.ignore.get(name)


@dataclass
class Dataset:
    """Samples, their class list, and what the reader skipped or noted (see ``report``).

    ``samples`` is any sequence of ``Sample``: a list, or ``LazySamples`` read on touch (iteration
    drops a sample that turned unreadable and lists it in ``skipped``)."""

    name: str
    samples: Sequence[Sample]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.lazy:  # LazySamples reports what turns unreadable into our list
            self.samples.skipped = self.skipped

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def lazy(self) -> bool:
        """True when samples are read from disk on touch (``LazySamples``)."""
        return hasattr(self.samples, "refs")

    @property
    def ids(self) -> list[str]:
        """The image ids, in order, without reading any image."""
        return self.samples.ids if self.lazy else [s.image_id for s in self.samples]

    def in_memory(self) -> "Dataset":
        """A copy with every sample decoded into a list (small datasets; what readers returned before)."""
        return Dataset(self.name, list(self.samples), list(self.classes), self.skipped, self.notes)

    def _stats(self) -> list[dict]:
        """(height, width, pixels per class) per sample: from the index when scanned, else read one at a time."""
        refs = getattr(self.samples, "refs", None)
        if refs is not None and all(ref.stats is not None for ref in refs):
            return [ref.stats for ref in refs]
        return [sample_stats(sample) for sample in self.samples]

    def check_classes(self, names: list[str]) -> None:
        unknown = [name for name in names if name not in self.classes]
        if unknown:
            folded = {known.casefold(): known for known in self.classes}
            cased = [folded[name.casefold()] for name in unknown if name.casefold() in folded]
            hint = f" Class names are matched as written: {', '.join(map(repr, cased))}?" if cased else ""
            raise UnknownClassError(
                f"Unknown class {unknown} for dataset {self.name!r}. Known classes: {', '.join(self.classes)}.{hint}"
            )

    def class_counts(self) -> list[dict]:
        """Per class: images that contain it and its share of all pixels."""
        stats = self._stats()
        total = sum(st["height"] * st["width"] for st in stats) or 1
        rows = []
        for name in self.classes:
            areas = [st["pixels"][name] for st in stats if name in st["pixels"]]
            rows.append(
                {
                    "class": name,
                    "images": sum(a > 0 for a in areas),
                    "pixels": sum(areas),
                    "pixel_share": sum(areas) / total,
                }
            )
        return rows

    def present_classes(self) -> list[str]:
        """The classes with at least one mask pixel in some sample, in ``classes`` order."""
        present = {name for st in self._stats() for name, pixels in st["pixels"].items() if pixels}
        return [name for name in self.classes if name in present]

    def report(self) -> str:
        lines = [f"{self.name}: {len(self.samples)} images, {len(self.classes)} classes"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} item(s):")
            lines += [f"  {item}: {reason}" for item, reason in self.skipped]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def sample_stats(sample: Sample) -> dict:
    """Height, width and mask pixels per class of a sample (what class counts need)."""
    height, width = sample.image.shape[:2]
    return {"height": height, "width": width, "pixels": {n: int(m.sum()) for n, m in sample.masks.items()}}


def finish(dataset: Dataset, strict: bool, oriented: list[str] | None = None, applied: bool = False) -> Dataset:
    """Note the files with an EXIF orientation, then raise for skipped items (``strict``) or an empty set."""
    if oriented:
        shown = ", ".join(oriented[:10]) + (f" and {len(oriented) - 10} more" if len(oriented) > 10 else "")
        how = (
            "rotated/flipped upright as the tag says (as ultralytics/cv2 read them)"
            if applied
            else "read as stored, the tag not applied (cv2.imread and photo viewers apply it)"
        )
        dataset.notes.append(f"{len(oriented)} file(s) carry an EXIF orientation, {how}: {shown}")
    if strict and dataset.skipped:
        item, reason = dataset.skipped[0]
        raise DatasetError(f"{item}: {reason}")
    if not dataset.samples:
        detail = f" ({len(dataset.skipped)} item(s) skipped, first: {dataset.skipped[0]})" if dataset.skipped else ""
        raise DatasetError(f"Dataset {dataset.name!r} is empty{detail}. Check the paths and file names.")
    return dataset


def open_image(path: Path, apply_orientation: bool = False, what: str = "image") -> tuple[Image.Image, int]:
    """A loaded PIL image and its EXIF orientation (1 when none). The pixels are as stored in the
    file (PIL's own TIFF orientation handling is undone) unless ``apply_orientation``.

    Raises DatasetError naming the file for unreadable, truncated or over-large files.
    """
    try:
        with Image.open(path) as image:
            orientation = image.getexif().get(ORIENTATION_TAG, 1)
            orientation = orientation if orientation in _ORIENT else 1
            image.load()
            tiff_applied = image.format == "TIFF" and orientation != 1 and ORIENTATION_TAG not in image.getexif()
            if tiff_applied and not apply_orientation:
                return image.transpose(_UNDO[orientation]), orientation
            if apply_orientation and not tiff_applied and orientation != 1:
                return image.transpose(_ORIENT[orientation]), orientation
            return image, orientation
    except Image.DecompressionBombError as exc:
        raise DatasetError(
            f"{what} {path} is larger than PIL's decompression-bomb limit ({exc}). If the file is "
            "trusted, allow it with `PIL.Image.MAX_IMAGE_PIXELS = None` (or a larger number) before loading."
        ) from exc
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc}") from exc


def read_image(path: Path, apply_orientation: bool = False) -> np.ndarray:
    """An RGB uint8 array, pixels as stored (see ``open_image``); raises DatasetError for unreadable,
    truncated or over-large files."""
    return load_image(path, apply_orientation)[0]


def load_image(path: Path, apply_orientation: bool = False) -> tuple[np.ndarray, int]:
    """``read_image`` and the file's EXIF orientation."""
    image, orientation = open_image(Path(path), apply_orientation)
    try:
        return _rgb8(image), orientation
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


def _rgb8(image: Image.Image) -> np.ndarray:
    """H x W x 3 uint8. A 16-bit grey image (PNG, TIFF) keeps its top 8 bits, as ``cv2.imread`` reads it
    (PIL's ``convert("RGB")`` clips it at 255: white); a float image with every value in 0-1 (scikit-image's
    convention) is scaled to 0-255 (PIL would read it black); other 32-bit values beyond 0-255 have no fixed
    range, and NaN or infinite values no meaning: refused."""
    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):  # Pillow < 10.3: "I"
        grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":
        values = np.asarray(image)
        if not np.isfinite(values).all():
            raise ValueError("it holds NaN or infinite values; save it as an 8- or 16-bit image")
        if values.size and values.min() >= 0 and values.max() <= 1:
            grey = np.rint(values * 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("I", "F"):
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 255):
            kind = "integers" if image.mode == "I" else "floats"
            raise ValueError(
                f"it holds 32-bit {kind} from {values.min()} to {values.max()}, which have no fixed range; "
                "save it as an 8- or 16-bit image"
            )
    return np.asarray(image.convert("RGB"))


@dataclass
class LabelledImage:
    """A whole image labelled with one class (recognition and mosaic evaluations)."""

    image: np.ndarray
    label: str
    path: str
