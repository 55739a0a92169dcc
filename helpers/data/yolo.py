"""YOLO segmentation folders (ultralytics, e.g. coco128-seg): ``images/``, ``labels/*.txt`` holding
one instance per line, ``class x1 y1 x2 y2 ...`` (coordinates normalised to 0-1), names in ``data.yaml``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import yaml

from ..instances import Instance
from .lazy import LazySamples, SampleRef, check_sources, fingerprints, pack, path_text, register_reader
from .types import Dataset, DatasetError, Sample, finish, image_files, is_image_file, load_image, path_id

SPLITS = ("train", "val", "test")


def load_yolo(
    root: str | Path,
    split: str | None = None,
    classes: list[str] | None = None,
    limit: int | None = None,
    strict: bool = False,
    names: list[str] | dict[int, str] | None = None,
    check: bool = True,
    progress: bool = False,
) -> Dataset:
    """A YOLO segmentation dataset: ``root`` is its folder (holding ``data.yaml``) or the yaml file.

    ``split`` picks the yaml's ``train:``/``val:``/``test:`` entry (folders such as ``images/val``,
    or .txt lists of image paths); without it, ``root/images`` when it holds images, else ``val`` (a set
    without one: ``test``, else ``train``, said in ``Dataset.notes``).
    Polygons are rasterised as ultralytics does (``cv2.fillPoly`` at the image's size, coordinates
    scaled by width and height); a class's mask is the union of its instances. An image without a
    label file is background (as in ultralytics). Images are turned upright by their EXIF
    orientation, as ultralytics (cv2) reads them and its labels assume; the files are listed in
    ``Dataset.notes``. A label file with a bad line is skipped with its image and listed, up front.
    Sample ids: an image's path below its split's folder without the suffix (its stem when directly in it;
    ``street/0001`` in a sub-folder, as ``write_yolo`` writes such ids).
    Samples are read from disk when touched (``lazy.LazySamples``); ``check`` reads each image
    once now (an unreadable one is skipped and listed here; without it, at first touch).
    """
    yaml_path, spec = _read_yaml(Path(root))
    base = _base_folder(Path(root), yaml_path, spec)
    table = _names(names if names is not None else spec.get("names"), yaml_path or Path(root))
    all_classes = list(dict.fromkeys(table[i] for i in sorted(table)))
    dataset = Dataset(
        yaml_path.stem if yaml_path and yaml_path.stem != "data" else base.name, LazySamples([]), all_classes
    )
    dataset.check_classes(classes or [])
    dataset.classes = classes or all_classes
    images, split_note = _split_images(base, spec, split)
    dataset.notes += [split_note] if split_note else []
    unlabelled: list[str] = []
    seen: dict[str, Path] = {}
    for image_path, image_id in images[:limit] if limit else images:
        item = str(image_path.relative_to(base)) if image_path.is_relative_to(base) else str(image_path)
        if image_id in seen:
            dataset.skipped.append((item, f"same file name stem as {seen[image_id]}"))
            continue
        seen[image_id] = image_path
        label_path = label_path_for(image_path)
        try:
            instances = _read_labels(label_path, table) if label_path.is_file() else []
        except DatasetError as exc:
            dataset.skipped.append((item, str(exc)))
            continue
        if not label_path.is_file():
            unlabelled.append(image_path.name)
        shapes = [[table[i], coords.tolist()] for i, coords in instances if table[i] in dataset.classes]
        source = {
            "image": path_text(image_path),
            "label": path_text(label_path),  # read now; its size checked at each read (an edit means: prepare again)
            "name": image_path.name,
            "shapes": pack(shapes),
            "classes": classes,
        }
        source["fingerprint"] = fingerprints(source, "image", "label")
        dataset.samples.refs.append(SampleRef(image_id, "yolo", item, source))
    if unlabelled:
        dataset.notes.append(
            f"{len(unlabelled)} image(s) have no label file and count as background (no objects): "
            + ", ".join(unlabelled[:10])
            + (" ..." if len(unlabelled) > 10 else "")
        )
    oriented = dataset.samples.scan(progress) if check else []
    return finish(dataset, strict, oriented, applied=True)


@register_reader("yolo")
def read_yolo_sample(ref: SampleRef) -> tuple[Sample, int]:
    """One YOLO sample: the image turned upright, its label polygons filled as ultralytics does."""
    source = ref.source
    path = Path(source["image"])
    check_sources(source)
    image, orientation = load_image(path, apply_orientation=True)
    height, width = image.shape[:2]
    masks = {name: np.zeros((height, width), bool) for name in source["classes"] or []}
    instances = []
    for name, coords in json.loads(source["shapes"]):
        layer = np.zeros((height, width), np.uint8)
        points = (np.asarray(coords, float).reshape(-1, 2) * (width, height)).astype(np.int32)
        cv2.fillPoly(layer, [points], 1)
        region = layer.astype(bool)
        masks[name] = masks[name] | region if name in masks else region
        instances.append(Instance(region, name))
    return Sample(ref.image_id, image, masks, instances=instances), orientation


def label_path_for(image_path: Path) -> Path:
    """ultralytics' rule: the last ``/images/`` in the path becomes ``/labels/``, the suffix ``.txt``."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(labels.join(str(image_path).rsplit(images, 1))).with_suffix(".txt")


