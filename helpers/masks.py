"""A compact, exact set of (possibly overlapping) masks, and the post-filters applied to SAM's.

``MaskSet`` stores N masks of one image as a partition of the pixels into *atoms*: pixels
covered by exactly the same masks share an atom. ``atoms`` (H x W ids) plus ``membership``
(atoms x N booleans) reproduce every mask exactly, compress well, and make unions, areas and
overlaps cost O(atoms) instead of O(N x H x W).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np


@dataclass
class MaskSet:
    """N masks of one image, stored exactly as atoms (see the module docstring)."""

    atoms: np.ndarray  # H x W int32
    membership: np.ndarray  # n_atoms x N bool
    predicted_iou: np.ndarray = field(default=None)  # N float32, from SAM (zeros when unknown)
    stability: np.ndarray = field(default=None)  # N float32

    def __post_init__(self) -> None:
        n = self.membership.shape[1]
        if self.predicted_iou is None:
            self.predicted_iou = np.zeros(n, np.float32)
        if self.stability is None:
            self.stability = np.zeros(n, np.float32)

    @classmethod
    def from_masks(cls, masks: np.ndarray, predicted_iou=None, stability=None) -> "MaskSet":
        """From an N x H x W boolean stack."""
        masks = np.asarray(masks, bool)
        n, h, w = masks.shape
        if n == 0:
            return cls(np.zeros((h, w), np.int32), np.zeros((1, 0), bool))
        packed = np.ascontiguousarray(np.packbits(masks.reshape(n, -1), axis=0).T)  # pixels x bytes
        keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
        unique, inverse = np.unique(keys, return_inverse=True)
        membership = np.unpackbits(unique.view(np.uint8).reshape(len(unique), -1), axis=1, count=n).astype(bool)
        as_float = lambda v: None if v is None else np.asarray(v, np.float32)  # noqa: E731
        return cls(inverse.reshape(h, w).astype(np.int32), membership, as_float(predicted_iou), as_float(stability))

    def __len__(self) -> int:
        return self.membership.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.atoms.shape

    @property
    def atom_areas(self) -> np.ndarray:
        return np.bincount(self.atoms.ravel(), minlength=self.membership.shape[0])

    @property
    def areas(self) -> np.ndarray:
        return self.atom_areas @ self.membership

    def mask(self, index: int) -> np.ndarray:
        return self.membership[:, index][self.atoms]

    def to_dense(self) -> np.ndarray:
        """N x H x W booleans."""
        return self.membership.T[:, self.atoms]

    def union(self, keep: np.ndarray) -> np.ndarray:
        """H x W union of the masks where ``keep`` (N booleans) is True."""
        return self.membership[:, np.asarray(keep, bool)].any(axis=1)[self.atoms]

    def overlaps(self) -> np.ndarray:
        """N x N pixel counts of pairwise intersections (the diagonal holds the areas)."""
        weighted = self.membership.T * self.atom_areas
        return weighted.astype(np.int64) @ self.membership.astype(np.int64)

    def subset(self, indices) -> "MaskSet":
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        return MaskSet(self.atoms, self.membership[:, indices], self.predicted_iou[indices], self.stability[indices])

    def bboxes(self) -> np.ndarray:
        """N x 4 boxes (x0, y0, x1, y1), end-exclusive; empty masks get zeros."""
        boxes = np.zeros((len(self), 4), np.int64)
        for i in range(len(self)):
            mask = self.mask(i)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            if rows.size:
                boxes[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
        return boxes

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            atoms=self.atoms,
            membership=np.packbits(self.membership, axis=1),
            count=len(self),
            predicted_iou=self.predicted_iou,
            stability=self.stability,
        )

    @classmethod
    def load(cls, path: Path) -> "MaskSet":
        with np.load(path) as f:
            count = int(f["count"])
            membership = np.unpackbits(f["membership"], axis=1, count=count).astype(bool)
            return cls(f["atoms"], membership, f["predicted_iou"], f["stability"])


@dataclass(frozen=True)
class FilterSettings:
    """Post-filters on SAM's masks, applied in this order."""

    drop_largest: bool = False  # drop the single largest mask (usually background)
    min_area: int = 0  # pixels
    max_inside: float | None = None  # drop a mask when this share of it lies inside a larger mask
    split_overlaps: bool = False  # give each pixel to the smallest mask covering it


FLOAT32_EXACT_PIXELS = 2**24  # float32 sums of 0/1 products are exact integers below this many pixels


def _flat(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks, bool)
    return masks.reshape(masks.shape[0], int(np.prod(masks.shape[1:])))


def overlap_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels in both a[i] and b[j] for two stacks of boolean masks of one image (N x H x W and
    M x H x W): an N x M int64 table, exact. Both stacks are copied as float32 (float64 from
    ``FLOAT32_EXACT_PIXELS`` pixels on) for one matrix product."""
    if np.shape(a)[1:] != np.shape(b)[1:]:
        raise ValueError(f"Mask stacks of different images: {np.shape(a)[1:]} vs {np.shape(b)[1:]}.")
    a, b = _flat(a), _flat(b)
    dtype = np.float32 if a.shape[1] < FLOAT32_EXACT_PIXELS else np.float64
    return (a.astype(dtype) @ b.astype(dtype).T).astype(np.int64)


def iou_from_counts(inter: np.ndarray, area_a: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    """N x M IoU (float64) from ``overlap_counts`` and the two stacks' areas; 0 where both are empty."""
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """N x M IoU (float64) between two stacks of boolean masks of one image; 0 where both are empty."""
    return iou_from_counts(overlap_counts(a, b), np.count_nonzero(_flat(a), axis=1), np.count_nonzero(_flat(b), axis=1))


