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
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..cache import ResultCache
from ..data import Dataset, dataset_request, load_prepared, read_image
from ..pipeline import Pipeline, PipelineSettings, load_cached
from ..precision import check_precision
from .worker import (
    RAY_MISSING,
    DistributedResults,
    Failure,
    ImageWorker,
    ModelSpec,
    RunStats,
    image_items,
    peak_rss_mb,
)

__all__ = [
    "DistributedResults",
    "ImageWorker",
    "ModelSpec",
    "connect",
    "image_items",
    "peak_rss_mb",
    "process_dataset_on_ray",
]


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(RAY_MISSING) from exc
    return ray


_PRIVATE: set[str] = set()  # the GCS addresses of the Ray instances ``connect`` started in this process


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join a Ray cluster unless this process already has: ``"local"`` or ``None`` starts a private instance
    here, ``"auto"`` joins the one ``ray start --head`` started; anything else is a cluster address (``host:6379``).
    ``RAY_ADDRESS`` is read by ``helpers.config`` (``RunConfig.ray_address``): pass that to join its cluster.
    True when this process is on a private instance that ``connect`` started (its resources are all there will be)."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address in _PRIVATE
    if address not in (None, "local"):
        ray.init(address=address)
        return False
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    _PRIVATE.add(ray.get_runtime_context().gcs_address)
    return True


def check_resources(nodes: list[dict], gpus_per_worker: float, cpus_per_worker: float, local: bool) -> None:
    """Refuse a worker that no node of a private Ray instance on this machine (``local``) can take: Ray would wait
    for it forever, saying only that no node type fulfils the request. ``nodes``: each live node's resources. Another
    cluster may grow (an autoscaler): a warning there."""
    asked = {"GPU": (gpus_per_worker, "--gpus-per-worker"), "CPU": (cpus_per_worker, "--cpus-per-worker")}
    if any(all(node.get(key, 0) >= wanted for key, (wanted, _) in asked.items()) for node in nodes):
        return
    largest = {key: max((node.get(key, 0) for node in nodes), default=0) for key in asked}
    short = {key: f"{option} {wanted:g} (the largest node has {largest[key]:g})"
             for key, (wanted, option) in asked.items() if wanted and largest[key] < wanted}  # fmt: skip
    message = f"No Ray node can take one worker: {'; '.join(short.values()) or 'not both at once'}."
    if not local:
        warnings.warn(f"{message} The run waits until the cluster adds such a node.", stacklevel=3)
        return
    fixes = []
    if "GPU" in short:
        fixes.append("without a GPU here, leave --gpus-per-worker out (gpus_per_worker=0)")
    if "CPU" in short:
        fixes.append(f"give --cpus-per-worker {largest['CPU']:g} or less")
    raise ValueError(f"{message} This Ray instance runs on this machine alone: {'; '.join(fixes)}, or join a cluster "
                     "that has them with --address or RAY_ADDRESS.")  # fmt: skip


def node_resources(ray) -> list[dict]:
    """Each live node's resources (``ray.nodes()``)."""
    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive", True)]


def worker_spec(model_spec: ModelSpec, gpus_per_worker: float) -> ModelSpec:
    """What the workers load: absolute paths, and "auto" made "cpu" for workers given no GPU. Ray no longer hides
    the GPUs from an actor with ``num_gpus=0`` (ray-project/ray#54868), so "auto" would put every such worker's
    models on GPU 0, unaccounted for by Ray."""
    spec = model_spec.absolute()
    return replace(spec, device="cpu") if not gpus_per_worker and spec.device == "auto" else spec


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
    spec = worker_spec(model_spec, gpus_per_worker)
    if not gpus_per_worker:
        check_precision(settings.precision, "cpu")  # float16 would fail on every image of a CPU worker
    for path in (spec.sam_checkpoint, spec.clip_checkpoint):
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist (it must exist at this path on every node)")
    private = connect(address)
    check_resources(node_resources(ray), gpus_per_worker, cpus_per_worker, local=private)
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
        entry = (row["key"], row["sam_key"], row["embedding_key"], row["image_id"])
        if load_cached(cache, settings.filters, *entry) is None:  # checked here, read again when touched
            if local is None:
                local = Pipeline(*spec.load(), settings, cache_dir=cache_dir)
            image = dataset.samples[index].image if dataset else read_image(Path(path))  # scratch PNGs are gone
            entry = local.process(image, image_id)
            stats.recomputed_on_driver += 1
        results.append(entry)
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
    return DistributedResults(results, failures, stats, cache, settings.filters)


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

    from ..config import load_config, remember_start_dir

    remember_start_dir()  # relative paths in SAMCLIP_* are read from the folder this command started in
    config = load_config()
    if args.gpus_per_worker and config.device == "cpu":
        print(
            f"note: this driver has no GPU, so SAM is {config.sam_model} unless SAMCLIP_SAM_MODEL says otherwise; "
            "the GPU workers use the same (run notebooks 03-04 with the same value)",
            file=sys.stderr,
        )
    spec = ModelSpec.from_config(config)
    if args.sam_checkpoint:
        spec = replace(spec, sam_type=args.sam_type or spec.sam_type, sam_checkpoint=str(args.sam_checkpoint))
    if args.clip_checkpoint:
        spec = replace(spec, clip_checkpoint=str(args.clip_checkpoint))
    if args.images is None:  # notebook 01's dataset, read one image at a time from its manifest
        images = load_prepared(config.dataset_dir, expected=dataset_request(config))
    else:
        images = args.images
    cache_dir = args.cache_dir or config.cache_dir
    try:
        results = process_dataset_on_ray(
            images,
            spec,
            config.pipeline,
            cache_dir,
            args.workers,
            args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker,
            address=args.address or config.ray_address,
        )
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
