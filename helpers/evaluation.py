"""Evaluate cached results: per-image IoU tables, threshold sweeps, recognition and mosaic accuracy.

Every function receives what it uses (image results, a text encoder, embeddings), never the
whole pipeline, so evaluation runs from the cache without SAM. The arithmetic is in
``helpers.metrics``; which masks are kept is decided by ``helpers.selection.score``.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from . import metrics
from .data import Dataset, LabelledImage, Sample, make_mosaics, object_crops
from .export import Predictions, category_table, coco_dataset, scored_entries
from .masks import MaskSet
from .selection import (
    ImageResult,
    SelectionSettings,
    TextEncoder,
    cosine_span,
    predict,
    score,
    similarities,
    threshold_bounds,
)


def classes_to_evaluate(dataset: Dataset, requested: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(classes to evaluate, classes left out): the requested ones (checked), else those present
    in at least one sample, so a class absent from every image does not enter the averages."""
    if requested:
        dataset.check_classes(list(requested))
        return list(requested), []
    present = dataset.present_classes()
    return present, [name for name in dataset.classes if name not in present]


def pairs(dataset: Dataset, results: Sequence[ImageResult]) -> Iterator[tuple[Sample, ImageResult]]:
    """(sample, result) per image, one image read at a time. Results are matched to samples by
    image id (a sample that turned unreadable is dropped from the dataset and from the pairs);
    results named otherwise (no id in common) or a dataset with repeated ids pair by position.
    Raises ValueError when they cannot be paired."""
    ids = dataset.ids
    result_ids = list(getattr(results, "ids", None) or [r.image_id for r in results])
    by_position = len(set(ids)) != len(ids) or not set(result_ids) & set(ids)
    if by_position and len(result_ids) == len(ids):
        yield from zip(dataset, results, strict=True)  # results made elsewhere, or ids a reader repeated
        return
    position = {image_id: index for index, image_id in enumerate(result_ids)}
    missing = [image_id for image_id in ids if image_id not in position]
    if by_position or missing or len(position) != len(result_ids):
        repeated = len(position) != len(result_ids) or len(set(ids)) != len(ids)
        raise ValueError(
            f"{len(results)} results for {len(ids)} images cannot be paired: "
            + (f"{len(missing)} image(s) without a result, first {missing[:3]}; " if missing else "")
            + ("some image ids repeat; " if repeated else "")
            + "compute them with Pipeline.process_dataset on this dataset."
        )
    for sample in dataset:
        yield sample, results[position[sample.image_id]]


def evaluate(
    dataset: Dataset,
    results: Sequence[ImageResult],
    text: TextEncoder,
    classes: Sequence[str],
    selection: SelectionSettings = SelectionSettings(),
    prompts: dict[str, str] | None = None,
) -> pd.DataFrame:
    """One row per image and class. ``prompts`` maps a class to the text typed for it
    (default: the class name); the softmax mode competes over all of ``classes``."""
    dataset.check_classes(list(classes))
    typed = {name: (prompts or {}).get(name, name) for name in classes}
    rows = []
    for sample, result in pairs(dataset, results):
        rows += image_rows(sample, result, text, typed, selection)
    return pd.DataFrame(rows)


def image_rows(
    sample: Sample, result: ImageResult, text: TextEncoder, typed: dict[str, str], selection: SelectionSettings
) -> list[dict]:
    """``evaluate``'s rows for one image: class -> typed prompt, the softmax competing over all."""
    competitors = list(typed.values())
    rows = []
    for name, prompt in typed.items():
        prediction = predict(result, text, prompt, selection, competitors)
        truth = sample.masks.get(name, np.zeros(sample.image.shape[:2], bool))
        counts = metrics.counts(prediction.mask, truth, sample.ignore_mask(name))
        rows.append(metrics.row(sample.image_id, name, counts, int(prediction.keep.sum())))
    return rows


def class_sweep(
    dataset: Dataset,
    results: Sequence[ImageResult],
    text: TextEncoder,
    name: str,
    thresholds: Sequence[float],
    mode: str = "threshold",
    classes: Sequence[str] | None = None,
    negatives: Sequence[str] = (),
    prompt: str | None = None,
) -> pd.DataFrame:
    """The threshold sweep of class ``name`` (typed as ``prompt``) from cached embeddings alone."""
    settings = SelectionSettings(mode, negatives=tuple(negatives))
    return _sweeps(dataset, results, text, {name: prompt or name}, thresholds, settings, classes)[name]


