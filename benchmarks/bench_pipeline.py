"""Naive pipeline vs ours, on the same images and models, in one run.

Naive (the source reports): one CLIP forward pass per mask with the prompt encoded again for
every mask, and a threshold sweep that recomputes the scores and the union at every threshold.
Ours: all regions of an image in batches, the prompt encoded once, a sweep from cached masks
and embeddings. Both must give the same masks; the script asserts it.

    python benchmarks/bench_pipeline.py                 # SAM vit_b + CLIP ViT-B/32, random weights
    python benchmarks/bench_pipeline.py --device cuda   # on a GPU
    python benchmarks/bench_pipeline.py --quick         # tiny models, seconds (used by the tests)

Real checkpoints are used when present in checkpoints/ (compute does not depend on the
weights, so random ones time the same work).
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import clip
import numpy as np
import torch
from clip.model import CLIP
from segment_anything import sam_model_registry

from helpers import evaluation, metrics
from helpers.clip_scoring import DEFAULT_TEMPLATES, TextEmbeddings, encode_images, encode_text
from helpers.data import Dataset, Sample, make_demo_dataset
from helpers.masks import MaskSet, best_match_iou
from helpers.models.loading import LoadedClip, LoadedSam, load_clip, load_sam
from helpers.models.tiny import TINY_SAM, write_tiny_checkpoints
from helpers.pipeline import ImageResult, Pipeline, PipelineSettings
from helpers.precision import check_precision
from helpers.regions import RegionSettings, extract_regions
from helpers.segmentation import SamSettings, generate_masks

ROOT = Path(__file__).resolve().parents[1]

PROMPT = "circle"
# a dataset's class list: the first three are the COCO mini's, all eleven CamVid's size
CLASS_NAMES = ("person", "chair", "dog", "sky", "building", "pole", "road", "sidewalk", "tree", "car", "bicycle")
MIN_SCORED_MASKS = 16  # the size table scores at least this many masks, boxes when SAM finds fewer
# random weights find no masks at SAM's default gates; open them (the work done is the same)
OPEN_GATES = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0)


def naive_scores(
    model: LoadedClip, regions: Sequence[np.ndarray], prompt: str, templates: Sequence[str] = DEFAULT_TEMPLATES
) -> np.ndarray:
    """The reference loop of the source reports: one forward pass per region, the text encoded
    again every time. The baseline this benchmark times, and the tests' slow reference."""
    scores = []
    for region in regions:
        text = encode_text(model, [prompt], templates)[0]
        image = encode_images(model, [region], batch_size=1)[0]
        scores.append(float(image @ text))
    return np.asarray(scores, np.float32)


class PeakMemory:
    """Peak resident memory (CPU) or peak allocated CUDA memory above the start, in MiB."""

    def __init__(self, device: str) -> None:
        self.device, self.peak = device, 0.0

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.005)

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            self.base = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20 - self.base
        else:
            self._stop.set()
            self._thread.join()
        self.seconds = time.perf_counter() - self.started


def load_benchmark_models(args) -> tuple[LoadedSam, LoadedClip, str]:
    if args.quick:
        paths = write_tiny_checkpoints(Path(args.work_dir) / "checkpoints")
        sam, clip_model = load_sam(TINY_SAM, paths["sam"], args.device), load_clip(paths["clip"], args.device)
        return sam, clip_model, "tiny random SAM and CLIP"
    sam_file, clip_file = ROOT / "checkpoints" / "sam_vit_b_01ec64.pth", ROOT / "checkpoints" / "ViT-B-32.pt"
    torch.manual_seed(0)
    if sam_file.is_file():
        sam = load_sam("vit_b", sam_file, args.device)
    else:
        sam = LoadedSam(sam_model_registry["vit_b"]().to(args.device).eval(), "vit_b:random", "vit_b:random")
    if clip_file.is_file():
        clip_model = load_clip(clip_file, args.device)
    else:
        model = CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12).float().to(args.device).eval()
        clip_model = LoadedClip(model, clip.clip._transform(224), "ViT-B/32:random", args.device, "clip:random")
    weights = "real" if sam_file.is_file() and clip_file.is_file() else "random"
    return sam, clip_model, f"SAM vit_b + CLIP ViT-B/32 ({weights} weights)"


def naive_sweep(clip_model, sample: Sample, masks: MaskSet, thresholds) -> tuple[list[np.ndarray], list[float]]:
    """Everything recomputed for every threshold: scores (one region at a time), union, IoU."""
    predictions, ious = [], []
    truth = sample.masks[PROMPT]
    for threshold in thresholds:
        regions = extract_regions(sample.image, masks, RegionSettings())
        scores = naive_scores(clip_model, regions, PROMPT)
        predictions.append(masks.union(scores >= threshold))
        ious.append(metrics.iou(predictions[-1], truth))
    return predictions, ious


