"""IoU, precision and recall per image and class; threshold sweeps; the source papers' accuracies.

Conventions (tested):
- Pixels in the sample's ignore region (COCO crowd, CamVid "Unlabelled") count for nothing.
- IoU = |P & G| / |P | G|. Empty prediction and empty ground truth: IoU is NaN (nothing to find,
  nothing found) and the image does not enter the mean IoU; empty ground truth with a non-empty
  prediction: IoU 0.
- precision = |P & G| / |P| (NaN when P is empty); recall = |P & G| / |G| (NaN when G is empty).
- mean IoU averages the per-image IoUs that are not NaN; dataset IoU = sum of intersections /
  sum of unions over all images (large objects weigh more).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .clip_scoring import encode_images
from .data import Dataset, LabelledImage
from .pipeline import ImageResult, Pipeline
from .selection import SelectionSettings, mask_scores, prompt_columns, similarities


@dataclass
class Counts:
    intersection: int
    predicted: int
    truth: int

    @property
    def union(self) -> int:
        return self.predicted + self.truth - self.intersection

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union else float("nan")

    @property
    def precision(self) -> float:
        return self.intersection / self.predicted if self.predicted else float("nan")

    @property
    def recall(self) -> float:
        return self.intersection / self.truth if self.truth else float("nan")


def counts(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> Counts:
    if pred.shape != truth.shape:
        raise ValueError(f"Prediction is {pred.shape} but the ground truth is {truth.shape}.")
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if ignore is not None:
        pred, truth = pred & ~ignore, truth & ~ignore
    return Counts(int((pred & truth).sum()), int(pred.sum()), int(truth.sum()))


def iou(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> float:
    return counts(pred, truth, ignore).iou


def _row(image_id: str, name: str, c: Counts, kept: int) -> dict:
    return {
        "image_id": image_id,
        "class": name,
        "iou": c.iou,
        "precision": c.precision,
        "recall": c.recall,
        "intersection": c.intersection,
        "union": c.union,
        "predicted": c.predicted,
        "truth": c.truth,
        "kept_masks": kept,
    }


def evaluate(
    dataset: Dataset,
    results: Sequence[ImageResult],
    pipeline: Pipeline,
    classes: Sequence[str],
    selection: SelectionSettings = SelectionSettings(),
    prompts: dict[str, str] | None = None,
) -> pd.DataFrame:
    """One row per image and class. ``prompts`` maps a class to the text typed for it
    (default: the class name); the softmax mode competes over all of ``classes``."""
    dataset.check_classes(list(classes))
    typed = {name: (prompts or {}).get(name, name) for name in classes}
    competitors = list(typed.values())
    rows = []
    for sample, result in zip(dataset.samples, results, strict=True):
        for name in classes:
            prediction = pipeline.predict(result, typed[name], selection, competitors)
            truth = sample.masks.get(name, np.zeros(sample.image.shape[:2], bool))
            rows.append(
                _row(
                    sample.image_id,
                    name,
                    counts(prediction.mask, truth, sample.ignore_mask(name)),
                    int(prediction.keep.sum()),
                )
            )
    return pd.DataFrame(rows)


def summarize(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per class: mean IoU, dataset IoU, mean precision and recall, and how many images counted."""
    grouped = per_image.groupby("class", sort=False)
    summary = pd.DataFrame(
        {
            "mean_iou": grouped["iou"].mean(),  # pandas skips NaN
            "dataset_iou": grouped["intersection"].sum() / grouped["union"].sum().replace(0, np.nan),
            "precision": grouped["precision"].mean(),
            "recall": grouped["recall"].mean(),
            "images_scored": grouped["iou"].count(),
            "images": grouped["iou"].size(),
        }
    )
    return summary.reset_index()


# --- threshold sweeps ---------------------------------------------------------------------------


@dataclass
class AtomTable:
    """Per image, the pixel counts each atom contributes, for one class (built once)."""

    results: list[ImageResult]
    truth_per_atom: list[np.ndarray]  # pixels of the class in each atom (ignore excluded)
    valid_per_atom: list[np.ndarray]  # pixels not ignored in each atom
    truth_total: np.ndarray  # per image


def atom_table(dataset: Dataset, results: Sequence[ImageResult], name: str) -> AtomTable:
    truth_rows, valid_rows, totals = [], [], []
    for sample, result in zip(dataset.samples, results, strict=True):
        atoms = result.masks.atoms.ravel()
        n_atoms = result.masks.membership.shape[0]
        truth = sample.masks.get(name, np.zeros(atoms.shape, bool)).ravel()
        ignore = sample.ignore_mask(name)
        valid = ~ignore.ravel() if ignore is not None else np.ones(atoms.shape, bool)
        truth = truth & valid
        truth_rows.append(np.bincount(atoms, weights=truth, minlength=n_atoms))
        valid_rows.append(np.bincount(atoms, weights=valid, minlength=n_atoms))
        totals.append(truth.sum())
    return AtomTable(list(results), truth_rows, valid_rows, np.asarray(totals, np.float64))