def _sweeps(
    dataset: Dataset,
    results: Sequence[ImageResult],
    text: TextEncoder,
    prompts: dict[str, str],
    thresholds: Sequence[float],
    settings: SelectionSettings,
    classes: Sequence[str] | None,
) -> dict[str, pd.DataFrame]:
    """Sweeps of several classes (name -> typed prompt) in one pass over the images."""
    scores: dict[str, list[np.ndarray]] = {name: [] for name in prompts}

    def scored() -> Iterator[tuple[Sample, MaskSet]]:
        for sample, result in pairs(dataset, results):
            for name, prompt in prompts.items():
                scores[name].append(score(result.embeddings, text, prompt, settings, classes).scores)
            yield sample, result.masks

    tables = metrics.atom_tables(scored(), list(prompts))
    return {name: metrics.sweep(tables[name], scores[name], thresholds) for name in prompts}


def threshold_grid(
    results: Sequence[ImageResult],
    text: TextEncoder,
    classes: Sequence[str],
    step: float = 0.01,
    images: int | None = 200,
) -> np.ndarray:
    """Cosine thresholds for a sweep, every ``step``: from the lowest similarity of this run's regions to a class
    to just above the highest (``selection.threshold_bounds``) over up to ``images`` images spread over the run (all
    with None), so on those images the sweep spans every threshold that keeps some masks but not all; 0-0.5 when no
    image has a region or no class is given."""
    if not 0 < step <= 0.05:
        raise ValueError(f"step={step}: the grid's step must lie in (0, 0.05], e.g. 0.01.")
    if images is not None and images < 1:
        raise ValueError(f"images={images}: read at least one image for the span, or None for all.")
    low, high = threshold_bounds(cosine_span(results, text, classes, images)) or (0.0, 0.5)
    count = math.ceil((high - low) / step - 1e-9)  # the last threshold reaches high
    return np.round(low + step * np.arange(count + 1), 6)