def box_masks(height: int, width: int, count: int, seed: int = 0) -> MaskSet:
    rng = np.random.default_rng(seed)
    dense = np.zeros((count, height, width), bool)
    for i in range(count):
        h, w = rng.integers(height // 10, height // 2), rng.integers(width // 10, width // 2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        dense[i, y : y + h, x : x + w] = True
    return MaskSet.from_masks(dense)


def compare(
    pipe: Pipeline,
    sample: Sample,
    masks: MaskSet,
    thresholds: np.ndarray,
    device: str,
    fast_precision: str = "bfloat16",
) -> dict:
    """CLIP scoring and a sweep, naive vs ours, on given masks; asserts identical predictions."""
    image = sample.image
    with PeakMemory(device) as naive_clip:
        regions = extract_regions(image, masks, RegionSettings())
        naive = naive_scores(pipe.clip, regions, PROMPT)
    with PeakMemory(device) as ours_clip:
        embeddings = encode_images(pipe.clip, extract_regions(image, masks, RegionSettings()))
        ours = embeddings @ encode_text(pipe.clip, [PROMPT])[0]  # not the pipeline's text cache: timed fresh
    np.testing.assert_allclose(ours, naive, atol=1e-4)
    with PeakMemory(device) as fast_clip:  # opt-in 16-bit image encoder: faster, scores not identical
        fast = encode_images(pipe.clip, extract_regions(image, masks, RegionSettings()), precision=fast_precision)
        fast = fast @ encode_text(pipe.clip, [PROMPT])[0]
    result = ImageResult(sample.image_id, masks, embeddings)
    dataset = Dataset("bench", [sample], [PROMPT])
    with PeakMemory(device) as naive_sweep_time:
        naive_predictions, naive_ious = naive_sweep(pipe.clip, sample, masks, thresholds)
    fresh = TextEmbeddings(pipe.clip)  # empty text cache: the prompt is encoded inside the timer
    with PeakMemory(device) as ours_sweep_time:
        curve = evaluation.class_sweep(dataset, [result], fresh, PROMPT, thresholds)
    # same masks and same IoU curve (thresholds within 1e-4 of a score may fall either way)
    for t, naive_mask, naive_iou, ours_iou in zip(thresholds, naive_predictions, naive_ious, curve["mean_iou"]):
        if not (np.abs(ours - t) < 1e-4).any():
            assert np.array_equal(naive_mask, masks.union(ours >= t)), f"masks differ at threshold {t}"
            assert np.isclose(naive_iou, ours_iou, equal_nan=True), f"IoU differs at threshold {t}"
    return {
        "masks": len(masks),
        "clip_naive": naive_clip.seconds,
        "clip_ours": ours_clip.seconds,
        "clip_fast": fast_clip.seconds,
        "fast_error": float(np.abs(fast - ours).max()),
        "sweep_naive": naive_sweep_time.seconds,
        "sweep_ours": ours_sweep_time.seconds,
        "mem_naive": max(naive_clip.peak, naive_sweep_time.peak),
        "mem_ours": max(ours_clip.peak, ours_sweep_time.peak),
    }


def compare_classes(clip_model: LoadedClip, sample: Sample, masks: MaskSet, names: list[str], device: str) -> dict:
    """Scoring every mask against every class of a dataset (what notebook 03 evaluates):
    the naive pipeline runs once per class; ours embeds the regions once for all classes."""
    with PeakMemory(device) as naive_time:
        regions = extract_regions(sample.image, masks, RegionSettings())
        naive = np.stack([naive_scores(clip_model, regions, name) for name in names], axis=1)
    with PeakMemory(device) as ours_time:
        embeddings = encode_images(clip_model, extract_regions(sample.image, masks, RegionSettings()))
        ours = embeddings @ encode_text(clip_model, names).T
    np.testing.assert_allclose(ours, naive, atol=1e-4)
    return {"naive": naive_time.seconds, "ours": ours_time.seconds}


def timed(device: str, work, repeats: int = 3) -> float:
    """The fastest of ``repeats`` runs of ``work()``, in seconds (after one warm-up)."""
    work()
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        work()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def image_encoder_roofline(clip_model: LoadedClip, device: str, batch_sizes=(1, 8, 16, 32, 64)) -> None:
    """How close the CLIP image encoder runs to the machine's float32 matrix-multiply speed,
    per batch size: the ceiling on what batching can gain over one region at a time."""
    from torch.utils.flop_counter import FlopCounterMode

    visual = clip_model.model.visual
    size = visual.input_resolution
    pixels = torch.randn(max(batch_sizes), 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        clip_model.model.encode_image(pixels[:1])
    flops = counter.get_total_flops()
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    peak = 2 * 2048**3 / timed(device, lambda: a @ b) / 1e9
    total = max(batch_sizes)
    print(
        "\n| CLIP image encoder, batch size | ms per region | GFLOP/s | "
        f"share of float32 matmul peak ({peak:.0f} GFLOP/s) |"
    )
    print("|---|---|---|---|")
    for size in batch_sizes:
        seconds = timed(
            device, lambda: [clip_model.model.encode_image(pixels[s : s + size]) for s in range(0, total, size)], 2
        )
        per_region = seconds / total
        print(
            f"| {size} | {per_region * 1000:.1f} | {flops / per_region / 1e9:.0f} | "
            f"{flops / per_region / 1e9 / peak:.0%} |",
            flush=True,
        )
    print(f"({flops / 1e9:.2f} GFLOP per region)")


def mask_agreement(a: MaskSet, b: MaskSet) -> float:
    """Mean best-match IoU of a's masks among b's (1.0: the same masks)."""
    if len(a) == 0 or len(b) == 0:
        return float(len(a) == len(b))
    return float(np.mean(best_match_iou(a, b)))


def sam_costs(sam: LoadedSam, image: np.ndarray, settings: SamSettings, device: str) -> None:
    """Where SAM's time goes, and what its knobs buy, against the plain generator under no_grad."""
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    predictor = SamPredictor(sam.model)
    with torch.no_grad(), PeakMemory(device) as encoder:
        predictor.set_image(image)
    with torch.no_grad(), PeakMemory(device) as plain:
        records = SamAutomaticMaskGenerator(
            sam.model, output_mode="binary_mask", **settings.generator_options()
        ).generate(image)
    baseline = (
        MaskSet.from_masks(np.stack([r["segmentation"] for r in records]))
        if records
        else MaskSet.from_masks(np.zeros((0, *image.shape[:2]), bool))
    )
    print(f"\n| SAM variant ({image.shape[1]} px, {len(baseline)} masks) | seconds | vs plain | mask agreement |")
    print("|---|---|---|---|")
    print(f"| image encoder alone (set_image) | {encoder.seconds:.2f} | {encoder.seconds / plain.seconds:.2f} | - |")
    print(f"| plain generator, torch.no_grad (baseline) | {plain.seconds:.2f} | 1.00 | 1.000 |")
    variants: list[tuple] = [
        ("ours: torch.inference_mode", settings),
        ("points_per_batch=16", replace(settings, points_per_batch=16)),
        ("points_per_batch=256", replace(settings, points_per_batch=256)),
        ("resized to 512 px first", replace(settings, max_side=512)),
    ]
    for precision in ("bfloat16", "float16"):
        try:
            check_precision(precision, device)
        except ValueError:
            continue
        variants.append((f"image encoder in {precision}", settings, precision))
    for label, variant, *precision in variants:
        with PeakMemory(device) as timed:
            masks = generate_masks(sam, image, variant, *precision)
        print(
            f"| {label} | {timed.seconds:.2f} | {timed.seconds / plain.seconds:.2f} | "
            f"{mask_agreement(masks, baseline):.3f} |",
            flush=True,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048], help="long sides in px")
    parser.add_argument("--mask-counts", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument(
        "--class-counts",
        type=int,
        nargs="+",
        default=[1, 3, 11],
        help="dataset class lists to score against (COCO mini has 3, CamVid 11)",
    )
    parser.add_argument("--thresholds", type=int, default=20)
    parser.add_argument(
        "--fast-precision",
        default="bfloat16",
        choices=["bfloat16", "float16"],
        help="the opt-in CLIP precision timed beside float32 (float16 on GPUs without bfloat16)",
    )
    parser.add_argument("--skip-sam-costs", action="store_true", help="leave out the SAM variants table")
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes: a smoke test of this script")
    parser.add_argument("--work-dir", default=str(ROOT / "outputs" / "bench"), help="where tiny checkpoints go")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.mask_counts, args.points_per_side, args.thresholds = [96, 192], [4, 8], 4, 5
        args.class_counts = [1, 3]
    sam, clip_model, what = load_benchmark_models(args)
    pipe = Pipeline(sam, clip_model, PipelineSettings())
    thresholds = np.linspace(-0.1, 0.4, args.thresholds)
    with torch.no_grad():  # not set globally: a caller (the tests) keeps its own grad mode
        return run(args, sam, clip_model, pipe, thresholds, what)


def run(args, sam: LoadedSam, clip_model: LoadedClip, pipe: Pipeline, thresholds: np.ndarray, what: str) -> int:
    """Every table of the benchmark, in one run."""
    print(f"# {what} on {args.device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}")
    print(f"# SAM points_per_side={args.points_per_side}; sweep of {args.thresholds} thresholds; prompt '{PROMPT}'\n")

    print(
        "| long side | masks | SAM s | SAM s (resized to 1024) | CLIP naive s | CLIP ours s | ratio "
        "| sweep naive s | sweep ours s | ratio | peak MiB naive / ours |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    settings = SamSettings(points_per_side=args.points_per_side, **OPEN_GATES)
    for side in args.sizes:
        sample = make_demo_dataset(1, height=side * 3 // 4, width=side, seed=side)[0]
        with PeakMemory(args.device) as sam_time:
            masks = generate_masks(sam, sample.image, settings)
        resized = "-"
        if side > 1024:
            with PeakMemory(args.device) as resized_time:
                generate_masks(sam, sample.image, replace(settings, max_side=1024))
            resized = f"{resized_time.seconds:.2f}"
        found = f"{len(masks)} from SAM"
        if len(masks) < MIN_SCORED_MASKS:  # random SAM finds about one: score boxes, as many at every size
            masks, found = box_masks(*sample.image.shape[:2], MIN_SCORED_MASKS), f"{MIN_SCORED_MASKS} boxes"
        row = compare(pipe, sample, masks, thresholds, args.device)
        print(
            f"| {side} | {found} | {sam_time.seconds:.2f} | {resized} | {row['clip_naive']:.2f} | "
            f"{row['clip_ours']:.2f} | {row['clip_naive'] / row['clip_ours']:.1f}x | {row['sweep_naive']:.2f} | "
            f"{row['sweep_ours']:.4f} | {row['sweep_naive'] / row['sweep_ours']:.0f}x | "
            f"{row['mem_naive']:.0f} / {row['mem_ours']:.0f} |",
            flush=True,
        )

    side = args.sizes[min(1, len(args.sizes) - 1)]
    sample = make_demo_dataset(1, height=side * 3 // 4, width=side, seed=1)[0]
    fast = check_precision(args.fast_precision, args.device)
    print(
        f"\n| masks (boxes, {side} px) | CLIP naive s | CLIP ours s | ratio | sweep naive s | sweep ours s | ratio "
        f"| CLIP ours {fast} s (opt-in) | ratio | max score change |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for count in args.mask_counts:
        row = compare(pipe, sample, box_masks(*sample.image.shape[:2], count), thresholds, args.device, fast)
        print(
            f"| {count} | {row['clip_naive']:.2f} | {row['clip_ours']:.2f} "
            f"| {row['clip_naive'] / row['clip_ours']:.1f}x "
            f"| {row['sweep_naive']:.2f} | {row['sweep_ours']:.4f} | {row['sweep_naive'] / row['sweep_ours']:.0f}x "
            f"| {row['clip_fast']:.2f} | {row['clip_naive'] / row['clip_fast']:.1f}x | {row['fast_error']:.4f} |",
            flush=True,
        )

    masks = box_masks(*sample.image.shape[:2], args.mask_counts[0])
    print(f"\n| classes scored ({len(masks)} box masks, {side} px) | CLIP naive s | CLIP ours s | ratio |")
    print("|---|---|---|---|")
    for count in args.class_counts:
        names = list(CLASS_NAMES[:count])
        row = compare_classes(clip_model, sample, masks, names, args.device)
        print(f"| {count} | {row['naive']:.2f} | {row['ours']:.2f} | {row['naive'] / row['ours']:.1f}x |", flush=True)

    image_encoder_roofline(clip_model, args.device, (1, 4) if args.quick else (1, 8, 16, 32, 64))

    if not args.skip_sam_costs:
        sam_costs(sam, sample.image, settings, args.device)

    # the evaluation-scale sweep: 100 images from the cache
    images, results = [], []
    for k in range(100):
        small = make_demo_dataset(1, 240, 320, seed=1000 + k)[0]
        masks = box_masks(240, 320, 40, seed=k)
        vectors = np.random.default_rng(k).normal(size=(40, clip_model.model.visual.output_dim)).astype(np.float32)
        images.append(small)
        results.append(ImageResult(small.image_id, masks, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)))
    dataset = Dataset("sweep", images, list(images[0].masks))
    started = time.perf_counter()
    table = metrics.atom_table(dataset.samples, [r.masks for r in results], PROMPT)
    built = time.perf_counter() - started
    text = pipe.text([PROMPT])
    metrics.sweep(table, [r.embeddings @ text[0] for r in results], thresholds)
    print(
        f"\nsweep over 100 cached images (320x240, 40 masks each), {args.thresholds} thresholds: "
        f"{time.perf_counter() - started:.3f} s ({built:.3f} s of it building the per-class atom table)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
