"""IoU, precision and recall per image and class, their summaries, and threshold sweeps.

Pure arithmetic on masks and scores: nothing here runs or needs a model (``helpers.evaluation``
feeds it from cached results). Conventions (tested):
- Pixels in the sample's ignore region (COCO crowd, CamVid "Unlabelled") count for nothing.
- IoU = |P & G| / |P | G|. Empty prediction and empty ground truth: IoU is NaN (nothing to find,
  nothing found) and the image does not enter the mean IoU; empty ground truth with a non-empty
  prediction: IoU 0.
- precision = |P & G| / |P| (NaN when P is empty); recall = |P & G| / |G| (NaN when G is empty).
- mean IoU averages the per-image IoUs that are not NaN; dataset IoU = sum of intersections /
  sum of unions over all images (large objects weigh more). A class with no scored image has
  NaN everywhere and no best threshold.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .data import Sample
from .masks import MaskSet


@dataclass
class Counts:
    """Pixel counts of one prediction against one ground truth; IoU, precision and recall from them."""

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


def _binary(array: np.ndarray, what: str, shape: tuple[int, ...] | None) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != bool and not (np.issubdtype(array.dtype, np.integer) and set(np.unique(array)) <= {0, 1}):
        raise ValueError(
            f"The {what} must be a boolean (or 0/1) H x W mask, got dtype {array.dtype} with values "
            f"{np.unique(array)[:5]}...; threshold soft masks first, e.g. mask > 0.5."
        )
    if shape is not None and array.shape != shape:
        raise ValueError(f"The {what} is {array.shape} but the ground truth is {shape}: masks must match the image.")
    return array.astype(bool)


def counts(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> Counts:
    """Pixel counts of ``pred`` against ``truth`` (both H x W boolean), ``ignore`` left out."""
    truth = _binary(truth, "ground truth", None)
    pred = _binary(pred, "prediction", truth.shape)
    if ignore is not None:
        ignore = _binary(ignore, "ignore mask", truth.shape)
        pred, truth = pred & ~ignore, truth & ~ignore
    return Counts(int((pred & truth).sum()), int(pred.sum()), int(truth.sum()))


def iou(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of ``pred`` and ``truth`` (NaN when both are empty), ``ignore`` left out."""
    return counts(pred, truth, ignore).iou


def row(image_id: str, name: str, c: Counts, kept: int) -> dict:
    """One line of the per-image table."""
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


def summarize(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per class: mean IoU, dataset IoU, mean precision and recall, and how many images counted
    (a class no image scored shows NaN and ``images_scored`` 0)."""
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
    """Per image, the pixel counts each mask atom contributes, for one class (built once). Only the
    atoms' mask membership is kept, not the H x W atom maps, so a table costs little per image."""

    membership: list[np.ndarray]  # per image: n_atoms x N bool (which masks cover each atom)
    truth_per_atom: list[np.ndarray]  # pixels of the class in each atom (ignore excluded)
    valid_per_atom: list[np.ndarray]  # pixels not ignored in each atom
    truth_total: np.ndarray  # per image


def atom_table(samples: Sequence[Sample], masks: Sequence[MaskSet], name: str) -> AtomTable:
    """The atom table of class ``name`` over ``samples`` and their (filtered) SAM masks."""
    return atom_tables(zip(samples, masks, strict=True), [name])[name]


def atom_tables(pairs: Iterable[tuple[Sample, MaskSet]], names: Sequence[str]) -> dict[str, AtomTable]:
    """The atom tables of several classes in one pass over (sample, masks) pairs: each image is
    read once, whatever the number of classes (what a lazy dataset needs)."""
    rows: dict[str, tuple[list, list, list]] = {name: ([], [], []) for name in names}
    memberships = []
    for sample, mask_set in pairs:
        atoms = mask_set.atoms.ravel()
        n_atoms = mask_set.membership.shape[0]
        memberships.append(mask_set.membership)
        for name in names:
            truth = sample.masks.get(name, np.zeros(atoms.shape, bool)).ravel()
            ignore = sample.ignore_mask(name)
            valid = ~ignore.ravel() if ignore is not None else np.ones(atoms.shape, bool)
            truth = truth & valid
            truth_rows, valid_rows, totals = rows[name]
            truth_rows.append(np.bincount(atoms, weights=truth, minlength=n_atoms))
            valid_rows.append(np.bincount(atoms, weights=valid, minlength=n_atoms))
            totals.append(truth.sum())
    return {
        name: AtomTable(memberships, truth, valid, np.asarray(totals, np.float64))
        for name, (truth, valid, totals) in rows.items()
    }


def sweep(table: AtomTable, scores: Sequence[np.ndarray], thresholds: Sequence[float]) -> pd.DataFrame:
    """IoU, precision and recall against the threshold, given each image's mask ``scores``.

    A pixel is predicted at threshold t when the best score among the masks covering it is
    >= t, so each image needs one sort of its atoms, whatever the number of thresholds.
    Thresholds must be finite (as ``SelectionSettings`` requires).
    """
    thresholds = np.asarray(thresholds, np.float64)
    if not np.all(np.isfinite(thresholds)):
        raise ValueError("Sweep thresholds must be finite numbers (no NaN or infinity).")
    shape = (len(table.membership), len(thresholds))
    inter, pred = np.zeros(shape), np.zeros(shape)
    for i, (membership, image_scores) in enumerate(zip(table.membership, scores, strict=True)):
        if image_scores.size == 0:
            continue
        atom_score = np.where(membership, image_scores[None, :], -np.inf).max(axis=1)
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
    """(threshold, value) where ``metric`` peaks; (NaN, NaN) when no threshold scored anything, or when the class
    has no ground-truth pixel in any image (recall NaN throughout: each threshold's IoU is 0 or undefined, and
    the lowest would "win" with 0)."""
    values = sweep_table[metric]
    no_truth = "recall" in sweep_table and sweep_table["recall"].isna().all()
    if values.isna().all() or no_truth:
        return float("nan"), float("nan")
    index = values.idxmax()
    return float(sweep_table.loc[index, "threshold"]), float(sweep_table.loc[index, metric])
