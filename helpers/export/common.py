"""What every export shares: image and category ids, matching predictions to samples, providing
the images, and writing atomically without replacing what exists unless asked."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable, Mapping, Sequence

from PIL import Image

from ..data.types import IMAGE_SUFFIXES, ORIENTATION_TAG, Dataset, DatasetError, Sample
from ..data.types import id_path as sample_id_path
from ..files import atomic_path
from ..instances import Instance

Predictions = Sequence[Sequence[Instance]] | Mapping[str, Sequence[Instance]]


class ExportError(ValueError):
    """Input that cannot be exported as asked; the message says what to do."""


# ---------------------------------------------------------------------------------------------------------------------
# ids


def coco_image_ids(ids: Sequence[str]) -> dict[str, int]:
    """Sample id -> COCO image id: when every id is a digit string ("139") and their integers differ,
    the integer (COCO's own ids survive a round trip); otherwise 1..N in dataset order."""
    ids = list(ids)
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ExportError(f"Repeated image ids {repeated}: every sample needs its own id to be exported.")
    if ids and all(re.fullmatch(r"[0-9]+", i) for i in ids) and len({int(i) for i in ids}) == len(ids):
        return {i: int(i) for i in ids}
    return {image_id: number for number, image_id in enumerate(ids, 1)}


def category_table(classes: Sequence[str], category_ids: Mapping[str, int] | None = None) -> dict[str, int]:
    """Class name -> COCO category id: 1..K in ``classes`` order, or ``category_ids`` (e.g. the source
    json's own ids, ``{c["name"]: c["id"] for c in json.load(f)["categories"]}``), which must cover them."""
    if category_ids is None:
        return {name: number for number, name in enumerate(classes, 1)}
    missing = [name for name in classes if name not in category_ids]
    if missing:
        raise ExportError(f"category_ids has no id for {missing}; give every class of the dataset an id.")
    table = {name: int(category_ids[name]) for name in classes}
    if len(set(table.values())) != len(table):
        raise ExportError(f"category_ids gives two classes the same id: {table}.")
    return table


def _predictions_by_id(dataset: Dataset, predictions: Predictions) -> Callable[[str], Sequence[Instance]]:
    """A lookup image id -> that image's predicted instances (none when a dict lacks the id)."""
    ids = dataset.ids
    if isinstance(predictions, Mapping):
        known = set(ids)
        unknown = [key for key in predictions if key not in known]
        if unknown:
            raise ExportError(
                f"Predictions for {len(unknown)} image id(s) not in dataset {dataset.name!r} (first {unknown[:3]}); "
                f"key them by the dataset's ids, e.g. {ids[:3]}."
            )
        return lambda image_id: predictions.get(image_id, ())
    named = getattr(predictions, "ids", None)  # e.g. InstancePredictions: aligned with its results' ids
    if named is not None and list(named) != ids and set(ids) <= set(named) and len(set(named)) == len(named):
        # by id: the same images in another order, or predictions for images dropped since (unreadable)
        where = {image_id: index for index, image_id in enumerate(named)}
        return lambda image_id: predictions[where[image_id]]
    if len(predictions) != len(ids):
        raise ExportError(
            f"{len(predictions)} prediction lists for {len(ids)} images: give one list per image, in the order "
            "of dataset.ids, or a dict image id -> list of instances."
        )
    position = {image_id: index for index, image_id in enumerate(ids)}
    return lambda image_id: predictions[position[image_id]]


def id_path(image_id: str) -> str:
    """``data.types.id_path`` (the relative path an exported file of a sample takes), as an ExportError."""
    try:
        return sample_id_path(image_id)
    except DatasetError as exc:
        raise ExportError(str(exc)) from None


# ---------------------------------------------------------------------------------------------------------------------
# images


class ImageFiles:
    """How an export provides a dataset's images: ``<sample id><the source file's suffix>``, the file a
    lazy sample was read from copied byte for byte when that gives exactly ``sample.image`` (an image
    file, ``source["image"]`` or a prepared copy's ``png``, without an EXIF orientation tag, on which
    readers disagree, and of the sample's size); otherwise ``<sample id>.png``, a lossless PNG of the
    pixels (the demo set, in-memory data)."""

    def __init__(self, dataset: Dataset) -> None:
        self.refs = {ref.image_id: ref for ref in getattr(dataset.samples, "refs", None) or []}
        self._last: tuple[str | None, Path | None] = (None, None)

    def source(self, sample: Sample) -> Path | None:
        """The file to copy for ``sample``, or None (a PNG is written)."""
        if self._last[0] != sample.image_id:
            self._last = (sample.image_id, self._find(sample))
        return self._last[1]

    def _find(self, sample: Sample) -> Path | None:
        ref = self.refs.get(sample.image_id)
        text = (ref.source.get("image") or ref.source.get("png")) if ref is not None else None
        if not isinstance(text, str) or Path(text).suffix.lower() not in IMAGE_SUFFIXES or not Path(text).is_file():
            return None
        try:
            with Image.open(text) as image:
                if image.getexif().get(ORIENTATION_TAG, 1) != 1 or image.size != sample.image.shape[1::-1]:
                    return None
        except OSError:
            return None
        return Path(text)

    def name(self, sample: Sample) -> str:
        """The exported file name of ``sample``'s image, in a sub-folder for an id with folders (``id_path``)."""
        source = self.source(sample)
        return id_path(sample.image_id) + (source.suffix if source is not None else ".png")

    def write(self, sample: Sample, folder: Path, name: str) -> None:
        """Put ``sample``'s image into ``folder`` as ``name``: the source file copied, else a PNG."""
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        source = self.source(sample)
        if source is not None:
            shutil.copyfile(source, folder / name)
        else:
            Image.fromarray(sample.image).save(folder / name, format="PNG")


# ---------------------------------------------------------------------------------------------------------------------
# atomic outputs


def check_export_folder(dataset: Dataset, folder: str | Path, overwrite: bool = False) -> None:
    """Raise now what writing ``dataset`` to ``folder`` (``write_coco_dataset`` / ``write_yolo``) would raise
    there, before any work: FileExistsError for a non-empty ``folder`` without ``overwrite``, ExportError for
    a folder that holds the dataset's own files or an image id that cannot name a file (``id_path``)."""
    _refuse_existing([Path(folder)], overwrite)
    _refuse_sources(dataset, Path(folder))
    for image_id in dataset.ids:
        id_path(image_id)


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists() and not (p.is_dir() and not any(p.iterdir()))]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} already exist(s); pass overwrite=True to replace, or choose another path."
        )


def _refuse_sources(dataset: Dataset, folder: Path) -> None:
    """An export folder that holds the dataset's own files would be replaced with them in it: refuse."""
    folder = folder.absolute()
    for ref in getattr(dataset.samples, "refs", None) or []:
        for value in ref.source.values():
            if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_relative_to(folder):
                raise ExportError(
                    f"{folder} holds the dataset's own file {value}; export into another folder "
                    "(replacing it would delete the source)."
                )


def _write_json(content: object, path: Path) -> None:
    """``content`` as JSON at ``path``, written under a hidden unused name first and renamed into place."""
    with atomic_path(path, hidden=True) as tmp, open(tmp, "x") as out:
        json.dump(content, out, separators=(",", ":"))