def best_thresholds(
    dataset: Dataset, results: Sequence[ImageResult], text: TextEncoder, classes: Sequence[str], thresholds
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Per class the threshold with the best mean IoU (NaN where the class has no data), and the sweeps."""
    sweeps = _sweeps(dataset, results, text, {n: n for n in classes}, thresholds, SelectionSettings(), None)
    best = []
    for name in classes:
        threshold, value = metrics.best_threshold(sweeps[name])
        best.append({"class": name, "best_threshold": threshold, "mean_iou": value})
    return pd.DataFrame(best), sweeps


def recognition_accuracy(
    items: Sequence[LabelledImage],
    classes: Sequence[str],
    text: TextEncoder,
    image_embeddings: np.ndarray,
    results: Sequence[ImageResult],
) -> dict:
    """Whole-image classification accuracy of CLIP alone (``image_embeddings``: one per item)
    and of SAM + CLIP (``results``: each item's regions; the class of the region that matches
    any class best, the whole image when SAM found nothing)."""
    embeddings = text(list(classes))
    truth = np.array([list(classes).index(item.label) for item in items])
    clip_alone = similarities(image_embeddings, embeddings).argmax(1)
    sam_clip = []
    for result, fallback in zip(results, clip_alone, strict=True):
        sims = similarities(result.embeddings, embeddings)
        sam_clip.append(int(np.unravel_index(sims.argmax(), sims.shape)[1]) if sims.size else int(fallback))
    return {
        "clip_alone": float((clip_alone == truth).mean()),
        "sam_clip": float((np.array(sam_clip) == truth).mean()),
        "images": len(items),
    }


def mosaic_top1_hits(
    dataset: Dataset, results: Sequence[ImageResult], text: TextEncoder
) -> list[tuple[str, str, bool]]:
    """Per (mosaic, class) pair, in the dataset's order: (image id, class, whether the top-1 region for the class
    lies mostly (> 50 %) in the class's tile)."""
    hits = []
    for sample, result in pairs(dataset, results):
        for name, tile in sample.masks.items():
            mask = predict(result, text, name, SelectionSettings("top1")).mask
            area = mask.sum()
            hits.append((sample.image_id, name, bool(area) and bool((mask & tile).sum() > 0.5 * area)))
    return hits


def mosaic_top1_accuracy(dataset: Dataset, results: Sequence[ImageResult], text: TextEncoder) -> float:
    """Share of (mosaic, class) pairs whose top-1 region lies mostly (> 50 %) in the class's tile
    (``mosaic_top1_hits``); NaN without pairs."""
    hits = [hit for _, _, hit in mosaic_top1_hits(dataset, results, text)]
    return sum(hits) / len(hits) if hits else float("nan")


def recognition_sets(dataset: Dataset, count: int = 8, mosaics: int = 2) -> tuple[list[LabelledImage], Dataset | None]:
    """The ground-truth object crops (up to ``count``) for recognition accuracy and, with four
    classes or more, 4-class mosaics of them; deterministic, so notebook 02 can fill the cache
    with exactly what notebook 03 evaluates."""
    items = object_crops(dataset, limit=count)
    labels = {item.label for item in items}
    return items, (make_mosaics(items, per_mosaic=4, tile=112, count=mosaics) if len(labels) >= 4 else None)


def mask_ap(dataset: Dataset, predictions: Predictions, classes: Sequence[str] | None = None) -> dict:
    """COCO's mask AP of predicted instances (pycocotools' COCOeval, ``iouType="segm"``): ``AP`` (IoU
    0.50:0.95), ``AP50``, ``AP75``, ``AR100`` and ``per_class`` {name: AP} (NaN for a class without
    ground truth, which COCO leaves out of the mean). Ground truth is ``Sample.instances``, with each
    class's ``Sample.ignore`` region as a crowd annotation (a detection on it is neither right nor
    wrong). ``predictions``: per image a list of ``Instance``, aligned with ``dataset.ids``, or a dict
    image id -> list. ``classes`` limits the evaluation (default: every class of the dataset).
    Built in memory with the exporters' dicts: equal to COCOeval on ``write_coco_dataset`` and
    ``write_coco_results`` files. Images are read one at a time; at most 100 detections per image count."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if classes is not None:
        dataset.check_classes(list(classes))
    names = list(classes) if classes is not None else list(dataset.classes)
    table = category_table(dataset.classes)
    truth = coco_dataset(dataset, file_names=False)
    wanted = {table[name] for name in names}
    if not any(not a["iscrowd"] and a["category_id"] in wanted for a in truth["annotations"]):
        raise ValueError(
            f"Dataset {dataset.name!r} has no ground-truth instances for {names}: mask AP needs objects "
            "(Sample.instances); evaluate classes that occur, or use evaluate() for pixel IoU."
        )
    sizes = {image["id"]: [image["height"], image["width"]] for image in truth["images"]}
    results = scored_entries(dataset, predictions)
    for entry in results:
        if entry["segmentation"]["size"] != sizes.get(entry["image_id"]):
            raise ValueError(
                f"A prediction of size {entry['segmentation']['size']} for image {entry['image_id']} of size "
                f"{sizes.get(entry['image_id'])}; predicted masks must be at the image's full size."
            )
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints every step
        gt = COCO()
        gt.dataset = truth
        gt.createIndex()
        detections = COCO()
        detections.dataset = {
            "images": truth["images"],
            "categories": truth["categories"],
            "annotations": [dict(entry, id=number) for number, entry in enumerate(results, 1)],
        }
        detections.createIndex()
        evaluator = COCOeval(gt, detections, iouType="segm")
        evaluator.params.catIds = sorted(wanted)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    precision = evaluator.eval["precision"]  # [IoU threshold, recall, category, area range, max detections]
    per_class = {}
    for position, category in enumerate(evaluator.params.catIds):
        values = precision[:, :, position, 0, -1]
        name = next(n for n, c in table.items() if c == category)
        per_class[name] = float(values[values > -1].mean()) if (values > -1).any() else float("nan")
    return {
        "AP": float(stats[0]),
        "AP50": float(stats[1]),
        "AP75": float(stats[2]),
        "AR100": float(stats[8]),
        "per_class": {name: per_class[name] for name in names},
    }
