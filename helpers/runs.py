"""Saved evaluation runs: tables plus everything needed to tell two runs apart, and comparison.

Each run gets its own folder under ``outputs/<profile>/results/``: ``per_image.csv``,
``summary.csv`` (both carrying the profile and dataset in columns), any extra tables, and
``results.json`` with the settings, the dataset (name, path, classes, image count), the device,
the models with the sha256 of their weights, library versions, start and end times, and the
extra measures (recognition and mosaic accuracy, best thresholds).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd

from .files import atomic_path, write_text

LIBRARIES = ("torch", "torchvision", "segment-anything", "openai-clip", "numpy", "pandas", "sam-clip-segmentation")


def library_versions() -> dict[str, str]:
    """Python's and the main libraries' versions, for the run record."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cpu_record() -> dict[str, str]:
    """The CPU's model (``/proc/cpuinfo``'s, else ``platform``'s) and the kernels torch runs on it (AVX2, AVX512, ...):
    what a timing or a trained file's bytes depend on (float sums come out in another order on another CPU type)."""
    model = ""
    if Path("/proc/cpuinfo").is_file():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    import torch

    return {
        "model": model or platform.processor() or platform.machine(),
        "kernels": torch.backends.cpu.get_cpu_capability(),
    }


def _plain(value):
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, pd.DataFrame):
        return json.loads(value.to_json(orient="records"))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def new_run_folder(folder: str | Path) -> Path:
    """A new, unique ``run_<date>_<time>`` folder under ``folder``."""
    run = Path(folder) / time.strftime("run_%Y%m%d_%H%M%S")
    suffix = 0
    while run.exists():
        suffix += 1
        run = run.with_name(f"{run.name.split('__')[0]}__{suffix}")
    run.mkdir(parents=True)
    return run


def save_results(
    folder: str | Path,
    per_image: pd.DataFrame,
    summary: pd.DataFrame,
    record: dict,
    tables: dict[str, pd.DataFrame] | None = None,
) -> Path:
    """Write a run: CSV tables (tagged with ``record['profile']`` and ``record['dataset']['name']``
    when given) and ``results.json`` holding ``record`` (settings, provenance, measures) and the
    summary. Returns the new run folder."""
    run = new_run_folder(folder)
    tags = {"profile": record.get("profile"), "dataset": (record.get("dataset") or {}).get("name")}
    for name, table in {"per_image": per_image, "summary": summary, **(tables or {})}.items():
        tagged = table.copy()
        for column, value in tags.items():
            if value is not None and column not in tagged:
                tagged.insert(0, column, value)
        with atomic_path(run / f"{name}.csv") as tmp:  # whole or absent: notebook 04 reads best_thresholds.csv
            tagged.to_csv(tmp, index=False)
    payload = {**_plain(record), "summary": _plain(summary), "library_versions": library_versions()}
    payload.setdefault("finished", time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_text(run / "results.json", json.dumps(payload, indent=1, default=str))
    return run


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(value, default=str) if isinstance(value, list) else value}


def compare_runs(*runs: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summaries side by side: one row per run and class, settings that differ: one column per run)."""
    frames, records = [], {}
    for run in runs:
        run = Path(run)
        frame = pd.read_csv(run / "summary.csv")
        frame.insert(0, "run", run.name)
        frames.append(frame)
        record = json.loads((run / "results.json").read_text())
        record.pop("summary", None)
        records[run.name] = _flatten(record)
    settings = pd.DataFrame(records)
    differ = settings.astype(str).nunique(axis=1) > 1
    ignored = ("started", "finished")
    settings = settings[differ & ~settings.index.isin(ignored)]
    return pd.concat(frames, ignore_index=True), settings


def latest_best_thresholds(
    folder: str | Path, dataset: str | None = None, models: dict | None = None
) -> dict[str, float]:
    """The per-class best thresholds of the newest saved run that has them (of ``dataset``, made
    with ``models`` as ``session.run_record`` writes them), {} when none."""
    saved = [path for path in Path(folder).glob("run_*/results.json") if path.is_file()]
    for path in sorted(saved, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if dataset is not None and (record.get("dataset") or {}).get("name") != dataset:
            continue
        if models is not None and record.get("models") != models:
            continue  # thresholds found with other weights do not carry over
        rows = record.get("best_thresholds") or []
        if rows:
            return {r["class"]: r["best_threshold"] for r in rows if r.get("best_threshold") is not None}
    return {}
