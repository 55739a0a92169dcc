"""YOLO-seg: masks to normalised polygons (OpenCV contours), an ultralytics folder with data.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import yaml

from ..data.types import Dataset
from ..data.yolo import label_path_for
from ..files import atomic_folder
from ..instances import Instance
from .common import (
    ExportError,
    ImageFiles,
    Predictions,
    _predictions_by_id,
    check_export_folder,
)

MIN_PART_AREA = 1.0  # a polygon part enclosing less (in pixels², through boundary pixel centres) is dropped
DIGITS = 6  # decimals of normalised YOLO coordinates (3e-4 px at 640 px)


def mask_polygons(mask: np.ndarray, min_area: float = MIN_PART_AREA) -> list[np.ndarray]:
    """The outer contours of a mask (``cv2.findContours``, external, simple chain) as N x 2 arrays of
    pixel (x, y), one per part; holes are not kept (a YOLO polygon cannot hold one). A part with fewer
    than 3 points or whose polygon through its boundary pixels' centres encloses less than
    ``min_area`` pixels² (single pixels, one-pixel-wide lines) is dropped."""
    image = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(image, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2) for c in contours if len(c) >= 3 and cv2.contourArea(c) >= min_area]


def yolo_lines(instances: Sequence[Instance], classes: dict[str, int], width: int, height: int) -> list[str]:
    """YOLO-seg label lines, ``class x1 y1 x2 y2 ...``: one per polygon part of each instance, pixel
    centres normalised, ((x + 0.5) / width, (y + 0.5) / height), so that ultralytics' rasterisation
    (coordinates times the size, cut to integers) lands on the boundary pixels themselves."""
    lines = []
    for instance in instances:
        if instance.label not in classes:
            raise ExportError(f"An instance labelled {instance.label!r}, not among the classes {list(classes)}.")
        if instance.mask.shape != (height, width):
            raise ExportError(f"An instance mask of shape {instance.mask.shape} on a {height} x {width} image.")
        for points in mask_polygons(instance.mask):
            normalised = (points + 0.5) / (width, height)
            coords = " ".join(f"{v:.{DIGITS}f}" for v in normalised.ravel())
            lines.append(f"{classes[instance.label]} {coords}")
    return lines


def write_yolo(
    dataset: Dataset, path: str | Path, predictions: Predictions | None = None, overwrite: bool = False
) -> Path:
    """An ultralytics YOLO-seg folder at ``path``: ``images/<sample id><suffix>`` (as
    ``write_coco_dataset`` provides them; an id with folders in those sub-folders), ``labels/<sample id>.txt``
    (ultralytics' rule, ``label_path_for``; ``yolo_lines``: the ground-truth
    instances, or ``predictions`` without their scores; an image without objects gets an empty file)
    and ``data.yaml`` (``path`` absolute, ``train`` and ``val`` both ``images``, ``names`` id -> class in
    ``dataset.classes`` order). Crowd / ignore regions have no YOLO form and are left out.
    ``load_yolo(path)`` reads it back (sample ids kept). Returns ``path``."""
    path = Path(path)
    check_export_folder(dataset, path, overwrite)
    lookup = _predictions_by_id(dataset, predictions) if predictions is not None else None
    classes = {name: number for number, name in enumerate(dataset.classes)}
    with atomic_folder(path) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        files = ImageFiles(dataset)
        for sample in dataset:
            name = files.name(sample)
            files.write(sample, tmp / "images", name)
            height, width = sample.image.shape[:2]
            instances = sample.instances if lookup is None else lookup(sample.image_id)
            lines = yolo_lines(instances, classes, width, height)
            label = label_path_for(tmp / "images" / name)  # where ultralytics and load_yolo look for it
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(line + "\n" for line in lines))
        spec = {
            "path": str(path.absolute()),
            "train": "images",
            "val": "images",
            "names": {number: name for name, number in classes.items()},
        }
        (tmp / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return path
