"""Objects one by one: an instance is a mask with a class label, a score and a box.

Ground truth keeps them per annotation (``Sample.instances``, score 1.0); ``from_result`` turns one
image's cached SAM masks and CLIP embeddings into predicted instances for a whole class list:

1. every mask is scored against the classes plus the negative prompts (``SelectionSettings.negatives``,
   e.g. "background") and goes to the one it matches best; a mask won by a negative is dropped;
2. its score is the softmax probability of that class over those prompts at the CLIP's own logit scale
   (100 for OpenAI's, about 14 for the demo CLIP), a number between 0 and 1 that compares across images (what
   COCOeval ranks detections by);
3. duplicates of one object (SAM's part / whole masks) are removed by mask NMS within each class:
   from the highest score down, a mask whose IoU with a kept mask of its class exceeds ``nms_iou``
   (0.5) is dropped;
4. at most ``max_instances`` (100, COCOeval's maxDets) per image, highest scores first.
No SAM or CLIP image work: only the cache's masks and embeddings and the class names' text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .masks import MaskSet
from .selection import ImageResult, SelectionSettings, TextEncoder, logit_scale, similarities, softmax


@dataclass
class Instance:
    """One object: an H x W boolean ``mask``, its class ``label``, a ``score`` (1.0 for ground truth)
    and its ``box`` (x0, y0, x1, y1) in pixels, x1 and y1 exclusive (width = x1 - x0)."""

    mask: np.ndarray
    label: str
    score: float = 1.0
    box: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, bool)
        if self.mask.ndim != 2:
            raise ValueError(f"An instance mask is H x W, got shape {self.mask.shape}.")
        if self.box is None:
            self.box = mask_box(self.mask)

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a mask's pixels, x1 and y1 exclusive; (0, 0, 0, 0) when empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return (0, 0, 0, 0)
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def from_result(
    result: ImageResult,
    text: TextEncoder,
    classes: Sequence[str],
    selection: SelectionSettings = SelectionSettings(),
    nms_iou: float = 0.5,
    max_instances: int = 100,
    min_score: float = 0.0,
) -> list[Instance]:
    """One image's predicted instances for ``classes`` (see the module docstring for the rules)."""
    classes = list(classes)
    if not classes:
        raise ValueError("An empty class list: name at least one class to find, e.g. classes=['chair'].")
    masks = result.masks
    if len(masks) == 0:
        return []
    negatives = [n for n in selection.negatives if n not in classes]
    sims = similarities(result.embeddings, text(classes + negatives))
    probabilities = softmax(logit_scale(text) * sims.astype(np.float64), axis=1)  # float64: no ties at 1.0
    winner = probabilities.argmax(1)
    scores = probabilities[np.arange(len(winner)), winner]
    candidates = np.flatnonzero((winner < len(classes)) & (scores >= min_score))
    kept = nms(masks, candidates, winner, scores, nms_iou)
    kept = sorted(kept, key=lambda i: -scores[i])[:max_instances]
    return [Instance(masks.mask(i), classes[winner[i]], float(scores[i])) for i in kept]


def nms(masks: MaskSet, candidates: np.ndarray, labels: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy mask NMS within each label: indices of ``candidates`` kept, highest score first."""
    overlaps = masks.overlaps().astype(np.float64)  # intersections; the diagonal holds the areas
    areas = np.diag(overlaps)
    kept: list[int] = []
    for i in sorted(candidates, key=lambda k: (-scores[k], k)):
        if areas[i] == 0:
            continue
        same = [k for k in kept if labels[k] == labels[i]]
        unions = areas[i] + areas[same] - overlaps[i, same]
        if not same or (overlaps[i, same] / unions).max() <= iou:
            kept.append(int(i))
    return kept


class InstancePredictions(Sequence[list[Instance]]):
    """``from_result`` for every image of ``results`` (aligned with them, ``ids`` alike), computed
    when touched: a dataset's predictions without holding every mask in memory."""

    def __init__(
        self,
        results: Sequence[ImageResult],
        text: TextEncoder,
        classes: Sequence[str],
        selection: SelectionSettings = SelectionSettings(),
        **options,
    ) -> None:
        if not list(classes):
            raise ValueError("An empty class list: name at least one class to find, e.g. classes=['chair'].")
        self.results, self.text, self.classes = results, text, list(classes)
        self.selection, self.options = selection, options

    def __len__(self) -> int:
        return len(self.results)

    @property
    def ids(self) -> list[str]:
        return list(getattr(self.results, "ids", None) or [r.image_id for r in self.results])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        return from_result(self.results[index], self.text, self.classes, self.selection, **self.options)


def from_masks(masks: dict[str, np.ndarray] | Sequence[tuple[str, np.ndarray]]) -> list[Instance]:
    """Ground-truth instances (score 1.0) from (label, mask) pairs, empty masks left out."""
    pairs = masks.items() if isinstance(masks, dict) else masks
    return [Instance(mask, label) for label, mask in pairs if np.asarray(mask).any()]
