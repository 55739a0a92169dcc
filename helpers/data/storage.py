"""Prepared datasets on disk: what notebook 01 writes and notebooks 02-04 read.

A manifest by reference: the source files, their fingerprints and annotations (``lazy.SampleRef``),
not a copy of every image; only in-memory samples (the generated demo set) are copied."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_folder
from ..instances import Instance
from .lazy import CHANGED, LazySamples, SampleRef, missing_sources, register_reader
from .types import Dataset, DatasetError, Sample, id_path, read_image, sample_stats

RERUN = "run notebooks/01_prepare_dataset.ipynb again (or `make run`)"
STORED = "stored"  # samples copied into the prepared folder (in-memory datasets: the demo set)


def save_dataset(dataset: Dataset, folder: str | Path, request: dict | None = None) -> Path:
    """Write the dataset's manifest into ``folder`` (replaced atomically): samples read from files
    (``lazy.SampleRef``) by reference, with their annotations; in-memory samples (the generated
    demo set) as copies, images as PNG and masks as compressed npz beside it.

    ``request`` (see ``prepare.dataset_request``) is recorded so that ``load_prepared`` can tell
    whether the prepared data is what the current run asks for.
    """
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        _write_prepared(dataset, tmp, request)
    return folder


def _write_prepared(dataset: Dataset, tmp: Path, request: dict | None) -> None:
    refs = getattr(dataset.samples, "refs", None)
    entries = []
    if refs is not None and all(ref.reader != STORED for ref in refs):
        entries = [ref.to_json() for ref in refs]
    else:  # in memory (or copies of an earlier prepared folder, which this replaces): copy
        for sample in dataset.samples:
            (tmp / id_path(sample.image_id)).parent.mkdir(parents=True, exist_ok=True)  # an id with folders
            Image.fromarray(sample.image).save(tmp / f"{sample.image_id}.png")
            arrays = {f"mask/{k}": v for k, v in sample.masks.items()}
            arrays.update({f"ignore/{k}": v for k, v in sample.ignore.items()})
            arrays.update({f"instance/{i}/{inst.label}": inst.mask for i, inst in enumerate(sample.instances)})
            np.savez_compressed(tmp / f"{sample.image_id}.npz", **arrays)
            files = {"png": f"{sample.image_id}.png", "npz": f"{sample.image_id}.npz"}
            entries.append(SampleRef(sample.image_id, STORED, sample.image_id, files, sample_stats(sample)).to_json())
    manifest = {
        "format": 2,
        "name": dataset.name,
        "classes": dataset.classes,
        "ids": [entry["id"] for entry in entries],
        "samples": entries,
        "skipped": dataset.skipped,
        "notes": dataset.notes,
        "request": _plain(request),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, separators=(",", ":")))


def load_prepared(folder: str | Path, expected: dict | None = None) -> Dataset:
    """The dataset notebook 01 prepared (``save_dataset``), its samples read on touch.

    With ``expected`` (the current run's ``dataset_request(config)``), a dataset prepared for another
    request (another dataset, data path, class list or image limit) raises DatasetError naming both.
    Source files gone or resized since are listed here (none left: DatasetError); one that breaks
    later is reported when its sample is read (see ``lazy``).
    """
    folder = Path(folder).absolute()
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise DatasetError(f"No prepared dataset in {folder}: run notebooks/01_prepare_dataset.ipynb first.")
    try:
        manifest = json.loads(manifest_path.read_text())
        classes = manifest["classes"]
        if "samples" in manifest:
            refs = [SampleRef.from_json(entry) for entry in manifest["samples"]]
        else:  # the first format: copies named by id
            refs = [SampleRef(str(i), STORED, str(i), {"png": f"{i}.png", "npz": f"{i}.npz"}) for i in manifest["ids"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"The prepared dataset's manifest {manifest_path} is unreadable ({exc}); {RERUN}.") from exc
    if expected is not None and manifest.get("request") != _plain(expected):
        recorded = manifest.get("request") or "nothing (prepared by an older version)"
        raise DatasetError(
            f"The prepared dataset in {folder} is not the one this run asks for.\n"
            f"  prepared for: {recorded}\n  this run asks: {_plain(expected)}\nTo prepare this run's dataset, {RERUN}."
        )
    for ref in refs:
        if ref.reader == STORED:
            ref.source = {kind: str(folder / name) for kind, name in ref.source.items()}
    skipped = [tuple(s) for s in manifest.get("skipped", [])]
    gone = missing_sources(refs)  # one stat per source file: a moved or deleted data folder shows here
    if gone and len(gone) == len(refs):
        if all(CHANGED in reason for _, reason in gone):  # e.g. the COCO json that every sample shares, edited
            raise DatasetError(
                f"The source files of the prepared dataset in {folder} changed since notebook 01 (first: "
                f"{gone[0][1]}); {RERUN} to read them as they are now."
            )
        raise DatasetError(
            f"None of the {len(refs)} source files of the prepared dataset in {folder} is where notebook 01 found "
            f"it (first: {gone[0][1]}). Put the data back, or point SAMCLIP_DATA_PATH at its new place and {RERUN}."
        )
    if gone:
        labels = {label for label, _ in gone}
        refs = [ref for ref in refs if ref.label not in labels]
        skipped += gone
        warnings.warn(
            f"{len(gone)} source file(s) gone or changed since notebook 01, first: {gone[0][1]}", stacklevel=2
        )
    return Dataset(manifest.get("name", folder.name), LazySamples(refs), classes, skipped, manifest.get("notes", []))


@register_reader(STORED)
def read_stored_sample(ref: SampleRef) -> tuple[Sample, int]:
    """A sample copied into a prepared folder: its PNG and its npz of masks."""
    try:
        with np.load(ref.source["npz"]) as arrays:
            masks = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("mask/")}
            ignore = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("ignore/")}
            parts = sorted(
                (k.split("/", 2) for k in arrays.files if k.startswith("instance/")), key=lambda p: int(p[1])
            )
            instances = [Instance(arrays["/".join(p)], p[2]) for p in parts]
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"cannot read {ref.source['npz']} ({exc}); {RERUN}.") from exc
    return Sample(ref.image_id, read_image(Path(ref.source["png"])), masks, ignore, instances), 1


def _plain(value: object) -> object:
    """JSON's view of a value (tuples as lists, paths as strings), so requests compare as recorded."""
    return None if value is None else json.loads(json.dumps(value, default=str))
