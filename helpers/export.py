"""Datasets and predicted instances out to the formats other tools read: COCO and YOLO segmentation.

- ``write_coco_results``: a COCO *results* json (what COCOeval and the COCO server read), one entry
  per predicted instance with its RLE mask, box and score.
- ``write_coco_dataset``: a full COCO instances json (images, categories, annotations with RLE masks;
  the ground truth, crowd regions as ``iscrowd: 1``, or predictions with their ``score``) and the
  images in a folder beside it: what CVAT, Label Studio and FiftyOne import and ``load_coco`` reads.
- ``write_yolo``: an ultralytics YOLO-seg folder (``images/``, ``labels/*.txt`` of normalised
  polygons, ``data.yaml``) that ultralytics trains on and ``load_yolo`` reads.
- ``read_coco_results``: a results json (or a dataset json with scores) back to instances.

Conventions (docs/export.md): image ids are ``coco_image_ids(dataset.ids)`` (all-digit ids become
their integer, otherwise 1..N in dataset order); category ids are 1..K in ``dataset.classes`` order
unless ``category_ids`` names them. Every writer reads the dataset one image at a time, writes to a
temporary name and renames it into place, and refuses to replace an existing output unless
``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import yaml
from PIL import Image

from .data.types import IMAGE_SUFFIXES, ORIENTATION_TAG, Dataset, Sample
from .instances import Instance

Predictions = Sequence[Sequence[Instance]] | Mapping[str, Sequence[Instance]]
MIN_PART_AREA = 1.0  # a polygon part enclosing less (in pixels², through boundary pixel centres) is dropped
DIGITS = 6  # decimals of normalised YOLO coordinates (3e-4 px at 640 px)


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
    if named is not None and list(named) != ids and sorted(named) == sorted(ids):
        where = {image_id: index for index, image_id in enumerate(named)}
        return lambda image_id: predictions[where[image_id]]
    if len(predictions) != len(ids):
        raise ExportError(
            f"{len(predictions)} prediction lists for {len(ids)} images: give one list per image, in the order "
            "of dataset.ids, or a dict image id -> list of instances."
        )
    position = {image_id: index for index, image_id in enumerate(ids)}
    return lambda image_id: predictions[position[image_id]]


# ---------------------------------------------------------------------------------------------------------------------
# COCO entries


def rle_entry(mask: np.ndarray) -> tuple[dict, int, list[float]]:
    """(segmentation with counts as text, area, bbox [x, y, w, h] as pycocotools' toBbox) of one mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    area, bbox = int(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}, area, bbox


def _instance_entries(
    instances: Sequence[Instance],
    image_id: int,
    categories: dict[str, int],
    shape: tuple[int, int] | None,
    scored: bool,
) -> list[dict]:
    """COCO annotation dicts (no ``id``) of one image's instances; empty masks are left out."""
    entries = []
    for instance in instances:
        if instance.label not in categories:
            raise ExportError(
                f"image {image_id}: an instance labelled {instance.label!r}, not among the classes "
                f"{list(categories)}; predict with the dataset's class names (or relabel)."
            )
        if shape is not None and instance.mask.shape != shape:
            raise ExportError(
                f"image {image_id}: an instance mask of shape {instance.mask.shape}, but the image is {shape}; "
                "masks must be at the image's full size."
            )
        if not instance.mask.any():
            continue
        segmentation, area, bbox = rle_entry(instance.mask)
        entry = {"image_id": image_id, "category_id": categories[instance.label], "segmentation": segmentation}
        entry.update(area=area, bbox=bbox, iscrowd=0)
        if scored:
            entry["score"] = float(instance.score)
        entries.append(entry)
    return entries


def _crowd_entries(sample: Sample, image_id: int, categories: dict[str, int]) -> list[dict]:
    """One ``iscrowd: 1`` annotation per class with ignored pixels (COCO crowd, CamVid Unlabelled)."""
    entries = []
    for name, region in sample.ignore.items():
        if name not in categories or not np.asarray(region).any():
            continue
        segmentation, area, bbox = rle_entry(np.asarray(region, bool))
        entry = {"image_id": image_id, "category_id": categories[name], "segmentation": segmentation}
        entries.append(dict(entry, area=area, bbox=bbox, iscrowd=1))
    return entries


def _known_size(dataset: Dataset, index: int) -> tuple[int, int] | None:
    """(height, width) of sample ``index`` when the lazy index knows it without reading."""
    refs = getattr(dataset.samples, "refs", None)
    stats = refs[index].stats if refs is not None else None
    return (stats["height"], stats["width"]) if stats else None


RESULT_KEYS = ("image_id", "category_id", "segmentation", "score", "bbox")


def coco_results(
    dataset: Dataset, predictions: Predictions, category_ids: Mapping[str, int] | None = None
) -> list[dict]:
    """The COCO results list (``write_coco_results``'s content) in memory; reads no image."""
    return [{key: entry[key] for key in RESULT_KEYS} for entry in scored_entries(dataset, predictions, category_ids)]


def scored_entries(
    dataset: Dataset, predictions: Predictions, category_ids: Mapping[str, int] | None = None
) -> list[dict]:
    """``coco_results`` with each entry's ``area`` and ``iscrowd`` (0) too: COCO annotations less ``id``."""
    lookup = _predictions_by_id(dataset, predictions)
    image_ids = coco_image_ids(dataset.ids)
    categories = category_table(dataset.classes, category_ids)
    entries = []
    for index, sample_id in enumerate(dataset.ids):
        instances = lookup(sample_id)
        shape = _known_size(dataset, index) or (instances[0].mask.shape if len(instances) else None)
        entries += _instance_entries(instances, image_ids[sample_id], categories, shape, scored=True)
    return entries


def _coco_images(
    dataset: Dataset, predictions: Predictions | None, category_ids: Mapping[str, int] | None, file_names: bool
) -> Iterator[tuple[Sample, dict, list[dict]]]:
    """(sample, image entry, annotations without ids) per image, reading one sample at a time."""
    lookup = _predictions_by_id(dataset, predictions) if predictions is not None else None
    image_ids = coco_image_ids(dataset.ids)
    categories = category_table(dataset.classes, category_ids)
    files = ImageFiles(dataset)
    for sample in dataset:
        image_id = image_ids[sample.image_id]
        height, width = sample.image.shape[:2]
        name = files.name(sample) if file_names else sample.image_id
        entry = {"id": image_id, "file_name": name, "height": height, "width": width}
        if lookup is None:
            annotations = _instance_entries(sample.instances, image_id, categories, (height, width), scored=False)
            annotations += _crowd_entries(sample, image_id, categories)
        else:
            annotations = _instance_entries(lookup(sample.image_id), image_id, categories, (height, width), True)
        yield sample, entry, annotations


def coco_dataset(
    dataset: Dataset,
    predictions: Predictions | None = None,
    category_ids: Mapping[str, int] | None = None,
    on_sample: Callable[[Sample, dict], None] | None = None,
    file_names: bool = True,
) -> dict:
    """The COCO instances dict (``write_coco_dataset``'s json) in memory, reading one image at a time;
    ``on_sample(sample, image_entry)`` is called for each (the writer copies the image there).
    ``file_names=False`` puts the sample id in ``file_name`` and looks at no file (in-memory evaluation)."""
    categories = category_table(dataset.classes, category_ids)
    images, annotations = [], []
    for sample, entry, entries in _coco_images(dataset, predictions, category_ids, file_names):
        if on_sample is not None:
            on_sample(sample, entry)
        images.append(entry)
        annotations += [dict(ann, id=len(annotations) + k + 1) for k, ann in enumerate(entries)]
    kind = "predictions" if predictions is not None else "ground truth"
    return {
        "info": {"description": f"{dataset.name}: {kind}, exported by helpers.export"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": number, "name": name} for name, number in categories.items()],
    }


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
        """The exported file name of ``sample``'s image."""
        image_id = sample.image_id
        if not image_id or image_id in (".", "..") or re.search(r"[/\\\x00]", image_id):
            raise ExportError(f"Image id {image_id!r} cannot name a file; give the samples plain ids.")
        source = self.source(sample)
        return image_id + (source.suffix if source is not None else ".png")

    def write(self, sample: Sample, folder: Path, name: str) -> None:
        """Put ``sample``'s image into ``folder`` as ``name``: the source file copied, else a PNG."""
        source = self.source(sample)
        if source is not None:
            shutil.copyfile(source, folder / name)
        else:
            Image.fromarray(sample.image).save(folder / name, format="PNG")


# ---------------------------------------------------------------------------------------------------------------------
# atomic outputs


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
    """``content`` as JSON at ``path``, written to a temporary file first and renamed into place."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(content, out, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _replace_folder(tmp: Path, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
    os.replace(tmp, folder)


# ---------------------------------------------------------------------------------------------------------------------
# writers


def write_coco_results(
    dataset: Dataset,
    predictions: Predictions,
    path: str | Path,
    category_ids: Mapping[str, int] | None = None,
    overwrite: bool = False,
) -> Path:
    """A COCO results json: a list of ``{image_id, category_id, segmentation (RLE, counts as text),
    score, bbox [x, y, w, h]}``, one per predicted instance (empty masks left out).

    ``predictions``: per image a list of ``Instance``, aligned with ``dataset.ids``, or a dict
    image id -> list (images missing from it have none). Ids as in ``coco_image_ids`` and
    ``category_table``, the same as ``write_coco_dataset`` gives. Reads no image."""
    path = Path(path)
    _refuse_existing([path], overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(coco_results(dataset, predictions, category_ids), path)
    return path


COCO_JSON = "annotations.json"  # the json's name when write_coco_dataset is given a folder


def write_coco_dataset(
    dataset: Dataset,
    path: str | Path,
    predictions: Predictions | None = None,
    image_dir: str | Path | None = None,
    copy_images: bool = True,
    category_ids: Mapping[str, int] | None = None,
    overwrite: bool = False,
) -> Path:
    """A COCO instances json and its images, so that ``load_coco(json, images)`` reads the export back.
    ``path`` ending in ``.json`` is the json, the images going to ``image_dir`` (default: ``images/``
    beside it); any other ``path`` is a folder that receives ``annotations.json`` and ``images/``
    (written whole under a temporary name, then renamed). Returns ``path``.

    Without ``predictions``: the ground truth (``Sample.instances``, and each class's ``Sample.ignore``
    region as one ``iscrowd: 1`` annotation). With them: the predictions, each with its ``score``.
    Masks are RLE (counts as text) with ``area`` and ``bbox`` from pycocotools. Images are named
    ``<sample id><suffix>``: the source file copied byte for byte when the sample was read from one
    (no EXIF orientation tag, same size), else a lossless PNG of its pixels (the demo set, in-memory
    data). ``copy_images=False`` writes the json alone."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        if image_dir is not None:
            raise ExportError(f"image_dir goes with a json path; {path} is a folder, which gets images/ inside.")
        _refuse_existing([path], overwrite)
        _refuse_sources(dataset, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
        try:
            _write_coco(dataset, tmp / COCO_JSON, tmp / "images" if copy_images else None, predictions, category_ids)
            _replace_folder(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path
    image_dir = Path(image_dir) if image_dir is not None else path.parent / "images"
    _refuse_existing([path, image_dir] if copy_images else [path], overwrite)
    if copy_images:
        _refuse_sources(dataset, image_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not copy_images:
        _write_coco(dataset, path, None, predictions, category_ids)
        return path
    image_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_images = Path(tempfile.mkdtemp(prefix=f".{image_dir.name}.", suffix=".part", dir=image_dir.parent))
    try:
        _write_coco(dataset, path, tmp_images, predictions, category_ids, replace_images=image_dir)
    finally:
        shutil.rmtree(tmp_images, ignore_errors=True)
    return path


def _write_coco(
    dataset: Dataset,
    path: Path,
    images: Path | None,
    predictions: Predictions | None,
    category_ids: Mapping[str, int] | None,
    replace_images: Path | None = None,
) -> None:
    """The json at ``path`` (atomically), the images into ``images`` (a new folder), which then replaces
    ``replace_images`` when given (before the json is written: a json never names missing images)."""
    on_sample = None
    if images is not None:
        images.mkdir(exist_ok=True)
        files = ImageFiles(dataset)

        def on_sample(sample: Sample, entry: dict) -> None:
            files.write(sample, images, entry["file_name"])

    content = coco_dataset(dataset, predictions, category_ids, on_sample)
    if images is not None and replace_images is not None:
        _replace_folder(images, replace_images)
    _write_json(content, path)


def mask_polygons(mask: np.ndarray, min_area: float = MIN_PART_AREA) -> list[np.ndarray]:
    """The outer contours of a mask (``cv2.findContours``, external, simple chain) as N x 2 arrays of
    pixel (x, y), one per part; holes are not kept (a YOLO polygon cannot hold one). A part with fewer
    than 3 points or whose polygon through its boundary pixels' centres encloses less than
    ``min_area`` pixels² (single pixels, one-pixel-wide lines) is dropped."""
    image = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(image, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2) for c in contours if len(c) >= 3 and cv2.contourArea(c) >= min_area]


def yolo_lines(instances: Sequence[Instance], classes: dict[str, int], width: int, height: int) -> list[str]:
    """YOLO-seg label lines, ``class x1 y1 x2 y2 ...``: one per polygon part of each instance, pixel
    centres normalised, ((x + 0.5) / width, (y + 0.5) / height), so that ultralytics' rasterisation
    (coordinates times the size, cut to integers) lands on the boundary pixels themselves."""
    lines = []
    for instance in instances:
        if instance.label not in classes:
            raise ExportError(f"An instance labelled {instance.label!r}, not among the classes {list(classes)}.")
        if instance.mask.shape != (height, width):
            raise ExportError(f"An instance mask of shape {instance.mask.shape} on a {height} x {width} image.")
        for points in mask_polygons(instance.mask):
            normalised = (points + 0.5) / (width, height)
            coords = " ".join(f"{v:.{DIGITS}f}" for v in normalised.ravel())
            lines.append(f"{classes[instance.label]} {coords}")
    return lines


def write_yolo(
    dataset: Dataset, path: str | Path, predictions: Predictions | None = None, overwrite: bool = False
) -> Path:
    """An ultralytics YOLO-seg folder at ``path``: ``images/<sample id><suffix>`` (as
    ``write_coco_dataset`` provides them), ``labels/<sample id>.txt`` (``yolo_lines``: the ground-truth
    instances, or ``predictions`` without their scores; an image without objects gets an empty file)
    and ``data.yaml`` (``path`` absolute, ``train`` and ``val`` both ``images``, ``names`` id -> class in
    ``dataset.classes`` order). Crowd / ignore regions have no YOLO form and are left out.
    ``load_yolo(path)`` reads it back (sample ids kept). Returns ``path``."""
    path = Path(path)
    _refuse_existing([path], overwrite)
    _refuse_sources(dataset, path)
    lookup = _predictions_by_id(dataset, predictions) if predictions is not None else None
    classes = {name: number for number, name in enumerate(dataset.classes)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        files = ImageFiles(dataset)
        for sample in dataset:
            files.write(sample, tmp / "images", files.name(sample))
            height, width = sample.image.shape[:2]
            instances = sample.instances if lookup is None else lookup(sample.image_id)
            lines = yolo_lines(instances, classes, width, height)
            (tmp / "labels" / f"{sample.image_id}.txt").write_text("".join(line + "\n" for line in lines))
        spec = {
            "path": str(path.absolute()),
            "train": "images",
            "val": "images",
            "names": {number: name for name, number in classes.items()},
        }
        (tmp / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        _replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------------------------------
# reading predictions back


def read_coco_results(
    path: str | Path, dataset: Dataset, category_ids: Mapping[str, int] | None = None
) -> dict[str, list[Instance]]:
    """Predicted instances per sample id from a COCO results json (``write_coco_results``) or a COCO
    dataset json whose annotations carry scores (``write_coco_dataset(..., predictions=...)``), with the
    ids mapped back as the writers mapped them for ``dataset``. Highest score first per image."""
    from pycocotools import mask as mask_utils

    content = json.loads(Path(path).read_text())
    entries = content.get("annotations") if isinstance(content, dict) else content
    if not isinstance(entries, list):
        raise ExportError(f"{path} is neither a COCO results list nor a COCO json with 'annotations'.")
    samples = {number: sample_id for sample_id, number in coco_image_ids(dataset.ids).items()}
    names = {number: name for name, number in category_table(dataset.classes, category_ids).items()}
    found: dict[str, list[Instance]] = {}
    for entry in entries:
        if entry.get("iscrowd"):
            continue
        if entry.get("image_id") not in samples or entry.get("category_id") not in names:
            raise ExportError(
                f"{path}: an entry for image {entry.get('image_id')!r}, category {entry.get('category_id')!r} "
                f"that dataset {dataset.name!r} does not have; read it with the dataset it was written for."
            )
        segmentation = entry.get("segmentation")
        if not isinstance(segmentation, dict) or not {"size", "counts"} <= set(segmentation):
            raise ExportError(
                f"{path}: an entry for image {entry['image_id']} without an RLE segmentation {{size, counts}}; "
                "read_coco_results reads mask results such as write_coco_results writes."
            )
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, *segmentation["size"])
        else:
            rle = dict(segmentation, counts=str(segmentation["counts"]).encode("ascii"))
        mask = mask_utils.decode(rle).astype(bool)
        instance = Instance(mask, names[entry["category_id"]], float(entry.get("score", 1.0)))
        found.setdefault(samples[entry["image_id"]], []).append(instance)
    return {key: sorted(found[key], key=lambda i: -i.score) for key in found}
