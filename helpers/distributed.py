"""Process a dataset on a Ray cluster: one SAM + CLIP per worker, results in the shared cache.

The per-image cache is content-addressed and written atomically, so images can be processed in
any order, by any number of workers, and a rerun only does what is missing. Ray Data streams the
image paths through an actor pool (``map_batches``); each actor loads the models once, reads its
images from disk itself and calls ``Pipeline.process``, which writes the cache. The driver then
reads every result back from the cache, so notebooks 03-04 find them unchanged.

The cache folder must be storage that every node and the driver see (NFS, a mounted bucket);
on node-local disks each node fills its own cache and the driver recomputes what it cannot see
(it warns when that happens). Single machines and Colab keep using ``Pipeline.process_dataset``.

Ray is an optional extra: ``pip install -e '.[ray]'``. Command line::

    python -m helpers.distributed --address local --workers 2 --images DIR
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .cache import ResultCache, image_key
from .data import IMAGE_SUFFIXES, Dataset, read_image
from .masks import apply_filters
from .models import LoadedClip, LoadedSam
from .pipeline import ImageResult, Pipeline, PipelineSettings

RAY_MISSING = "Ray is not installed; install the extra: pip install -e '.[ray]' (make install does)."
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
    device: str = "auto"  # "auto": the worker's GPU when Ray gave it one, else its CPU
    clip_name: str | None = None  # CLIP's name in the cache keys; None: load_clip's default

    def load(self) -> tuple[LoadedSam, LoadedClip]:
        """SAM and CLIP on this process's device."""
        from .config import choose_device
        from .models import load_clip, load_sam

        device = choose_device(self.device)
        return load_sam(self.sam_type, self.sam_checkpoint, device), load_clip(
            self.clip_checkpoint, device, self.clip_name
        )

    def absolute(self) -> ModelSpec:
        """The same spec with absolute paths (workers do not share the driver's working folder)."""
        return replace(
            self,
            sam_checkpoint=str(Path(self.sam_checkpoint).expanduser().resolve()),
            clip_checkpoint=str(Path(self.clip_checkpoint).expanduser().resolve()),
        )

    @classmethod
    def from_config(cls, config, device: str = "auto") -> ModelSpec:
        """The models ``helpers.models.load_models(config)`` loads, with the same cache names, so
        the notebooks find what the cluster computed. Downloads (or builds) missing checkpoints."""
        from .checkpoints import get_checkpoint
        from .models import checkpoint_paths

        paths = checkpoint_paths(config)
        sam_type = config.sam_model if config.is_smoke else get_checkpoint(config.sam_model).name
        clip_name = f"{config.clip_model}:{paths['clip'].name}"
        return cls(sam_type, str(paths["sam"]), str(paths["clip"]), device, clip_name)


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


