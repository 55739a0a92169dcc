"""Auto-labelling speed against a per-mask loop in autodistill's style, and the demo models' mask AP.

Both labellers get the same SAM masks (computed once per image, their time counted for both) and the
same cut-outs. Ours (``helpers.instances.from_result``): every region of an image through CLIP in
batches, the class names encoded once for the run. The per-mask loop (autodistill's SAM-CLIP base
model): for each mask, one CLIP forward pass, and the prompts (classes + "background") encoded again.
Both then apply the same mask NMS; the script asserts that they name the same masks.

    python benchmarks/bench_autolabel.py            # demo models (8 images) and SAM vit_b + CLIP ViT-B/32 (random, 2)
    python benchmarks/bench_autolabel.py --quick    # tiny models, seconds (the tests)

Then the mask AP (COCOeval) of the demo models on unseen demo images (notebook 03's rule, demo settings).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import clip
import numpy as np
import torch
from clip.model import CLIP
from segment_anything import sam_model_registry

from helpers.clip_scoring import DEFAULT_TEMPLATES, TextEmbeddings, encode_images, encode_text
from helpers.config import DEMO_SAM_SETTINGS, DEMO_SELECTION, DEMO_SETTINGS, SMOKE_SAM
from helpers.data import DEMO_CLASSES, make_demo_dataset
from helpers.demo.models import load_demo_models
from helpers.evaluation import mask_ap
from helpers.instances import Instance, InstancePredictions, from_result, nms
from helpers.masks import MaskSet, apply_filters
from helpers.models.loading import LoadedClip, LoadedSam, load_clip, load_sam
from helpers.models.tiny import TINY_SAM, steepen_random_sam, write_tiny_checkpoints
from helpers.pipeline import Pipeline
from helpers.regions import extract_regions
from helpers.segmentation import generate_masks
from helpers.selection import ImageResult, SelectionSettings, softmax

NEGATIVES = ("background",)
SEED = 717  # demo images no training, tuning or test uses


def per_mask_loop(clip_model: LoadedClip, regions, masks, classes: list[str]) -> list[Instance]:
    """autodistill's way: each mask alone through CLIP, the prompts encoded again for every mask."""
    names = classes + [n for n in NEGATIVES if n not in classes]
    scale = float(clip_model.model.logit_scale.exp())  # CLIP's logits_per_image, as autodistill reads them
    winners, scores = [], []
    for region in regions:
        text = encode_text(clip_model, names, DEFAULT_TEMPLATES)
        image = encode_images(clip_model, [region], batch_size=1)[0]
        probabilities = softmax(scale * (text @ image)[None, :], axis=1)[0]
        winners.append(int(probabilities.argmax()))
        scores.append(float(probabilities.max()))
    winners, scores = np.asarray(winners), np.asarray(scores)
    candidates = np.flatnonzero(winners < len(classes)) if len(winners) else np.zeros(0, int)
    kept = sorted(nms(masks, candidates, winners, scores, 0.5), key=lambda i: -scores[i])[:100]
    return [Instance(masks.mask(i), classes[winners[i]], float(scores[i])) for i in kept]


