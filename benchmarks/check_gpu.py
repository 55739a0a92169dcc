"""The demo chain on a GPU against the CPU, in one run: same masks, same embeddings, same answers?

    python benchmarks/check_gpu.py                   # 8 demo images (seed 7401), cuda float32 and bfloat16 vs cpu
    python benchmarks/check_gpu.py --device cpu      # the script's own smoke test (cpu against itself)

The committed demo models run the pipeline (``DEMO_SETTINGS``: the project's mask generator, filters, cut-outs,
CLIP) on every image on the CPU in float32 (the reference), then on ``--device`` in float32 and in each of
``--precisions``. Per run it prints: seconds per image (after one warm-up image), masks made, the worst best-match
IoU of a mask with the reference's masks, the largest CLIP-embedding difference on the images whose masks are the
same (nan: none), and, prompting every class present by name (``DEMO_SELECTION``), the mean IoU with the ground
truth and the mean and lowest IoU with the reference's answer. It exits with status 1 when the float32 run on
``--device`` answers differently (mean IoU with the reference's answers below ``--min-agreement``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.data import DEMO_CLASSES, make_demo_dataset  # noqa: E402
from helpers.demo.models import DEMO_SELECTION, DEMO_SETTINGS, load_demo_models  # noqa: E402
from helpers.masks import best_match_iou  # noqa: E402
from helpers.metrics import iou  # noqa: E402
from helpers.pipeline import Pipeline  # noqa: E402


def run(device: str, precision: str, samples) -> dict:
    """The pipeline's results, answers per (image, class) and seconds per image on ``device``."""
    sam, clip = load_demo_models(device)
    pipeline = Pipeline(sam, clip, replace(DEMO_SETTINGS, precision=precision))
    pipeline.process(samples[0].image)  # warm-up: kernels, autotuning
    results, answers, start = [], {}, time.perf_counter()
    for index, sample in enumerate(samples):
        result = pipeline.process(sample.image)
        results.append(result)
        for name, truth in sample.masks.items():
            if truth.any():
                answers[index, name] = pipeline.predict(result, name, DEMO_SELECTION, DEMO_CLASSES).mask
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"results": results, "answers": answers, "seconds": (time.perf_counter() - start) / len(samples)}


def same_answer(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two answers; two empty answers agree (1.0)."""
    return iou(a, b) if (a | b).any() else 1.0


def compare(run_: dict, reference: dict, samples) -> dict:
    match, embedding_delta = 1.0, float("nan")  # nan: no image with the same masks to compare embeddings on
    for ours, ref in zip(run_["results"], reference["results"]):
        if len(ours.masks) and len(ref.masks):
            match = min(match, float(best_match_iou(ours.masks, ref.masks).min()))
        elif len(ours.masks) != len(ref.masks):
            match = 0.0
        same = len(ours.masks) == len(ref.masks) and np.array_equal(ours.masks.to_dense(), ref.masks.to_dense())
        if same and len(ours.masks):
            delta = float(np.abs(ours.embeddings - ref.embeddings).max())
            embedding_delta = delta if np.isnan(embedding_delta) else max(embedding_delta, delta)
    truth = {(i, name): samples[i].masks[name] for i, name in reference["answers"]}
    agreement = [same_answer(run_["answers"][key], reference["answers"][key]) for key in reference["answers"]]
    return {
        "masks": sum(len(r.masks) for r in run_["results"]),
        "match": match,
        "embedding_delta": embedding_delta,
        "truth_iou": float(np.mean([iou(run_["answers"][key], mask) for key, mask in truth.items()])),
        "agreement": float(np.mean(agreement)),
        "lowest_agreement": float(np.min(agreement)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", nargs="*", default=["bfloat16"], help="besides float32 on --device")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7401)
    parser.add_argument("--min-agreement", type=float, default=0.99)
    args = parser.parse_args(argv)
    samples = make_demo_dataset(args.images, seed=args.seed).samples
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"demo models, {args.images} demo images (seed {args.seed}), ", end="")
    print(f"{args.device} ({name}), torch {torch.__version__}")
    reference = run("cpu", "float32", samples)
    print(
        "\n| run | s per image | masks | worst mask match | max Δ embedding | IoU with truth | answers as on CPU "
        "(mean / lowest IoU) |\n|---|---|---|---|---|---|---|"
    )
    row = compare(reference, reference, samples)
    seconds, masks, truth_iou = reference["seconds"], row["masks"], row["truth_iou"]
    print(f"| cpu float32 (reference) | {seconds:.3f} | {masks} | – | – | {truth_iou:.3f} | – |")
    status = 0
    for precision in ["float32", *args.precisions]:
        ours = run(args.device, precision, samples)
        row = compare(ours, reference, samples)
        print(
            f"| {args.device} {precision} | {ours['seconds']:.3f} | {row['masks']} | {row['match']:.4f} "
            f"| {row['embedding_delta']:.1e} | {row['truth_iou']:.3f} | {row['agreement']:.4f} / "
            f"{row['lowest_agreement']:.4f} |",
            flush=True,
        )
        if precision == "float32" and row["agreement"] < args.min_agreement:
            print(f"FAIL: float32 on {args.device} answers differently from the CPU (mean IoU {row['agreement']:.4f})")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
