"""One Ray worker vs two on this machine, tiny models, the same demo images, in one run.

Prints Ray's start-up cost, the wall time of each run (actor start-up and model loading included),
the time until the first image comes back, the throughput while the workers process images, the
per-image time inside the workers, each worker's peak memory, and an on-paper estimate (not a
measurement) of what more GPUs and nodes would give, from per-image times.

    python benchmarks/bench_distributed.py                     # 32 demo images, 1 and 2 workers
    python benchmarks/bench_distributed.py --images 64 --gpu-seconds 7.5

Needs the ray extra (``pip install -e '.[ray]'``); imports the installed package.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers.data import make_demo_dataset, read_image
from helpers.distributed.driver import ModelSpec, peak_rss_mb, process_dataset_on_ray
from helpers.masks import FilterSettings
from helpers.models.loading import load_clip, load_sam
from helpers.models.tiny import TINY_SAM, write_tiny_checkpoints
from helpers.pipeline import Pipeline, PipelineSettings
from helpers.runs import cpu_record
from helpers.segmentation import SamSettings

STARTUP_ESTIMATE_S = 60  # Ray, actors, loading the 2.4 GB vit_h checkpoint: once per run (assumed)


def pipeline_settings(points_per_side: int) -> PipelineSettings:
    """The tests' LOOSE_SAM gates (random tiny models then return masks); more points, more work."""
    sam = SamSettings(
        points_per_side=points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.95
    )
    return PipelineSettings(sam=sam, filters=FilterSettings(min_area=100, max_inside=0.9))


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def plain_process(paths: list[str], checkpoints: dict, points_per_side: int) -> tuple[float, float]:
    """The control: images through a Pipeline in a plain process (no Ray), 1 torch thread.
    Returns when its first image started and its last ended (epoch seconds)."""
    torch.set_num_threads(1)
    pipe = Pipeline(
        load_sam(TINY_SAM, checkpoints["sam"]), load_clip(checkpoints["clip"]), pipeline_settings(points_per_side)
    )
    started = time.time()
    for path in paths:
        pipe.process(read_image(Path(path)))
    return started, time.time()


def plain_rate(paths: list[str], checkpoints: dict, points_per_side: int, processes: int) -> float:
    """Images per second while ``processes`` plain processes share the images (start-up excluded)."""
    chunks = [(paths[i::processes], checkpoints, points_per_side) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        spans = pool.starmap(plain_process, chunks)
    return len(paths) / (max(end for _, end in spans) - min(start for start, _ in spans))


def timed_run(folder: Path, spec: ModelSpec, settings: PipelineSettings, cache: Path, workers: int) -> dict:
    """One Ray run on a fresh cache."""
    arrivals: list[float] = []
    started = time.perf_counter()
    results = process_dataset_on_ray(
        folder,
        spec,
        settings,
        cache,
        workers,
        progress=False,
        on_result=lambda row: arrivals.append(time.perf_counter()),
    )
    stats = results.stats
    return dict(
        workers=workers,
        wall=time.perf_counter() - started,
        first=arrivals[0] - started,
        processing=stats.processing_seconds,
        rate=len(results) / stats.processing_seconds,
        per_image=float(np.mean(stats.image_seconds)),
        rss=sorted(stats.worker_rss_mb.values()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--points-per-side", type=int, default=8, help="SAM prompt grid: more points, more work")
    parser.add_argument("--gpu-seconds", type=float, default=7.5, help="assumed vit_h seconds per image on one GPU")
    parser.add_argument("--dataset-size", type=int, default=5000, help="images in the on-paper estimate (COCO val)")
    args = parser.parse_args()
    settings = pipeline_settings(args.points_per_side)
    load_before = load_average()

    tmp = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    checkpoints = write_tiny_checkpoints(tmp / "checkpoints")
    spec = ModelSpec(TINY_SAM, str(checkpoints["sam"]), str(checkpoints["clip"]), device="cpu")
    dataset = make_demo_dataset(args.images)
    folder = tmp / "images"
    folder.mkdir()
    for sample in dataset:
        Image.fromarray(sample.image).save(folder / f"{sample.image_id}.png")

    # the control, no Ray: 1 and 2 plain processes with one torch thread each, no cache
    paths = [str(path) for path in sorted(folder.iterdir())]
    plain = {n: plain_rate(paths, checkpoints, args.points_per_side, n) for n in (1, 2)}

    started = time.perf_counter()
    import ray

    import_s = time.perf_counter() - started
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - started
    runs = [timed_run(folder, spec, settings, tmp / f"cache_{workers}", workers) for workers in (1, 2)]
    ray.shutdown()

    print(
        f"# {args.images} demo images, tiny SAM + CLIP, SAM gates open, points_per_side={args.points_per_side}; "
        f"{os.cpu_count()} CPUs ({cpu_record()['model']}), load average {load_before:.1f} before / "
        f"{load_average():.1f} after (other jobs share the machine); ray {ray.__version__}, torch {torch.__version__}"
    )
    print(f"# Ray start-up: import ray {import_s:.1f} s + ray.init(num_cpus=2) {init_s:.1f} s (once per driver)")
    print(
        f"# control without Ray, plain processes with 1 torch thread each: 1 process {plain[1]:.2f} images/s, "
        f"2 processes {plain[2]:.2f} images/s ({plain[2] / plain[1]:.2f}x); driver peak RSS {peak_rss_mb():.0f} MiB\n"
    )
    print(
        "| workers (1 CPU each) | wall s (start-up + images) | first image back s | processing s (first start "
        "to last end) | images/s while processing | s per image in a worker | peak RSS per worker MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        rss = " / ".join(f"{mb:.0f}" for mb in run["rss"])
        print(
            f"| {run['workers']} | {run['wall']:.1f} | {run['first']:.1f} | {run['processing']:.1f} "
            f"| {run['rate']:.2f} | {run['per_image']:.3f} | {rss} |"
        )
    one, two = runs
    wall_ratio, rate_ratio = one["wall"] / two["wall"], two["rate"] / one["rate"]
    print(f"\n2 vs 1 worker: wall time {wall_ratio:.2f}x faster, throughput while processing {rate_ratio:.2f}x")

    print(
        f"\n## ESTIMATE, not measured: {args.dataset_size} images at an assumed {args.gpu_seconds:.1f} s per image "
        f"per GPU (vit_h, the issue's 5-10 s), one worker per GPU, image work scaling perfectly, plus an assumed "
        f"{STARTUP_ESTIMATE_S} s start-up (Ray, actors, loading the 2.4 GB checkpoint) once per run\n"
    )
    print("| GPUs (nodes x GPUs) | images/s | hours for the dataset |")
    print("|---|---|---|")
    for nodes, gpus in ((1, 1), (1, 4), (1, 8), (4, 8)):
        rate = nodes * gpus / args.gpu_seconds
        hours = (args.dataset_size / rate + STARTUP_ESTIMATE_S) / 3600
        print(f"| {nodes * gpus} ({nodes} x {gpus}) | {rate:.2f} | {hours:.2f} |")


if __name__ == "__main__":
    main()
