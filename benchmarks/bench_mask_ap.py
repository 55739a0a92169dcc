"""Mask AP: pycocotools' COCOeval against faster-coco-eval on the same ground truth and detections.

The ground truth and detections are built once with ``helpers.export`` (as ``evaluation.mask_ap`` does):
the real COCO subset in ``../shared/data/coco_val2017_mini`` when present, else generated demo images.
Detections are the ground-truth objects shifted by 0-5 pixels with random scores, some dilated, plus
shifted duplicates. It prints the time of each step, the evaluation time of both libraries (median of
``--repeat`` runs) and the largest difference between their 12 summary numbers and precision arrays.
faster-coco-eval is measured only when installed (``pip install faster-coco-eval``).

    python benchmarks/bench_mask_ap.py
    python benchmarks/bench_mask_ap.py --repeat 5 --demo 200
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from helpers.data import load_coco, make_demo_dataset
from helpers.export import coco_dataset, scored_entries
from helpers.instances import Instance

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco_val2017_mini"


def detections(dataset, seed: int = 0) -> dict[str, list[Instance]]:
    rng = np.random.default_rng(seed)
    found = {}
    for sample in dataset:
        out = []
        for instance in sample.instances:
            mask = np.roll(instance.mask, int(rng.integers(0, 6)), axis=1)
            if rng.random() < 0.5:
                mask = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            out.append(Instance(mask, instance.label, float(rng.random())))
            if rng.random() < 0.3:
                out.append(Instance(np.roll(instance.mask, 40, axis=0), instance.label, float(rng.random())))
        found[sample.image_id] = out
    return found


def evaluate(coco_class, eval_class, truth: dict, results: list[dict]):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_class()
        gt.dataset = truth
        gt.createIndex()
        dt = coco_class()
        annotations = [dict(entry, id=number) for number, entry in enumerate(results, 1)]
        dt.dataset = {"images": truth["images"], "categories": truth["categories"], "annotations": annotations}
        dt.createIndex()
        evaluator = eval_class(gt, dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--demo", type=int, default=0, help="use N generated demo images instead of the COCO subset")
    args = parser.parse_args()
    if SHARED.is_dir() and not args.demo:
        dataset = load_coco(SHARED / "annotations" / "instances_val2017.json", SHARED / "val2017", check=False)
    else:
        dataset = make_demo_dataset(args.demo or 100, seed=7)
    start = time.perf_counter()
    truth = coco_dataset(dataset)
    built = time.perf_counter()
    predictions = detections(dataset)
    ready = time.perf_counter()
    results = scored_entries(dataset, predictions)
    encoded = time.perf_counter()
    print(
        f"# {dataset.name}: {len(dataset)} images, {len(truth['annotations'])} ground-truth annotations, "
        f"{len(results)} detections"
    )
    print(f"ground truth read and RLE-encoded: {built - start:.2f} s; detections RLE-encoded: {encoded - ready:.2f} s")

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    libraries = {"pycocotools": (COCO, COCOeval)}
    try:
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster

        libraries["faster-coco-eval"] = (FasterCOCO, COCOeval_faster)
    except ImportError:
        print("faster-coco-eval is not installed: pip install faster-coco-eval to compare")
    reference = None
    for name, (coco_class, eval_class) in libraries.items():
        times = []
        for _ in range(args.repeat):
            tick = time.perf_counter()
            evaluator = evaluate(coco_class, eval_class, truth, results)
            times.append(time.perf_counter() - tick)
        stats = np.asarray(evaluator.stats[:12], float)
        print(
            f"{name}: evaluate + accumulate + summarize {statistics.median(times):.3f} s (median of {args.repeat}); "
            f"AP {stats[0]:.6f} AP50 {stats[1]:.6f} AP75 {stats[2]:.6f} AR100 {stats[8]:.6f}"
        )
        if reference is None:
            reference = (stats, np.asarray(evaluator.eval["precision"]))
        else:
            precision = np.asarray(evaluator.eval["precision"])
            print(
                f"  vs pycocotools: summary identical {np.array_equal(stats, reference[0])}, largest difference "
                f"{np.abs(stats - reference[0]).max():.3g}; precision array identical "
                f"{np.array_equal(precision, reference[1])}, largest difference "
                f"{np.abs(precision - reference[1]).max():.3g}"
            )


if __name__ == "__main__":
    main()
