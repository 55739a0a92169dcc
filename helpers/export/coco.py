"""COCO: results json, instances json (ground truth or predictions) with the images, and reading
results back. RLE masks through pycocotools."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from ..data.types import Dataset, Sample
from ..files import atomic_folder, new_folder_beside, replace_folder
from ..instances import Instance
from .common import (
    ExportError,
    ImageFiles,
    Predictions,
    _predictions_by_id,
    _refuse_existing,
    _refuse_sources,
    _write_json,
    category_table,
    check_export_folder,
    coco_image_ids,
)

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
        check_export_folder(dataset, path, overwrite)
        with atomic_folder(path) as tmp:
            _write_coco(dataset, tmp / COCO_JSON, tmp / "images" if copy_images else None, predictions, category_ids)
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
    tmp_images = new_folder_beside(image_dir)
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
        replace_folder(images, replace_images)
    _write_json(content, path)


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
