"""One Ray worker vs two on this machine, tiny models, the same demo images, in one run.

Prints Ray's start-up cost, the wall time of each run (actor start-up and model loading included),
the time to the first image, the steady throughput after it, the per-image time inside the
workers, each worker's peak memory, and an on-paper estimate (not a measurement) of what more
GPUs and nodes would give, from per-image times.

    python benchmarks/bench_distributed.py                     # 16 demo images, 1 and 2 workers
    python benchmarks/bench_distributed.py --images 32 --gpu-seconds 7.5

Needs the ray extra (``pip install -e '.[ray]'``); imports the installed package.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers.data import make_demo_dataset
from helpers.distributed import ModelSpec, peak_rss_mb, process_dataset_on_ray
from helpers.masks import FilterSettings
from helpers.models import load_clip, load_sam
from helpers.pipeline import Pipeline, PipelineSettings
from helpers.segmentation import SamSettings
from helpers.tiny_models import TINY_SAM, write_tiny_checkpoints

# the tests' LOOSE_SAM: random tiny models return masks
SETTINGS = PipelineSettings(
    sam=SamSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.95),
    filters=FilterSettings(min_area=100, max_inside=0.9),
)


def timed_run(folder: Path, spec: ModelSpec, cache: Path, workers: int) -> dict:
    """One Ray run on a fresh cache; arrival time of every image."""
    arrivals: list[float] = []
    started = time.perf_counter()
    results = process_dataset_on_ray(
        folder,
        spec,
        SETTINGS,
        cache,
        workers,
        progress=False,
        on_result=lambda row: arrivals.append(time.perf_counter()),
    )
    wall = time.perf_counter() - started
    first, last = arrivals[0] - started, arrivals[-1] - started
    steady = (len(arrivals) - 1) / (last - first) if last > first else float("nan")
    return dict(
        workers=workers,
        wall=wall,
        first=first,
        steady=steady,
        per_image=float(np.mean(results.stats.image_seconds)),
        rss=sorted(results.stats.worker_rss_mb.values()),
        images=len(results),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--gpu-seconds", type=float, default=7.5, help="assumed vit_h seconds per image on one GPU")
    parser.add_argument("--dataset-size", type=int, default=5000, help="images in the on-paper estimate (COCO val)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    checkpoints = write_tiny_checkpoints(tmp / "checkpoints")
    spec = ModelSpec(TINY_SAM, str(checkpoints["sam"]), str(checkpoints["clip"]), device="cpu")
    dataset = make_demo_dataset(args.images)
    folder = tmp / "images"
    folder.mkdir()
    for sample in dataset:
        Image.fromarray(sample.image).save(folder / f"{sample.image_id}.png")

    # one process, one torch thread (what one worker gets), no cache: the compute alone
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pipe = Pipeline(load_sam(TINY_SAM, checkpoints["sam"]), load_clip(checkpoints["clip"]), SETTINGS)
    started = time.perf_counter()
    pipe.process_dataset(dataset, progress=False)
    single = time.perf_counter() - started
    torch.set_num_threads(threads)

    started = time.perf_counter()
    import ray

    import_s = time.perf_counter() - started
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - started
    runs = [timed_run(folder, spec, tmp / f"cache_{workers}", workers) for workers in (1, 2)]
    ray.shutdown()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# {args.images} demo images (tiny SAM + CLIP, LOOSE_SAM), {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), load average {load:.1f} at the end; "
        f"ray {ray.__version__}, torch {torch.__version__}"
    )
    print(f"# Ray start-up: import ray {import_s:.1f} s + ray.init(num_cpus=2) {init_s:.1f} s (once per driver)")
    print(
        f"# one process, 1 torch thread, no Ray: {single:.2f} s ({single / args.images:.3f} s per image, "
        f"{args.images / single:.2f} images/s); driver peak RSS {peak_rss_mb():.0f} MiB\n"
    )
    print(
        "| workers | wall s (actor start + models + images) | first image s | steady images/s "
        "| s per image in a worker | peak RSS per worker MiB |"
    )
    print("|---|---|---|---|---|---|")
    for run in runs:
        rss = " / ".join(f"{mb:.0f}" for mb in run["rss"])
        print(
            f"| {run['workers']} | {run['wall']:.1f} | {run['first']:.1f} | {run['steady']:.2f} "
            f"| {run['per_image']:.3f} | {rss} |"
        )
    one, two = runs
    wall_ratio, steady_ratio = one["wall"] / two["wall"], two["steady"] / one["steady"]
    print(f"\n2 vs 1 worker: wall {wall_ratio:.2f}x, steady throughput {steady_ratio:.2f}x")

    print(
        f"\n## ESTIMATE, not measured: {args.dataset_size} images at an assumed {args.gpu_seconds:.1f} s per image "
        "per GPU (vit_h, the issue's 5-10 s), one worker per GPU, perfect scaling of the image work, plus "
        "~60 s start-up (Ray, actors, loading the 2.4 GB checkpoint) once per run\n"
    )
    print("| GPUs (nodes x GPUs) | images/s | hours for the dataset |")
    print("|---|---|---|")
    for nodes, gpus in ((1, 1), (1, 4), (1, 8), (4, 8)):
        total = nodes * gpus
        rate = total / args.gpu_seconds
        hours = (args.dataset_size / rate + 60) / 3600
        print(f"| {total} ({nodes} x {gpus}) | {rate:.2f} | {hours:.2f} |")


if __name__ == "__main__":
    main()
