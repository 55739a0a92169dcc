"""Evaluate cached results: per-image IoU tables, threshold sweeps, recognition and mosaic accuracy.

Every function receives what it uses (image results, a text encoder, embeddings), never the
whole pipeline, so evaluation runs from the cache without SAM. The arithmetic is in
``helpers.metrics``; which masks are kept is decided by ``helpers.selection.score``.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from . import metrics
from .data import Dataset, LabelledImage, Sample, make_mosaics, object_crops
from .masks import MaskSet
from .selection import ImageResult, SelectionSettings, TextEncoder, predict, score, similarities


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
    results with other ids pair by position. Raises ValueError when they cannot be paired."""
    ids = dataset.ids
    result_ids = list(getattr(results, "ids", None) or [r.image_id for r in results])
    if result_ids != ids and len(result_ids) == len(ids) and set(result_ids) != set(ids):
        yield from zip(dataset, results, strict=True)  # results made elsewhere, named otherwise
        return
    position = {image_id: index for index, image_id in enumerate(result_ids)}
    missing = [image_id for image_id in ids if image_id not in position]
    if missing or len(position) != len(result_ids):
        raise ValueError(
            f"{len(results)} results for {len(ids)} images ({len(missing)} without a result, first "
            f"{missing[:3]}): compute them with Pipeline.process_dataset on this dataset."
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


def mosaic_top1_accuracy(dataset: Dataset, results: Sequence[ImageResult], text: TextEncoder) -> float:
    """Share of (mosaic, class) pairs whose top-1 region lies mostly (> 50 %) in the class's tile."""
    hits = trials = 0
    for sample, result in pairs(dataset, results):
        for name, tile in sample.masks.items():
            prediction = predict(result, text, name, SelectionSettings("top1"))
            trials += 1
            area = prediction.mask.sum()
            hits += bool(area) and (prediction.mask & tile).sum() > 0.5 * area
    return hits / trials if trials else float("nan")


def recognition_sets(dataset: Dataset, count: int = 8, mosaics: int = 2) -> tuple[list[LabelledImage], Dataset | None]:
    """The ground-truth object crops (up to ``count``) for recognition accuracy and, with four
    classes or more, 4-class mosaics of them; deterministic, so notebook 02 can fill the cache
    with exactly what notebook 03 evaluates."""
    items = object_crops(dataset, limit=count)
    labels = {item.label for item in items}
    return items, (make_mosaics(items, per_mosaic=4, tile=112, count=mosaics) if len(labels) >= 4 else None)
