"""Images labelled by folder, object crops, and the SLIP paper's mosaics (recognition evaluations)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..instances import from_masks
from .types import Dataset, DatasetError, LabelledImage, Sample, image_files, read_image


def load_class_folders(root: str | Path, per_class: int | None = None) -> tuple[list[LabelledImage], list[str]]:
    """``root/<class>/*.png``: images labelled by their folder (CIFAR-10 or Pokemon style)."""
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        raise DatasetError(f"{root} holds no class sub-folders (expected {root}/<class name>/<images>).")
    items = []
    for folder in folders:
        paths = image_files(folder)
        items += [LabelledImage(read_image(p), folder.name, str(p)) for p in paths[:per_class]]
    return items, [f.name for f in folders]


def crop_box(mask: np.ndarray, margin: float = 0.1) -> tuple[slice, slice]:
    """The box of ``mask``'s pixels widened by ``margin`` of its size on each side (clipped at the top and left; numpy
    clips the rest): how ``object_crops`` cuts a class out."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    dy, dx = int((rows[-1] - rows[0]) * margin), int((cols[-1] - cols[0]) * margin)
    return np.s_[max(0, rows[0] - dy) : rows[-1] + 1 + dy, max(0, cols[0] - dx) : cols[-1] + 1 + dx]


def object_crops(
    dataset: Dataset,
    min_area: int = 400,
    margin: float = 0.1,
    limit: int | None = None,
    max_other: float | None = None,
) -> list[LabelledImage]:
    """Each class present in each sample, cut out by its ground-truth box: labelled images for
    the recognition and mosaic evaluations when no class-folder set is at hand. With ``limit``,
    the first ``limit`` crops (only the images they need are read). With ``max_other``, a crop in
    which another class covers more than that share of the box is left out: the box of a class
    often takes in other shapes, and a mosaic tile should hold one class, as SLIP's do."""
    if max_other is not None and not 0 <= max_other <= 1:
        raise ValueError(f"max_other={max_other} must be a share of the box between 0 and 1, or None.")
    items: list[LabelledImage] = []
    for sample in dataset.samples:
        if limit is not None and len(items) >= limit:
            break
        for name, mask in sample.masks.items():
            if mask.sum() < min_area:
                continue
            box = crop_box(mask, margin)
            if max_other is not None and any(
                other[box].mean() > max_other for label, other in sample.masks.items() if label != name
            ):
                continue
            items.append(LabelledImage(sample.image[box].copy(), name, f"{sample.image_id}:{name}"))
    return items[:limit]


def make_mosaics(
    items: list[LabelledImage], per_mosaic: int = 4, tile: int = 112, count: int | None = None, seed: int = 0
) -> Dataset:
    """Tile ``per_mosaic`` images of different classes into one square grid; each class's
    ground truth is its tile (the SLIP paper's mosaic evaluation)."""
    by_class: dict[str, list[LabelledImage]] = {}
    for item in items:
        by_class.setdefault(item.label, []).append(item)
    if len(by_class) < per_mosaic:
        raise DatasetError(f"A mosaic of {per_mosaic} needs as many classes; only {len(by_class)} given.")
    side = int(np.ceil(np.sqrt(per_mosaic)))
    rng = np.random.default_rng(seed)
    count = count or len(items) // per_mosaic
    samples = []
    for index in range(count):
        chosen = rng.choice(sorted(by_class), per_mosaic, replace=False)
        canvas = np.full((side * tile, side * tile, 3), 127, np.uint8)
        masks = {}
        for slot, label in enumerate(chosen):
            pool = by_class[label]
            item = pool[rng.integers(len(pool))]
            row, col = divmod(slot, side)
            canvas[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile] = np.asarray(
                Image.fromarray(item.image).resize((tile, tile), Image.BICUBIC)
            )
            mask = np.zeros(canvas.shape[:2], bool)
            mask[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile] = True
            masks[str(label)] = mask
        samples.append(Sample(f"mosaic_{index:04d}", canvas, masks, instances=from_masks(masks)))
    return Dataset("mosaics", samples, sorted(by_class))
