"""Peak memory against dataset size: a COCO folder through notebooks 01-03's four calls.

Each size runs in a fresh process (smoke profile, cold cache): ``prepare_dataset`` (notebook 01),
``session.open_run``, ``Pipeline.process_dataset`` and ``evaluation.evaluate``. Two modes in one run:
``lazy`` (what the notebooks do: samples read on touch, a manifest by reference, results read back
from the cache) and ``memory`` (the baseline, as before: every sample decoded into a list, PNG copies
in the prepared folder, results kept in a list). It prints peak RSS per size, the growth per extra
image between the two smallest and largest sizes, and seconds per image with the lazy/memory ratio.

    python benchmarks/bench_memory.py                          # 60 and 600 images of 640 x 480
    python benchmarks/bench_memory.py --sizes 60 5000 --modes lazy
    python benchmarks/bench_memory.py --quick                  # 4 and 12 small images (the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from helpers.data import DEMO_CLASSES, make_demo_dataset


def write_coco_folder(root: Path, count: int, height: int = 480, width: int = 640) -> Path:
    """``count`` generated demo images (JPEG, quality 90) with one RLE annotation per shape, as a
    COCO folder (``val2017/``, ``annotations/instances_val2017.json``); kept when already there."""
    annotation_file = root / "annotations" / "instances_val2017.json"
    if annotation_file.is_file() and len(json.loads(annotation_file.read_text())["images"]) == count:
        return root
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        sample = make_demo_dataset(1, height, width, seed=1000 + index).samples[0]
        name = f"{index:012d}.jpg"
        Image.fromarray(sample.image).save(root / "val2017" / name, quality=90)
        images.append({"id": index + 1, "file_name": name, "height": height, "width": width})
        for category, shape in enumerate(DEMO_CLASSES, 1):
            mask = sample.masks[shape]
            if mask.any():
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": index + 1,
                        "category_id": category,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                        "area": int(mask.sum()),
                        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                        "iscrowd": 0,
                    }
                )
    categories = [{"id": i, "name": n} for i, n in enumerate(DEMO_CLASSES, 1)]
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def child(mode: str) -> dict:
    """The four calls in this process, under the SAMCLIP_* variables the parent set."""
    from helpers.config import load_config
    from helpers.data import dataset_request, prepare_dataset, save_dataset
    from helpers.evaluation import evaluate
    from helpers.session import open_run

    config = load_config()
    seconds = {}
    started = time.perf_counter()
    dataset = prepare_dataset(config)
    if mode == "memory":  # the baseline: decoded into a list, copies in the prepared folder
        save_dataset(dataset.in_memory(), config.dataset_dir, request=dataset_request(config))
    seconds["prepare"] = time.perf_counter() - started
    started = time.perf_counter()
    run = open_run(config)
    if mode == "memory":
        run.dataset = run.dataset.in_memory()
    seconds["open_run"] = time.perf_counter() - started
    started = time.perf_counter()
    results = run.pipeline.process_dataset(run.dataset, progress=False)
    seconds["process"] = time.perf_counter() - started
    started = time.perf_counter()
    table = evaluate(run.dataset, results, run.text, run.classes, config.selection)
    seconds["evaluate"] = time.perf_counter() - started
    prepared = sum(f.stat().st_size for f in config.dataset_dir.iterdir())
    return {
        "images": len(run.dataset),
        "rows": len(table),
        "mean_iou": float(table["iou"].mean()),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": seconds,
        "prepared_mib": prepared / 2**20,
        "sam_runs": run.pipeline.sam_runs,
    }


def measure(mode: str, size: int, data: Path, home: Path) -> dict:
    """One fresh process: ``size`` images, ``mode``, a cache of its own (cold)."""
    env = dict(
        os.environ,
        SAMCLIP_PROFILE="smoke",
        SAMCLIP_DATASET="coco",
        SAMCLIP_DATA_PATH=str(data),
        SAMCLIP_MAX_IMAGES=str(size),
        SAMCLIP_HOME=str(home / f"{mode}-{size}"),
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
    )
    env.pop("SAMCLIP_START_DIR", None)
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"{mode} at {size} images failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="default 60 600")
    parser.add_argument("--modes", nargs="+", default=["lazy", "memory"], choices=["lazy", "memory"])
    parser.add_argument("--data", type=Path, default=None, help="where the COCO folder is generated (kept)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--quick", action="store_true", help="4 and 12 images of 96 x 128 (seconds)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return []
    if args.quick:
        args.height, args.width = 96, 128
    args.sizes = args.sizes or ([4, 12] if args.quick else [60, 600])
    sizes = sorted(set(args.sizes))
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        data = args.data or Path(scratch) / "coco"
        started = time.perf_counter()
        write_coco_folder(data, sizes[-1], args.height, args.width)
        print(
            f"COCO folder of {sizes[-1]} images of {args.width} x {args.height}: {data} "
            f"({time.perf_counter() - started:.0f} s)"
        )
        rows = []
        for size in sizes:
            for mode in args.modes:
                row = {"mode": mode, "size": size, **measure(mode, size, data, Path(scratch) / "home")}
                row["s_per_image"] = sum(row["seconds"].values()) / row["images"]
                rows.append(row)
                steps = ", ".join(f"{k} {v:.1f} s" for k, v in row["seconds"].items())
                print(
                    f"{mode:>6} {size:>5} images: peak RSS {row['peak_rss_mib']:7.0f} MiB, "
                    f"{row['s_per_image']:.3f} s/image ({steps}), "
                    f"prepared folder {row['prepared_mib']:.1f} MiB, mean IoU {row['mean_iou']:.6f}"
                )
    by = {(r["mode"], r["size"]): r for r in rows}
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        for mode in args.modes:
            growth = (by[mode, large]["peak_rss_mib"] - by[mode, small]["peak_rss_mib"]) / (large - small)
            print(f"{mode}: peak RSS grows {growth:.3f} MiB per extra image ({small} -> {large})")
    if set(args.modes) == {"lazy", "memory"}:
        for size in sizes:
            lazy, memory = by["lazy", size], by["memory", size]
            ratio = lazy["s_per_image"] / memory["s_per_image"]
            same = np.array_equal(lazy["mean_iou"], memory["mean_iou"], equal_nan=True)
            print(f"{size} images: lazy / memory seconds per image = {ratio:.2f}; same mean IoU: {same}")
    return rows


if __name__ == "__main__":
    main()
