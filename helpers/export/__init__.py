"""Datasets and predicted instances out to the formats other tools read: COCO and YOLO segmentation.

- ``write_coco_results``: a COCO *results* json (what COCOeval and the COCO server read), one entry
  per predicted instance with its RLE mask, box and score.
- ``write_coco_dataset``: a full COCO instances json (images, categories, annotations with RLE masks;
  the ground truth, crowd regions as ``iscrowd: 1``, or predictions with their ``score``) and the
  images in a folder beside it: what CVAT, Label Studio and FiftyOne import and ``load_coco`` reads.
- ``write_yolo``: an ultralytics YOLO-seg folder (``images/``, ``labels/*.txt`` of normalised
  polygons, ``data.yaml``) that ultralytics trains on and ``load_yolo`` reads.
- ``read_coco_results``: a results json (or a dataset json with scores) back to instances.

Conventions (docs/export.md): image ids are ``coco_image_ids(dataset.ids)`` (all-digit ids become
their integer, otherwise 1..N in dataset order); category ids are 1..K in ``dataset.classes`` order
unless ``category_ids`` names them. Every writer reads the dataset one image at a time, writes to a
temporary name and renames it into place, and refuses to replace an existing output unless
``overwrite=True`` (``check_export_folder`` says so before any work).
"""

from .coco import (
    coco_dataset,
    coco_results,
    read_coco_results,
    rle_entry,
    scored_entries,
    write_coco_dataset,
    write_coco_results,
)
from .common import ExportError, ImageFiles, Predictions, category_table, check_export_folder, coco_image_ids
from .yolo import DIGITS, MIN_PART_AREA, mask_polygons, write_yolo, yolo_lines

__all__ = [
    "DIGITS",
    "MIN_PART_AREA",
    "ExportError",
    "ImageFiles",
    "Predictions",
    "category_table",
    "check_export_folder",
    "coco_dataset",
    "coco_image_ids",
    "coco_results",
    "mask_polygons",
    "read_coco_results",
    "rle_entry",
    "scored_entries",
    "write_coco_dataset",
    "write_coco_results",
    "write_yolo",
    "yolo_lines",
]
