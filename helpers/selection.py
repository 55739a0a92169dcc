"""Pick the masks that match a prompt from their CLIP similarities: the one scoring path.

``score`` goes names -> similarities -> scores -> kept for one image; the pipeline, the
evaluation, the sweep and the tuner all call it. Every mode turns the N x K similarity table
(regions x prompts) into one score per mask for the target prompt such that a mask is kept
when its score >= ``threshold``. That makes a threshold sweep one sort (``helpers.metrics.sweep``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .masks import MaskSet

SELECTION_MODES = ("threshold", "softmax", "top1")
CLIP_LOGIT_SCALE = 100.0  # the temperature OpenAI's CLIP was trained with; a model's own: ``logit_scale(text)``
DEFAULT_THRESHOLD = 0.25  # cosine similarity; the threshold sweep (notebook 03) finds a better one per class
TextEncoder = Callable[[Sequence[str]], np.ndarray]  # names -> K x D unit embeddings (clip_scoring.TextEmbeddings)


@dataclass(frozen=True)
class SelectionSettings:
    """``threshold``: cosine similarity to the prompt >= threshold (object-retrieval report);
    ``softmax``: over the class list, the target wins and its probability >= threshold (CIFAR-10
    paper); ``top1``: the single best region (SLIP paper), threshold ignored.
    ``negatives`` (e.g. "background") join the class list: a mask that resembles one of them
    more than the target is never kept."""

    mode: str = "threshold"
    threshold: float = DEFAULT_THRESHOLD
    negatives: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in SELECTION_MODES:
            raise ValueError(f"Unknown selection mode {self.mode!r}; use one of {SELECTION_MODES}.")
        if not np.isfinite(self.threshold):
            raise ValueError(f"threshold={self.threshold} is not a finite number.")


@dataclass
class ImageResult:
    """What the cache holds for one image: its filtered masks and their CLIP embeddings."""

    image_id: str
    masks: MaskSet
    embeddings: np.ndarray  # len(masks) x D, float32, unit length


@dataclass
class Scores:
    """One image's masks scored against a prompt."""

    names: list[str]  # the prompt columns: class list (with the prompt), then negatives
    similarities: np.ndarray  # N x K cosine similarities to ``names``
    scores: np.ndarray  # N float32: the selection mode's score for the prompt
    keep: np.ndarray  # N bool: scores >= threshold


@dataclass
class Prediction(Scores):
    """``Scores`` plus the predicted mask: the union of the kept masks."""

    mask: np.ndarray = None  # H x W bool: union of the kept masks


def prompt_columns(prompt: str, classes=None, negatives=()) -> list[str]:
    """The prompts to score against, in column order: the class list (the prompt added when
    missing), then the negative prompts not already among them."""
    names = list(dict.fromkeys([*(classes or []), prompt]))
    return names + [n for n in negatives if n not in names]


def similarities(region_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarities, N regions x K prompts, float32."""
    return (np.asarray(region_embeddings, np.float32) @ np.asarray(text_embeddings, np.float32).T).astype(np.float32)


def cosine_span(
    results: Sequence[ImageResult], text: TextEncoder, classes: Sequence[str], images: int | None = 32
) -> np.ndarray:
    """The lowest and highest cosine similarity of a cached region to one of ``classes``, over up to ``images``
    images spread evenly over ``results`` (all with None; a lazy sequence reads only those), or [] without regions or
    classes."""
    count = len(results) if images is None else min(images, len(results))
    if count == 0 or len(classes) == 0:
        return np.zeros(0)
    picks = np.unique(np.linspace(0, len(results) - 1, count).round().astype(int))
    embeddings = [e for e in (results[int(i)].embeddings for i in picks) if len(e)]
    if not embeddings:
        return np.zeros(0)
    sims = similarities(np.concatenate(embeddings), text(list(classes)))
    return np.array([sims.min(), sims.max()])


def threshold_bounds(values: Sequence[float]) -> tuple[float, float] | None:
    """Cosine thresholds from ``values``' lowest, rounded down to a multiple of 0.05 (so the first keeps every mask),
    to strictly above their highest (so the top one keeps none), within [-1, 1.05]; None without a finite value."""
    finite = np.asarray(values, np.float64).ravel()
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    low, high = finite.min(), finite.max()
    start = round(math.floor(round(low / 0.05, 6)) * 0.05, 2)
    if start > low:  # a float32 0.39999998 rounds up to 8 steps: one step lower
        start = round(start - 0.05, 2)
    return max(-1.0, start), min(1.05, round((math.floor(round(high / 0.05, 6)) + 1) * 0.05, 2))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """A numerically stable softmax along ``axis``."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def logit_scale(text: TextEncoder) -> float:
    """The temperature of the softmax over prompts: the CLIP's own learnt one, which ``TextEmbeddings`` carries (100
    for OpenAI's; the demo CLIP's about 14), else ``CLIP_LOGIT_SCALE``."""
    return float(getattr(text, "logit_scale", CLIP_LOGIT_SCALE))


def mask_scores(
    sims: np.ndarray, target: int, mode: str, negatives: Sequence[int] = (), scale: float = CLIP_LOGIT_SCALE
) -> np.ndarray:
    """One score per mask for prompt column ``target``; -inf marks masks that can never be kept.

    ``negatives`` are the columns of ``sims`` that hold negative prompts (never ``target``); ``scale``: the softmax
    mode's temperature (``logit_scale(text)``)."""
    if sims.shape[0] == 0:
        return np.zeros(0, np.float32)
    winner = np.argmax(sims, axis=1) == target
    if mode == "threshold":
        scores = sims[:, target].copy()
        negatives = [k for k in negatives if k != target]
        if negatives:
            beaten = sims[:, target] <= sims[:, negatives].max(axis=1)
            scores[beaten] = -np.inf
        return scores
    if mode == "softmax":
        probs = softmax(scale * sims, axis=1)[:, target]
        return np.where(winner, probs, -np.inf).astype(np.float32)
    if mode == "top1":
        scores = np.full(sims.shape[0], -np.inf, np.float32)
        scores[int(np.argmax(sims[:, target]))] = np.inf
        return scores
    raise ValueError(f"Unknown selection mode {mode!r}; use one of {SELECTION_MODES}.")


def score(
    embeddings: np.ndarray,
    text: TextEncoder,
    prompt: str,
    settings: SelectionSettings = SelectionSettings(),
    classes: Sequence[str] | None = None,
) -> Scores:
    """Score N region ``embeddings`` against ``prompt``: ``classes`` is the list the softmax mode
    competes over (the prompt is added when missing); negative prompts are appended to it."""
    names = prompt_columns(prompt, classes, settings.negatives)
    sims = similarities(embeddings, text(names))
    negatives = [names.index(n) for n in settings.negatives if n != prompt]  # a class may also be a negative
    scores = mask_scores(sims, names.index(prompt), settings.mode, negatives, logit_scale(text))
    return Scores(names, sims, scores, scores >= settings.threshold)


def predict(
    result: ImageResult,
    text: TextEncoder,
    prompt: str,
    settings: SelectionSettings = SelectionSettings(),
    classes: Sequence[str] | None = None,
) -> Prediction:
    """The mask for ``prompt`` in one image: the union of the masks ``score`` keeps."""
    scored = score(result.embeddings, text, prompt, settings, classes)
    return Prediction(scored.names, scored.similarities, scored.scores, scored.keep, result.masks.union(scored.keep))
