"""Datasets in one simple form: samples of an RGB image with one boolean mask per class name.

Modules: ``types`` (Sample, Dataset, errors, read_image), ``coco`` (COCO json, val2017 subset
download), ``label_maps`` (folders of semantic label maps, CamVid, the coursework layout),
``label_map_folder`` (one's own folder of them, named by a classes.txt), ``class_folders`` (labelled images, object
crops, mosaics), ``images`` (a folder without labels), ``demo`` (the generated shapes set),
``yolo`` (ultralytics segmentation folders), ``lazy`` (samples read from disk when touched),
``storage`` (prepared datasets on disk: a manifest by reference, with the request they were
prepared for) and ``prepare`` (the run's dataset for the notebooks).
Readers index files and annotations up front and read each sample when touched, so memory does
not grow with the dataset. Problems with single items (an unreadable image or mask, a mask of the wrong size, a class id
outside the table, a malformed annotation) skip that item and are listed in ``Dataset.skipped``;
``strict=True`` raises instead (``check=False``: found at first touch, see ``lazy``). Problems
with a whole file raise DatasetError naming it.
"""

from .class_folders import load_class_folders, make_mosaics, object_crops
from .coco import COCO_ANNOTATIONS_URL, COCO_IMAGES_URL, fetch_coco_subset, load_coco
from .demo import DEMO_CLASSES, make_demo_dataset
from .images import load_images
from .label_map_folder import load_label_map_folder, read_class_names
from .label_maps import (
    CAMVID_CLASSES,
    CAMVID_IGNORE_IDS,
    MASK_SUFFIXES,
    load_camvid,
    load_coursework,
    load_semantic_folder,
    read_label_map,
    snap_to_ids,
)
from .lazy import LazySamples, SampleRef
from .prepare import coco_files, dataset_request, prepare_dataset
from .storage import load_prepared, save_dataset
from .types import (
    IMAGE_SUFFIXES,
    Dataset,
    DatasetError,
    LabelledImage,
    Sample,
    UnknownClassError,
    image_files,
    read_image,
)
from .yolo import load_yolo

__all__ = [
    "CAMVID_CLASSES",
    "CAMVID_IGNORE_IDS",
    "COCO_ANNOTATIONS_URL",
    "COCO_IMAGES_URL",
    "DEMO_CLASSES",
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "Dataset",
    "DatasetError",
    "LabelledImage",
    "LazySamples",
    "Sample",
    "SampleRef",
    "UnknownClassError",
    "coco_files",
    "fetch_coco_subset",
    "image_files",
    "load_camvid",
    "load_label_map_folder",
    "load_class_folders",
    "load_coco",
    "load_coursework",
    "load_images",
    "load_prepared",
    "load_semantic_folder",
    "load_yolo",
    "make_demo_dataset",
    "make_mosaics",
    "object_crops",
    "prepare_dataset",
    "dataset_request",
    "read_image",
    "read_class_names",
    "read_label_map",
    "save_dataset",
    "snap_to_ids",
]
