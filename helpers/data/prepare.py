"""The run's dataset, chosen by the run's settings, prepared once for notebooks 02-04."""

from __future__ import annotations

from pathlib import Path

from .coco import load_coco
from .demo import make_demo_dataset
from .label_maps import load_camvid
from .storage import save_dataset
from .types import Dataset, DatasetError


def prepare_dataset(config, path: str | Path | None = None) -> Dataset:
    """The run's dataset (``SAMCLIP_DATASET``: demo, coco, camvid; ``SAMCLIP_DATA_PATH``), saved
    to ``config.dataset_dir`` for the next notebooks."""
    kind = config.dataset
    path = Path(path or config.data_path or config.root / "data" / kind)
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
    save_dataset(dataset, config.dataset_dir, request=dataset_request(config))
    return dataset


def dataset_request(config) -> dict:
    """What the run asks for: recorded with the prepared set and checked when it is read back."""
    path = config.data_path or config.root / "data" / config.dataset
    return {
        "dataset": config.dataset,
        "data_path": str(Path(path).resolve()) if config.dataset != "demo" else None,
        "classes": list(config.classes),
        "max_images": config.max_images,
    }