def sweep(
    table: AtomTable,
    pipeline: Pipeline,
    prompt: str,
    thresholds: Sequence[float],
    mode: str = "threshold",
    classes: Sequence[str] | None = None,
    negatives: Sequence[str] = (),
) -> pd.DataFrame:
    """IoU, precision and recall against the threshold, from cached embeddings alone.

    A pixel is predicted at threshold t when the best score among the masks covering it is
    >= t, so each image needs one sort of its atoms, whatever the number of thresholds.
    """
    names = prompt_columns(prompt, classes, negatives)
    text = pipeline.text(names)
    thresholds = np.asarray(thresholds, np.float64)
    shape = (len(table.results), len(thresholds))
    inter, pred = np.zeros(shape), np.zeros(shape)
    for i, result in enumerate(table.results):
        scores = mask_scores(similarities(result.embeddings, text), names.index(prompt), mode, len(negatives))
        if scores.size == 0:
            continue
        atom_score = np.where(result.masks.membership, scores[None, :], -np.inf).max(axis=1)
        order = np.argsort(-atom_score, kind="stable")
        sorted_scores = atom_score[order]
        cum_truth = np.concatenate([[0], np.cumsum(table.truth_per_atom[i][order])])
        cum_valid = np.concatenate([[0], np.cumsum(table.valid_per_atom[i][order])])
        # number of atoms with score >= t (scores sorted descending)
        taken = np.searchsorted(-sorted_scores, -thresholds, side="right")
        inter[i], pred[i] = cum_truth[taken], cum_valid[taken]
    truth = table.truth_total[:, None]
    union = pred + truth - inter
    summed_union = union.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a threshold where no image is scored gives NaN
        return pd.DataFrame(
            {
                "threshold": thresholds,
                "mean_iou": np.nanmean(np.where(union > 0, inter / union, np.nan), axis=0),
                "dataset_iou": np.where(summed_union > 0, inter.sum(0) / summed_union, np.nan),
                "precision": np.nanmean(np.where(pred > 0, inter / pred, np.nan), axis=0),
                "recall": np.nanmean(np.where(truth > 0, inter / truth, np.nan), axis=0),
            }
        )


def best_threshold(sweep_table: pd.DataFrame, metric: str = "mean_iou") -> tuple[float, float]:
    """(threshold, value) where ``metric`` peaks."""
    index = sweep_table[metric].idxmax()
    return float(sweep_table.loc[index, "threshold"]), float(sweep_table.loc[index, metric])


# --- the source papers' other measures ----------------------------------------------------------


def recognition_accuracy(items: Sequence[LabelledImage], classes: Sequence[str], pipeline: Pipeline) -> dict:
    """Whole-image classification accuracy of CLIP alone and of SAM + CLIP (the class of the
    region that matches any class best; the whole image when SAM finds nothing)."""
    text = pipeline.text(list(classes))
    truth = np.array([list(classes).index(item.label) for item in items])
    whole = similarities(encode_images(pipeline.clip, [item.image for item in items]), text)
    clip_alone = whole.argmax(1)
    sam_clip = []
    for item, fallback in zip(items, clip_alone):
        result = pipeline.process(item.image)
        sims = similarities(result.embeddings, text)
        sam_clip.append(int(np.unravel_index(sims.argmax(), sims.shape)[1]) if sims.size else int(fallback))
    return {
        "clip_alone": float((clip_alone == truth).mean()),
        "sam_clip": float((np.array(sam_clip) == truth).mean()),
        "images": len(items),
    }


def mosaic_top1_accuracy(dataset: Dataset, results: Sequence[ImageResult], pipeline: Pipeline) -> float:
    """Share of (mosaic, class) pairs whose top-1 region lies mostly (> 50 %) in the class's tile."""
    hits = trials = 0
    for sample, result in zip(dataset.samples, results, strict=True):
        for name, tile in sample.masks.items():
            prediction = pipeline.predict(result, name, SelectionSettings("top1"))
            trials += 1
            area = prediction.mask.sum()
            hits += bool(area) and (prediction.mask & tile).sum() > 0.5 * area
    return hits / trials if trials else float("nan")


# --- saving -------------------------------------------------------------------------------------


def save_results(folder: str | Path, per_image: pd.DataFrame, summary: pd.DataFrame, settings: dict) -> Path:
    """CSV tables and a JSON file holding the settings next to the summary, in a new run folder."""
    run = Path(folder) / time.strftime("run_%Y%m%d_%H%M%S")
    suffix = 0
    while run.exists():
        suffix += 1
        run = run.with_name(f"{run.name.split('__')[0]}__{suffix}")
    run.mkdir(parents=True)
    per_image.to_csv(run / "per_image.csv", index=False)
    summary.to_csv(run / "summary.csv", index=False)
    plain = {k: asdict(v) if is_dataclass(v) else v for k, v in settings.items()}
    record = {"settings": plain, "summary": json.loads(summary.to_json(orient="records"))}
    (run / "results.json").write_text(json.dumps(record, indent=1, default=str))
    return run


def compare_runs(*runs: str | Path) -> pd.DataFrame:
    """Summaries of several saved runs side by side (one row per run and class)."""
    frames = []
    for run in runs:
        frame = pd.read_csv(Path(run) / "summary.csv")
        frame.insert(0, "run", Path(run).name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
