"""Prepared datasets on disk: what notebook 01 writes and notebooks 02-04 read."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .types import Dataset, DatasetError, Sample, read_image

RERUN = "run notebooks/01_prepare_dataset.ipynb again (or `make run`)"


def save_dataset(dataset: Dataset, folder: str | Path, request: dict | None = None) -> Path:
    """Write images (PNG), masks (compressed npz) and a manifest; replaces ``folder`` atomically.

    ``request`` (see ``prepare.dataset_request``) is recorded so that ``load_prepared`` can tell
    whether the prepared data is what the current run asks for.
    """
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
        "request": _plain(request),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def load_prepared(folder: str | Path, expected: dict | None = None) -> Dataset:
    """Read a dataset written by ``save_dataset`` (notebook 01).

    With ``expected`` (the current run's ``dataset_request(config)``), a dataset prepared for another
    request (another dataset, data path, class list or image limit) raises DatasetError naming both.
    """
    folder = Path(folder).absolute()
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise DatasetError(f"No prepared dataset in {folder}: run notebooks/01_prepare_dataset.ipynb first.")
    try:
        manifest = json.loads(manifest_path.read_text())
        ids, classes = manifest["ids"], manifest["classes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"The prepared dataset's manifest {manifest_path} is unreadable ({exc}); {RERUN}.") from exc
    if expected is not None and manifest.get("request") != _plain(expected):
        recorded = manifest.get("request") or "nothing (prepared by an older version)"
        raise DatasetError(
            f"The prepared dataset in {folder} is not the one this run asks for.\n"
            f"  prepared for: {recorded}\n  this run asks: {_plain(expected)}\nTo prepare this run's dataset, {RERUN}."
        )
    samples = []
    for image_id in ids:
        try:
            arrays = np.load(folder / f"{image_id}.npz")
            masks = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("mask/")}
            ignore = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("ignore/")}
        except (OSError, ValueError, EOFError) as exc:
            raise DatasetError(f"cannot read {folder / f'{image_id}.npz'} ({exc}); {RERUN}.") from exc
        samples.append(Sample(image_id, read_image(folder / f"{image_id}.png"), masks, ignore))
    skipped = [tuple(s) for s in manifest.get("skipped", [])]
    return Dataset(manifest.get("name", folder.name), samples, classes, skipped, manifest.get("notes", []))


def _plain(value: object) -> object:
    """JSON's view of a value (tuples as lists, paths as strings), so requests compare as recorded."""
    return None if value is None else json.loads(json.dumps(value, default=str))