def best_match_iou(masks: MaskSet, others: MaskSet) -> np.ndarray:
    """For each of ``masks``, its highest IoU with any of ``others`` (1.0: found unchanged)."""
    if len(masks) == 0 or len(others) == 0:
        return np.zeros(len(masks), np.float32)
    return iou_matrix(masks.to_dense(), others.to_dense()).max(axis=1).astype(np.float32)


def drop_largest(masks: MaskSet) -> MaskSet:
    """Drop the single largest mask (often the background)."""
    if len(masks) == 0:
        return masks
    return masks.subset(np.delete(np.arange(len(masks)), int(np.argmax(masks.areas))))


def filter_min_area(masks: MaskSet, min_area: int) -> MaskSet:
    """Keep the masks of at least ``min_area`` pixels."""
    return masks.subset(np.flatnonzero(masks.areas >= min_area))


def drop_contained(masks: MaskSet, max_inside: float = 0.9) -> MaskSet:
    """Drop each mask of which at least ``max_inside`` lies inside one larger mask (SLIP's filter)."""
    overlap = masks.overlaps()
    areas = np.diag(overlap)
    larger = areas[None, :] > areas[:, None]
    inside = np.where(larger, overlap, 0) >= max_inside * np.maximum(areas, 1)[:, None]
    return masks.subset(np.flatnonzero(~inside.any(axis=1)))


def split_overlaps(masks: MaskSet) -> MaskSet:
    """Make the masks disjoint: each pixel goes to the smallest mask covering it (ties: lower
    index), so small parts stay whole and large ones lose what lies on top of them. Masks left
    empty are dropped."""
    if len(masks) == 0:
        return masks
    areas = masks.areas
    rank = np.where(masks.membership, areas[None, :], np.iinfo(np.int64).max)
    owner = np.argmin(rank, axis=1)
    covered = masks.membership.any(axis=1)
    membership = np.zeros_like(masks.membership)
    membership[np.flatnonzero(covered), owner[covered]] = True
    split = MaskSet(masks.atoms, membership, masks.predicted_iou, masks.stability)
    return split.subset(np.flatnonzero(split.areas > 0))


def apply_filters(masks: MaskSet, settings: FilterSettings) -> MaskSet:
    """Step 2: the post-filters of ``settings`` on SAM's masks, in the order the settings list them."""
    if settings.drop_largest:
        masks = drop_largest(masks)
    if settings.min_area:
        masks = filter_min_area(masks, settings.min_area)
    if settings.max_inside is not None:
        masks = drop_contained(masks, settings.max_inside)
    if settings.split_overlaps:
        masks = split_overlaps(masks)
    return masks


def mask_set_from_stream(
    masks: Iterable[np.ndarray], shape: tuple[int, int], predicted_iou=None, stability=None
) -> MaskSet:
    """``MaskSet.from_masks(np.stack(masks), ...)`` without the N x H x W stack: each H x W mask
    refines the atoms as it arrives (``atoms * 2 + mask``, relabelled through a lookup table), so
    memory stays O(H x W + atoms x N). Atoms and membership come out identical to ``from_masks``'s:
    both order the atoms by their membership bits, the first mask most significant."""
    atoms = np.zeros(shape, np.int32)
    flat = atoms.reshape(-1)
    blocks = [slice(i, i + (1 << 20)) for i in range(0, flat.size, 1 << 20)]  # bounded index temporaries
    steps: list[np.ndarray] = []  # per mask: the codes (parent atom * 2 + bit) of the new atoms
    for mask in masks:
        mask = np.asarray(mask, bool)
        if mask.shape != tuple(shape):
            raise ValueError(f"mask of shape {mask.shape}, expected {tuple(shape)}")
        n_atoms = len(steps[-1]) if steps else 1
        atoms *= 2
        atoms += mask  # the codes: parent atom * 2 + bit
        present = np.zeros(2 * n_atoms, bool)
        for block in blocks:
            present[flat[block]] = True
        steps.append(np.flatnonzero(present).astype(np.int32))
        relabel = np.cumsum(present, dtype=np.int32) - 1
        for block in blocks:
            flat[block] = relabel[flat[block]]
    n_atoms = len(steps[-1]) if steps else 1
    membership = np.zeros((n_atoms, len(steps)), bool)
    lineage = np.arange(n_atoms)
    for k in range(len(steps) - 1, -1, -1):  # walk each atom back through its parents
        code = steps[k][lineage]
        membership[:, k] = code % 2 == 1
        lineage = code // 2
    as_float = lambda v: None if v is None else np.asarray(v, np.float32)  # noqa: E731
    return MaskSet(atoms, membership, as_float(predicted_iou), as_float(stability))
