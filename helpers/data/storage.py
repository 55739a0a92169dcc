"""Prepared datasets on disk: what notebook 01 writes and notebooks 02-04 read."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .types import Dataset, DatasetError, Sample, read_image


def save_dataset(dataset: Dataset, folder: str | Path, request: dict | None = None) -> Path:
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
        "request": request,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def load_prepared(folder: str | Path, expected: dict | None = None) -> Dataset:
    """Read a dataset written by ``save_dataset`` (notebook 01); with ``expected``, check that it
    was prepared for that request (``prepare.dataset_request``)."""
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise DatasetError(f"No prepared dataset in {folder}: run notebooks/01_prepare_dataset.ipynb first.")
    manifest = json.loads((folder / "manifest.json").read_text())
    if expected is not None and manifest.get("request") != expected:
        raise DatasetError(
            f"The dataset in {folder.resolve()} was prepared for {manifest.get('request')}, but this run asks for "
            f"{expected}. Run notebooks/01_prepare_dataset.ipynb again (or `make run`)."
        )
    samples = []
    for image_id in manifest["ids"]:
        arrays = np.load(folder / f"{image_id}.npz")
        masks = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("mask/")}
        ignore = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("ignore/")}
        samples.append(Sample(image_id, read_image(folder / f"{image_id}.png"), masks, ignore))
    return Dataset(
        manifest["name"], samples, manifest["classes"], [tuple(s) for s in manifest["skipped"]], manifest["notes"]
    )