def _read_yaml(root: Path) -> tuple[Path | None, dict]:
    if root.is_file():
        path = root
    elif root.is_dir():
        found = [root / "data.yaml"] if (root / "data.yaml").is_file() else sorted(root.glob("*.y*ml"))
        if len(found) != 1:
            return None, {}
        path = found[0]
    else:
        raise DatasetError(f"{root.absolute()} does not exist (expected a YOLO dataset folder or its data.yaml).")

    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DatasetError(f"cannot read {path.absolute()}: {exc}") from exc
    if not isinstance(spec, dict):
        raise DatasetError(f"{path.absolute()} is not a YOLO data.yaml (expected keys path, train, val, names).")
    return path, spec


def _base_folder(root: Path, yaml_path: Path | None, spec: dict) -> Path:
    """The folder that the yaml's split entries are relative to: its ``path:`` when that exists."""
    here = yaml_path.parent if yaml_path else root
    if spec.get("path"):
        base = Path(str(spec["path"])).expanduser()
        base = base if base.is_absolute() else here / base
        if base.is_dir():
            return base
    return here


def _names(names: object, where: Path) -> dict[int, str]:
    if isinstance(names, (list, tuple)):
        table = dict(enumerate(names))
    elif isinstance(names, dict):
        try:
            table = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{where.absolute()}: names keys must be class ids (0, 1, ...): {exc}") from exc
    else:
        above = where.parent / "data.yaml"
        up = where.is_dir() and above.is_file()  # pointed at images/ (no yaml found there)
        hint = f" ({above.absolute()} is one folder up: pass {where.parent.absolute()})" if up else ""
        raise DatasetError(
            f"No class names for the YOLO dataset at {where.absolute()}{hint}: add a data.yaml with "
            "`names: [cat, dog]` (or `names: {0: cat, 1: dog}`), or pass names=[...]."
        )
    if not table or not all(isinstance(v, str) for v in table.values()):
        raise DatasetError(f"{where.absolute()}: names must be a non-empty list or {{id: name}} of strings.")
    return table


def _in_folder(folder: Path) -> list[tuple[Path, str]]:
    """The images of ``folder`` and its sub-folders with their sample ids (``path_id``), as ``write_yolo`` names
    the files."""
    return [(p, path_id(p, folder)) for p in image_files(folder, recursive=True)]


def _split_images(base: Path, spec: dict, split: str | None) -> tuple[list[tuple[Path, str]], str | None]:
    """The split's image paths with their sample ids (``_in_folder``; a .txt list's: the stems), and a note when
    no split was asked for and ``val`` is missing (the first of test / train that the dataset has is read then:
    the notebooks have no split setting)."""
    flat = base / "images"
    note, fallback = None, ""
    if split is None:
        if flat.is_dir() and any(is_image_file(p) for p in flat.iterdir()):
            return _in_folder(flat), None
        present = [s for s in SPLITS if spec.get(s) is not None or (flat / s).is_dir()]
        split = "val" if "val" in present or not present else next(s for s in ("test", "train") if s in present)
        if split != "val":
            note = (
                f"No 'val' split in {base.absolute()}: read its {split!r} split (load_yolo(split=...) picks another)."
            )
            fallback = f" (picked as the set has no 'val' split; it names {', '.join(present)})"
    entry = spec.get(split)
    if entry is None and (flat / split).is_dir():
        entry = f"images/{split}"
    if entry is None:
        known = [s for s in SPLITS if s in spec] + [p.name for p in sorted(flat.glob("*")) if p.is_dir()]
        raise DatasetError(
            f"No {split!r} split in the YOLO dataset at {base.absolute()} (found: {sorted(set(known)) or 'none'}); "
            "pass split=... or put the images in images/ and the labels in labels/."
        )
    paths: list[tuple[Path, str]] = []
    for part in entry if isinstance(entry, list) else [entry]:
        path = Path(str(part)).expanduser()
        path = path if path.is_absolute() else base / path
        if path.is_dir():
            paths += _in_folder(path)
        elif path.is_file() and path.suffix == ".txt":  # a list of image paths, relative to its folder
            lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            listed = [p if p.is_absolute() else (path.parent / p) for p in map(Path, lines)]
            paths += [(p, p.stem) for p in listed]
        else:
            raise DatasetError(
                f"The {split!r} entry {part!r}{fallback} is not a folder or .txt list: {path.absolute()}"
            )
    return paths, note


def _read_labels(path: Path, table: dict[int, str]) -> list[tuple[int, np.ndarray]]:
    """(class id, normalised coordinates) per line; DatasetError naming the file and line otherwise."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read labels {path}: {exc}") from exc
    instances = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            values = np.array(line.split(), float)
        except ValueError as exc:
            raise DatasetError(f"{where}: not numbers ({exc})") from exc
        class_id, coords = values[0], values[1:]
        if class_id != int(class_id) or int(class_id) not in table:
            raise DatasetError(f"{where}: class {class_id:g} is not in the names (ids {min(table)}-{max(table)})")
        if len(coords) == 4:
            raise DatasetError(f"{where}: a box (class x y w h), not a polygon; this is a detection label file")
        if len(coords) % 2 or len(coords) < 6:
            raise DatasetError(f"{where}: a polygon needs at least 3 x y pairs, got {len(coords)} numbers")
        if not np.isfinite(coords).all() or coords.min() < 0 or coords.max() > 1:
            raise DatasetError(f"{where}: coordinates must be normalised to 0-1 (divide x by width, y by height)")
        instances.append((int(class_id), coords))
    return instances