class DistributedResults(list):
    """``list[ImageResult]`` in input order (failed images left out), plus ``failures`` and ``stats``."""

    def __init__(self, results: Sequence[ImageResult], failures: Sequence[Failure], stats: RunStats) -> None:
        super().__init__(results)
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
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    else:
        files = [Path(p).expanduser() for p in dataset_or_paths]
    return [(str(p.resolve()), p.stem) for p in files]


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(RAY_MISSING) from exc
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join a Ray cluster unless this process already has: ``"local"`` starts a private instance
    here, ``"auto"`` joins the one ``ray start --head`` started, ``None`` joins ``RAY_ADDRESS`` when
    set and starts a private instance otherwise; anything else is a cluster address (``host:6379``)."""
    ray = _import_ray()
    if ray.is_initialized():
        return
    if address == "local" or (address is None and not os.environ.get("RAY_ADDRESS")):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    else:
        ray.init(address=address)


def _from_cache(cache: ResultCache, settings: PipelineSettings, row: dict) -> ImageResult | None:
    """What ``Pipeline.process`` returns on a cache hit, found by the keys the worker used."""
    masks = cache.load_masks(row["key"], row["sam_key"])
    embeddings = cache.load_embeddings(row["key"], row["embedding_key"])
    if masks is None or embeddings is None:
        return None
    masks = apply_filters(masks, settings.filters)
    if len(masks) != len(embeddings):
        return None
    return ImageResult(row["image_id"] or row["key"], masks, embeddings)


def process_dataset_on_ray(
    dataset_or_paths: Dataset | str | Path | Sequence[str | Path],
    model_spec: ModelSpec,
    settings: PipelineSettings,
    cache_dir: str | Path,
    num_workers: int = 2,
    gpus_per_worker: float = 0.0,
    *,
    cpus_per_worker: float = 1.0,
    address: str | None = None,
    progress: bool = True,
    on_result: Callable[[dict], None] | None = None,
) -> DistributedResults:
    """SAM + CLIP for every image on ``num_workers`` Ray actors sharing ``cache_dir``.

    ``dataset_or_paths``: a folder of images, a list of image files (the workers read them; the
    paths must be valid on every node), or an in-memory ``Dataset`` (its images are written as
    PNGs into a temporary folder inside ``cache_dir``, removed afterwards). Results come back in
    input order, read from the cache; an image that failed is left out and listed in
    ``.failures`` with its path. ``on_result`` sees each worker row as it arrives (progress hooks).
    """
    ray = _import_ray()
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    cache_dir = Path(cache_dir).expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    spec = model_spec.absolute()
    for path in (spec.sam_checkpoint, spec.clip_checkpoint):
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist (it must exist at this path on every node)")
    connect(address)
    started = time.perf_counter()
    marker = cache_dir / f".driver-{uuid.uuid4().hex}"  # do the workers see the driver's cache folder?
    marker.touch()
    scratch = (
        Path(tempfile.mkdtemp(prefix=".ray-inputs-", dir=cache_dir)) if isinstance(dataset_or_paths, Dataset) else None
    )
    context = ray.data.DataContext.get_current()
    saved_bars = context.enable_progress_bars
    rows: dict[int, dict] = {}
    try:
        items = image_items(dataset_or_paths, scratch)
        context.enable_progress_bars = False  # our own bar below counts images, not blocks
        ds = ray.data.from_items([{"index": i, "path": p, "id": n} for i, (p, n) in enumerate(items)])
        ds = ds.map_batches(
            ImageWorker,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            fn_constructor_kwargs=dict(
                spec=spec,
                settings=settings,
                cache_dir=str(cache_dir),
                marker=marker.name,
                threads=0 if gpus_per_worker else max(1, int(cpus_per_worker)),
            ),
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
        )  # Ray Data restarts a worker that dies (max_restarts=-1) and retries its images
        bar = tqdm(total=len(items), desc=f"SAM + CLIP on {num_workers} Ray workers", disable=not progress)
        for row in ds.iter_rows():
            row = {name: (value.item() if isinstance(value, np.generic) else value) for name, value in row.items()}
            rows[row["index"]] = row
            bar.update(1)
            if row["error"]:
                bar.write(f"failed: {row['path']}: {row['error']}")
            if on_result:
                on_result(row)
        bar.close()
    finally:
        context.enable_progress_bars = saved_bars
        marker.unlink(missing_ok=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    dataset = dataset_or_paths if isinstance(dataset_or_paths, Dataset) else None
    return _collect(items, rows, spec, settings, cache_dir, time.perf_counter() - started, dataset)


def _collect(
    items: list[tuple[str, str]],
    rows: dict[int, dict],
    spec: ModelSpec,
    settings: PipelineSettings,
    cache_dir: Path,
    wall: float,
    dataset: Dataset | None,
) -> DistributedResults:
    """Read every finished image back from the cache; recompute here what the driver cannot see."""
    cache = ResultCache(cache_dir)
    stats = RunStats(images=len(items), wall_seconds=wall)
    failures, results, local = [], [], None
    for index, (path, image_id) in enumerate(items):
        row = rows.get(index)
        if row is not None:
            stats.worker_rss_mb[row["worker"]] = max(stats.worker_rss_mb.get(row["worker"], 0.0), row["rss_mb"])
        if row is None or row["error"]:
            error = row["error"] if row else "no result came back from the cluster"
            failures.append(Failure(path, image_id, error))
            continue
        stats.image_seconds.append(row["seconds"])
        result = _from_cache(cache, settings, row)
        if result is None:
            if local is None:
                local = Pipeline(*spec.load(), settings, cache_dir=cache_dir)
            image = dataset.samples[index].image if dataset else read_image(Path(path))  # scratch PNGs are gone
            result = local.process(image, image_id)
            stats.recomputed_on_driver += 1
        results.append(result)
    keys = {(row["sam_key"], row["embedding_key"]) for row in rows.values() if not row["error"]}
    if len(keys) > 1:
        warnings.warn(
            f"the workers used {len(keys)} different model/settings keys: do the checkpoint files differ between "
            "nodes? Notebooks 03-04 will only find the results made with their own models.",
            stacklevel=3,
        )
    if rows:
        ends = [row["started"] + row["seconds"] for row in rows.values()]
        stats.processing_seconds = max(ends) - min(row["started"] for row in rows.values())
    unshared = sorted({row["worker"] for row in rows.values() if not row["cache_shared"]})
    if unshared or stats.recomputed_on_driver:
        warnings.warn(
            f"{cache_dir} is not the same folder on every node (workers that could not see the driver's files: "
            f"{', '.join(unshared) or 'none'}); {stats.recomputed_on_driver} image(s) were recomputed on the driver. "
            "Put the cache on shared storage.",
            stacklevel=3,
        )
    if failures:
        warnings.warn(f"{len(failures)} image(s) failed, first: {failures[0].path}: {failures[0].error}", stacklevel=3)
    return DistributedResults(results, failures, stats)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m helpers.distributed``: fill the cache for a folder of images on a Ray cluster."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.distributed",
        description="Run SAM + CLIP over a folder of images on a Ray cluster; results go to the shared cache. "
        "Models and settings follow the SAMCLIP_* variables, as in the notebooks.",
    )
    parser.add_argument("--address", default=None, help="local (new instance here), auto (ray start), host:port")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors, one SAM + CLIP each")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="e.g. 1, or 0.5 for two per GPU")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--images", type=Path, default=None, help="folder of images (default: notebook 01's dataset)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="shared cache folder (default: the run's)")
    parser.add_argument("--sam-type", default=None, help="with --sam-checkpoint: SAM type (vit_h, vit_l, vit_b)")
    parser.add_argument("--sam-checkpoint", type=Path, default=None)
    parser.add_argument("--clip-checkpoint", type=Path, default=None)
    args = parser.parse_args(argv)

    from .config import load_config
    from .pipeline import default_settings

    config = load_config()
    if args.gpus_per_worker and config.device == "cpu" and not os.environ.get("SAMCLIP_SAM_MODEL"):
        print(
            f"note: this driver has no GPU, so SAM defaults to {config.sam_model}; set SAMCLIP_SAM_MODEL=vit_h "
            "for the GPU workers (and run notebooks 03-04 with the same value)",
            file=sys.stderr,
        )
    spec = ModelSpec.from_config(config)
    if args.sam_checkpoint:
        spec = replace(spec, sam_type=args.sam_type or spec.sam_type, sam_checkpoint=str(args.sam_checkpoint))
    if args.clip_checkpoint:
        spec = replace(spec, clip_checkpoint=str(args.clip_checkpoint), clip_name=None)
    images = args.images or config.dataset_dir
    cache_dir = args.cache_dir or config.cache_dir
    results = process_dataset_on_ray(
        images,
        spec,
        default_settings(config),
        cache_dir,
        args.workers,
        args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        address=args.address,
    )
    stats = results.stats
    per_image = np.mean(stats.image_seconds) if stats.image_seconds else float("nan")
    print(
        f"{len(results)} of {stats.images} images in {cache_dir} in {stats.wall_seconds:.1f} s "
        f"({per_image:.2f} s per image per worker); {len(results.failures)} failed"
    )
    for failure in results.failures:
        print(f"  failed: {failure.path}: {failure.error}", file=sys.stderr)
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
