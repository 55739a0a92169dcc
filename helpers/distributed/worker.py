"""The Ray side of ``helpers.distributed``: what a worker loads, does and reports.

Nothing here imports Ray: an ``ImageWorker`` is a plain class that Ray Data runs as an actor.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..cache import ResultCache, image_key
from ..config import choose_device
from ..data import IMAGE_SUFFIXES, Dataset, image_files, read_image
from ..masks import FilterSettings
from ..models.loading import LoadedClip, LoadedSam, load_clip, load_sam
from ..pipeline import CachedResults, ImageResult, Pipeline, PipelineSettings

RAY_MISSING = (
    "Ray is not installed: pip install 'ray[data]>=2.9' (the package's [ray] extra: pip install -e '.[ray]' in a "
    "checkout; make install includes it)."
)
OUTPUT_FIELDS = (
    "index",
    "path",
    "image_id",
    "key",
    "masks",
    "error",
    "seconds",
    "started",
    "sam_key",
    "embedding_key",
    "worker",
    "rss_mb",
    "cache_shared",
)


@dataclass(frozen=True)
class ModelSpec:
    """What each worker loads: checkpoint paths that exist on every node, not pickled models."""

    sam_type: str
    sam_checkpoint: str
    clip_checkpoint: str
    device: str = "auto"  # "auto": the worker's GPU when Ray gave it one, else its CPU (driver.worker_spec)

    def load(self) -> tuple[LoadedSam, LoadedClip]:
        """SAM and CLIP on this process's device."""
        device = choose_device(self.device)
        return load_sam(self.sam_type, self.sam_checkpoint, device), load_clip(self.clip_checkpoint, device)

    def absolute(self) -> ModelSpec:
        """The same spec with absolute paths (workers do not share the driver's working folder)."""
        return replace(
            self,
            sam_checkpoint=str(Path(self.sam_checkpoint).expanduser().resolve()),
            clip_checkpoint=str(Path(self.clip_checkpoint).expanduser().resolve()),
        )

    @classmethod
    def from_config(cls, config, device: str = "auto") -> ModelSpec:
        """The run's models (found, downloaded or built like the notebooks'); the cache keys come
        from the weights' sha256, so the notebooks find what the cluster computed."""
        from ..session import checkpoint_paths

        paths = checkpoint_paths(config)
        return cls(config.sam_model, str(paths["sam"]), str(paths["clip"]), device)


@dataclass(frozen=True)
class Failure:
    path: str
    image_id: str
    error: str


@dataclass
class RunStats:
    """What a run cost: wall time, per-image times, peak memory per worker."""

    images: int = 0
    wall_seconds: float = 0.0  # after joining Ray: worker start-up, model loading, images, reading back
    processing_seconds: float = 0.0  # first image started to last image finished, over all workers
    image_seconds: list[float] = field(default_factory=list)
    worker_rss_mb: dict[str, float] = field(default_factory=dict)  # "host:pid" -> peak RSS
    recomputed_on_driver: int = 0


class DistributedResults(CachedResults):
    """The ``ImageResult`` of each image in input order (failed images left out), read back from the
    shared cache when touched (``CachedResults``: memory does not grow with the folder), plus
    ``failures`` and ``stats``. An entry is an ``ImageResult`` (made on the driver) or the cache keys
    ``(key, sam_key, embedding_key, image_id)`` a worker stored it under."""

    def __init__(
        self,
        results: Sequence[ImageResult | tuple[str, str, str, str]],
        failures: Sequence[Failure],
        stats: RunStats,
        cache: ResultCache | None = None,
        filters: FilterSettings | None = None,
    ) -> None:
        super().__init__(cache, filters, list(results))
        self.failures = list(failures)
        self.stats = stats


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (VmHWM on Linux; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB elsewhere


class ImageWorker:
    """One Ray actor: loads SAM + CLIP once, then runs ``Pipeline.process`` on each image path it
    is given. An image that fails is returned with its error; the worker goes on."""

    def __init__(self, spec: ModelSpec, settings: PipelineSettings, cache_dir: str, marker: str, threads: int) -> None:
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        sam, clip = spec.load()
        self.pipe = Pipeline(sam, clip, settings, cache_dir=cache_dir)
        self.cache_shared = (Path(cache_dir) / marker).is_file()
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def process_one(self, index: int, path: str, image_id: str) -> dict[str, Any]:
        started, clock = time.perf_counter(), time.time()
        key, count, error = "", -1, ""
        try:
            image = read_image(Path(path))
            key = image_key(image)
            count = len(self.pipe.process(image, image_id).masks)
        except Exception as exc:  # one bad image must not stop the others
            error = f"{type(exc).__name__}: {exc}"
        return dict(
            index=index,
            path=path,
            image_id=image_id,
            key=key,
            masks=count,
            error=error,
            seconds=time.perf_counter() - started,
            started=clock,
            sam_key=self.pipe.sam_key,
            embedding_key=self.pipe.embedding_key,
            worker=self.name,
            rss_mb=peak_rss_mb(),
            cache_shared=self.cache_shared,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.process_one(int(i), str(p), str(n)) for i, p, n in zip(batch["index"], batch["path"], batch["id"])]
        return {name: np.array([row[name] for row in rows]) for name in OUTPUT_FIELDS}


def image_items(
    dataset_or_paths: Dataset | str | Path | Sequence[str | Path], scratch: Path | None = None
) -> list[tuple[str, str]]:
    """(absolute path, image id) per image: a folder's images (sorted, id = file stem), a list of
    files, or a ``Dataset`` whose images are written losslessly as PNGs into ``scratch``."""
    if isinstance(dataset_or_paths, Dataset):
        if scratch is None:
            raise ValueError("an in-memory Dataset needs a scratch folder that the workers can read")
        items = []
        for index, sample in enumerate(dataset_or_paths.samples):
            path = scratch / f"{index:06d}.png"
            Image.fromarray(sample.image).save(path)
            items.append((str(path), sample.image_id))
        return items
    if isinstance(dataset_or_paths, (str, Path)):
        folder = Path(dataset_or_paths).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder of images")
        files = image_files(folder)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    else:
        files = [Path(p).expanduser() for p in dataset_or_paths]
    return [(str(p.resolve()), p.stem) for p in files]
