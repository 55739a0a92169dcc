"""Where a mistake comes from: SAM missed the object, or CLIP picked the wrong mask.

Per class, three numbers side by side:
- **pipeline**: the full SAM + CLIP mean IoU (``evaluation.evaluate``);
- **SAM ceiling**: the best IoU a perfect chooser could reach with the image's (filtered) SAM
  masks: the best single mask, the best union found by greedy selection (achievable), and the
  best union of mask atoms (an upper bound: atoms cannot always be chosen apart);
- **CLIP with perfect masks**: the ground-truth objects cut out as SAM's masks would be and
  classified among the classes (accuracy), and the IoU when the ground-truth masks are the
  proposals that selection chooses from.
A class with a low pipeline IoU but a high SAM ceiling and good CLIP scores on perfect masks
loses in selection; a low SAM ceiling means SAM never proposed the object.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from . import metrics
from .clip_scoring import encode_masks
from .data import Dataset, Sample
from .evaluation import image_rows, pairs
from .masks import MaskSet
from .models.loading import LoadedClip
from .regions import RegionSettings
from .selection import ImageResult, SelectionSettings, TextEncoder, similarities


def _iou(inter: np.ndarray, pred: np.ndarray, truth: float) -> np.ndarray:
    union = pred + truth - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), np.nan)


def mask_ceilings(masks: MaskSet, truth: np.ndarray, ignore: np.ndarray | None = None) -> dict[str, float]:
    """Best single mask IoU, best greedy union IoU and the atom-union upper bound for ``truth``
    (NaN when the class is absent: nothing to find)."""
    valid = ~ignore.ravel() if ignore is not None else np.ones(truth.size, bool)
    n_atoms = masks.membership.shape[0]
    atoms = masks.atoms.ravel()
    t = np.bincount(atoms, weights=truth.ravel() & valid, minlength=n_atoms)
    a = np.bincount(atoms, weights=valid, minlength=n_atoms)
    total = float(t.sum())
    if total == 0:
        return {"sam_best_mask": np.nan, "sam_best_union": np.nan, "sam_atom_bound": np.nan}
    member = masks.membership.astype(np.float64)
    single = _iou(member.T @ t, member.T @ a, total) if len(masks) else np.zeros(0)
    covered = np.zeros(n_atoms, bool)
    best = 0.0
    while len(masks):  # add the mask that raises the union's IoU most, while one does
        fresh = member.T @ np.where(covered, 0.0, 1.0)
        gains = _iou(t[covered].sum() + member.T @ (t * ~covered), a[covered].sum() + member.T @ (a * ~covered), total)
        gains[fresh == 0] = -1
        j = int(np.nanargmax(gains))
        if not gains[j] > best:
            break
        best, covered = float(gains[j]), covered | masks.membership[:, j]
    reachable = masks.membership.any(axis=1) & (a > 0)
    order = np.argsort(-(t[reachable] / a[reachable]), kind="stable")
    inter, pred = np.cumsum(t[reachable][order]), np.cumsum(a[reachable][order])
    bound = float(np.nanmax(_iou(inter, pred, total), initial=0.0))
    return {"sam_best_mask": float(np.nanmax(single, initial=0.0)), "sam_best_union": best, "sam_atom_bound": bound}


def truth_result(
    sample: Sample,
    clip: LoadedClip,
    classes: Sequence[str],
    regions: RegionSettings = RegionSettings(),
    batch_size: int | None = None,
    precision: str = "float32",
) -> tuple[ImageResult, list[str]]:
    """The ground-truth masks of ``classes`` present in ``sample`` as proposals (cut out and
    embedded exactly as SAM's masks are), and which class each proposal is."""
    names = [n for n in classes if n in sample.masks and sample.masks[n].any()]
    shape = sample.image.shape[:2]
    masks = MaskSet.from_masks(np.stack([sample.masks[n] for n in names]) if names else np.zeros((0, *shape), bool))
    embedded = encode_masks(clip, sample.image, masks, regions, batch_size, precision)
    return ImageResult(sample.image_id, masks, embedded), names


def truth_results(
    dataset: Dataset,
    clip: LoadedClip,
    classes: Sequence[str],
    regions: RegionSettings = RegionSettings(),
    batch_size: int | None = None,
    precision: str = "float32",
) -> tuple[list[ImageResult], list[list[str]]]:
    """``truth_result`` for every image (kept in memory: small datasets; ``error_breakdown`` streams)."""
    made = [truth_result(sample, clip, classes, regions, batch_size, precision) for sample in dataset]
    return [result for result, _ in made], [names for _, names in made]


def error_breakdown(
    dataset: Dataset,
    results: Sequence[ImageResult],
    text: TextEncoder,
    clip: LoadedClip,
    classes: Sequence[str],
    selection: SelectionSettings = SelectionSettings(),
    regions: RegionSettings = RegionSettings(),
    precision: str = "float32",
) -> pd.DataFrame:
    """One row per class: pipeline mean IoU, SAM's ceilings, CLIP on perfect masks, and a verdict.
    One pass over the images (each read once); nothing per image is kept but the numbers."""
    classes = list(classes)
    dataset.check_classes(classes)
    typed = {name: name for name in classes}
    class_text = text(classes)
    pipeline_rows, truth_rows = [], []
    hits: dict[str, list[bool]] = {n: [] for n in classes}
    ceilings: dict[str, list[dict]] = {n: [] for n in classes}
    for sample, result in pairs(dataset, results):
        pipeline_rows += image_rows(sample, result, text, typed, selection)
        gt_result, names = truth_result(sample, clip, classes, regions, precision=precision)
        truth_rows += image_rows(sample, gt_result, text, typed, selection)
        if names:
            guesses = similarities(gt_result.embeddings, class_text).argmax(axis=1)
            for name, guess in zip(names, guesses):
                hits[name].append(classes[guess] == name)
        for name in classes:
            truth = sample.masks.get(name, np.zeros(result.masks.shape, bool))
            ceilings[name].append(mask_ceilings(result.masks, truth, sample.ignore_mask(name)))
    pipeline = metrics.summarize(pd.DataFrame(pipeline_rows)).set_index("class")
    on_truth = metrics.summarize(pd.DataFrame(truth_rows)).set_index("class")
    rows = []
    for name in classes:
        frame = pd.DataFrame(ceilings[name])
        with np.errstate(all="ignore"):
            row = {"class": name, "pipeline_iou": pipeline.loc[name, "mean_iou"], **frame.mean().to_dict()}
        row["clip_recognition"] = float(np.mean(hits[name])) if hits[name] else np.nan
        row["clip_on_truth_iou"] = on_truth.loc[name, "mean_iou"]
        row["verdict"] = verdict(row)
        rows.append(row)
    return pd.DataFrame(rows)


def verdict(row: dict, good: float = 0.7, gap: float = 0.1) -> str:
    """Which stage loses the most for a class, in words; a good pipeline IoU more than ``gap`` under SAM's ceiling
    (its best union of masks) says what the choosing of masks loses."""
    if np.isnan(row["sam_best_union"]):
        return "no object of this class in the images"
    if row["sam_best_union"] < good:
        return "SAM: no combination of its masks covers the object well"
    if row["pipeline_iou"] >= good:
        lost = row["sam_best_union"] - row["pipeline_iou"]
        if lost <= gap:
            return "fine"
        who = "the selection" if row["clip_recognition"] >= good else "CLIP (it misnames the object even cut out well)"
        return f"good, but {lost:.2f} under SAM's ceiling: {who} keeps other masks or misses some"
    if not row["clip_recognition"] >= good:
        return "CLIP: does not recognise the object even when cut out perfectly"
    return "selection: the right masks exist and CLIP knows the object, but other masks are picked or these missed"