def random_boxes(height: int, width: int, count: int, seed: int = 0) -> MaskSet:
    """``count`` random box masks: a controlled number of masks where random SAM weights give almost none."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, height, width), bool)
    for k in range(count):
        y0, x0 = rng.integers(0, height - 8), rng.integers(0, width - 8)
        masks[k, y0 : rng.integers(y0 + 8, height + 1), x0 : rng.integers(x0 + 8, width + 1)] = True
    return MaskSet.from_masks(masks)


def compare(
    sam: LoadedSam, clip_model: LoadedClip, images, sam_settings, filters, regions, what, boxes: int = 0
) -> float:
    """Time both labellers on the same masks (SAM's, or with ``boxes``, that many random boxes per image
    after SAM has run, so that the labelling works on a realistic number of masks)."""
    classes = list(DEMO_CLASSES)
    selection = SelectionSettings(negatives=NEGATIVES)
    text = TextEmbeddings(clip_model, DEFAULT_TEMPLATES)
    sam_seconds = ours_seconds = loop_seconds = 0.0
    masks_total = 0
    for image in images:
        started = time.perf_counter()
        masks = apply_filters(generate_masks(sam, image, sam_settings), filters)
        sam_seconds += time.perf_counter() - started
        if boxes:
            masks = random_boxes(*image.shape[:2], boxes, seed=masks_total)
        masks_total += len(masks)
        cutouts = extract_regions(image, masks, regions)
        started = time.perf_counter()
        embeddings = encode_images(clip_model, cutouts)
        ours = from_result(ImageResult("x", masks, embeddings), text, classes, selection)
        ours_seconds += time.perf_counter() - started
        started = time.perf_counter()
        loop = per_mask_loop(clip_model, cutouts, masks, classes)
        loop_seconds += time.perf_counter() - started
        assert [i.label for i in ours] == [i.label for i in loop], "the two labellers disagree"
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(ours, loop))
        assert np.allclose([i.score for i in ours], [i.score for i in loop], atol=1e-3)
    n = len(images)
    print(f"\n{what}: {n} images, {masks_total} masks after the filters ({masks_total / n:.0f} per image), same labels")
    print("| labeller | labelling s/image | with SAM: images/s | speed-up |")
    print("|---|---|---|---|")
    for name, seconds in (
        ("per-mask loop (autodistill's style)", loop_seconds),
        ("ours (batched, text once)", ours_seconds),
    ):
        with_sam = (sam_seconds + loop_seconds) / (sam_seconds + seconds)
        print(
            f"| {name} | {seconds / n:.3f} | {n / (sam_seconds + seconds):.3f} | "
            f"{loop_seconds / seconds:.1f}x labelling, {with_sam:.2f}x with SAM |"
        )
    print(f"SAM: {sam_seconds / n:.2f} s per image (shared by both)")
    return loop_seconds / max(ours_seconds, 1e-9)


def demo_mask_ap(count: int) -> dict:
    """Mask AP of the demo models on ``count`` unseen demo images, as notebook 03 measures it."""
    sam, clip_model = load_demo_models()
    dataset = make_demo_dataset(count, seed=SEED)
    pipe = Pipeline(sam, clip_model, DEMO_SETTINGS)
    results = pipe.process_dataset(dataset, progress=False)
    ap = mask_ap(dataset, InstancePredictions(results, pipe.text, DEMO_CLASSES, DEMO_SELECTION))
    print(f"\nmask AP of the demo models on {count} demo images of seed {SEED}:")
    print(
        {k: round(v, 3) for k, v in ap.items() if k != "per_class"},
        {k: round(v, 3) for k, v in ap["per_class"].items()},
    )
    return ap


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random models, 2 small images")
    parser.add_argument("--images", type=int, default=8, help="demo images for the demo models")
    parser.add_argument("--vit-b-images", type=int, default=2, help="images for SAM vit_b (0: skip)")
    parser.add_argument("--boxes", type=int, default=64, help="box masks per image for vit_b's labelling")
    parser.add_argument("--ap-images", type=int, default=32, help="images for the demo models' mask AP (0: skip)")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/bench_autolabel"))
    args = parser.parse_args(argv)
    with torch.no_grad():  # not torch.set_grad_enabled(False): the tests call main() in their process
        return run(args)


def run(args) -> dict:
    images = [s.image for s in make_demo_dataset(2 if args.quick else args.images, seed=SEED)]
    ratios = {}
    if args.quick:
        paths = write_tiny_checkpoints(args.work_dir / "checkpoints")
        sam, clip_model = load_sam(TINY_SAM, paths["sam"]), load_clip(paths["clip"])
        ratios["tiny"] = compare(
            sam, clip_model, images, SMOKE_SAM, DEMO_SETTINGS.filters, DEMO_SETTINGS.regions, "tiny"
        )
        return ratios
    sam, clip_model = load_demo_models()
    ratios["demo"] = compare(
        sam, clip_model, images, DEMO_SAM_SETTINGS, DEMO_SETTINGS.filters, DEMO_SETTINGS.regions, "demo models"
    )
    if args.vit_b_images:
        torch.manual_seed(0)
        vit_b = LoadedSam(steepen_random_sam(sam_model_registry["vit_b"]().eval()), "vit_b:random", "vit_b:random")
        model = CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12).float().eval()
        vit_clip = LoadedClip(model, clip.clip._transform(224), "ViT-B/32:random", "cpu", "clip:random")
        # gates open (as the smoke profile): random weights would let almost no mask through SAM's
        settings = replace(SMOKE_SAM, points_per_side=16)
        ratios["vit_b"] = compare(
            vit_b,
            vit_clip,
            images[: args.vit_b_images],
            settings,
            DEMO_SETTINGS.filters,
            DEMO_SETTINGS.regions,
            f"SAM vit_b + CLIP ViT-B/32, random weights, 16 x 16 points, SAM's gates open; labelling on "
            f"{args.boxes} random box masks per image (random SAM weights leave about one mask)",
            boxes=args.boxes,
        )
    if args.ap_images:
        ratios["ap"] = demo_mask_ap(args.ap_images)
    return ratios


if __name__ == "__main__":
    main()
