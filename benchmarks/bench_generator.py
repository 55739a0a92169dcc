"""segment-anything's SamAutomaticMaskGenerator vs helpers.mask_generator, same model, same image.

    python benchmarks/bench_generator.py                            # vit_b, random weights, CPU
    python benchmarks/bench_generator.py --device cuda --model vit_h
    python benchmarks/bench_generator.py --model sam_tiny --sides 4 --huge 600x400   # smoke test
    python benchmarks/bench_generator.py --threads 1                # torch on one thread
    python benchmarks/bench_generator.py --model sam_demo --checkpoint helpers/demo/weights/sam_demo.pth \
        --demo-images 8 --pred-iou-thresh 0.5 --stability-score-thresh 0.7 --crop-n-layers 1 --huge 0 --no-bf16

Random weights give flat logits and predicted IoU near 0 that SAM's default gates would drop
entirely, so the decoder's last layers are steepened (``steepen_random_sam``: --logit-gain,
--iou-shift) to let a share of candidates through each gate; compute is unchanged. Real
checkpoints: pass --checkpoint. Prints a markdown table, every row; exits with an error after it where masks differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator

from helpers.masks import MaskSet, best_match_iou
from helpers.models.loading import SAM_BUILDERS
from helpers.models.tiny import steepen_random_sam
from helpers.runs import cpu_record
from helpers.sam.decoder import PromptBatchDecoder
from helpers.sam.generator import GateCounts, generate_mask_set_with_counts

OPEN = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(0)
    model = SAM_BUILDERS[args.model]()
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    else:
        steepen_random_sam(model, args.logit_gain, args.iou_shift)
    return model.to(args.device).eval()


def test_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs with edges: flat blocks, a gradient and noise."""
    rng = np.random.default_rng(seed)
    small = (rng.random((height // 96 + 1, width // 96 + 1, 3)) * 255).astype(np.uint8)
    image = np.kron(small, np.ones((96, 96, 1), np.uint8))[:height, :width].astype(np.int16)
    image += (np.arange(width) * 40 // max(width, 1)).astype(np.int16)[None, :, None]
    image += rng.integers(-6, 7, image.shape, dtype=np.int16)
    return np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def reference(model, image: np.ndarray, options: dict) -> MaskSet:
    with torch.inference_mode():
        records = SamAutomaticMaskGenerator(model, output_mode="binary_mask", **options).generate(image)
    stack = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *image.shape[:2]), bool)
    return MaskSet.from_masks(stack, [r["predicted_iou"] for r in records], [r["stability_score"] for r in records])


def decoder_difference(model, image: np.ndarray) -> tuple[float, float, float]:
    """Max |logit| difference, max |predicted IoU| difference (vs MaskDecoder, 64 grid points) and the
    largest |logit| for scale."""
    from segment_anything import SamPredictor

    with torch.inference_mode():
        predictor = SamPredictor(model)
        predictor.set_image(image)
        points = torch.rand(64, 1, 2, device=model.device) * model.image_encoder.img_size
        labels = torch.ones(64, 1, dtype=torch.int, device=model.device)
        sparse, dense = model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        pe = model.prompt_encoder.get_dense_pe()
        ref_masks, ref_iou = model.mask_decoder(predictor.features, pe, sparse, dense, multimask_output=True)
        decoder = PromptBatchDecoder(model, predictor.features)
        queries, keys, iou = decoder.tokens(sparse)
        masks = decoder.masks(queries, keys)
    return (
        float((masks - ref_masks).abs().max()),
        float((iou - ref_iou).abs().max()),
        float(ref_masks.abs().max()),
    )


def load() -> str:
    """The 1-minute load average (other jobs on the machine slow both engines)."""
    return f"{os.getloadavg()[0]:.1f}"


def gates(counts: GateCounts) -> str:
    return f"{counts.candidates} → {counts.iou_gate} → {counts.stability_gate} → {counts.box_nms}"


def half_row(model, image: np.ndarray, side: int, references: dict, device: str) -> None:
    """Ours in bfloat16 (float16 on GPUs without it), default gates, against the float32 reference."""
    half = "bfloat16" if device == "cpu" or torch.cuda.is_bf16_supported() else "float16"
    run = lambda: generate_mask_set_with_counts(model, image, points_per_side=side, precision=half)  # noqa: E731
    (ours, counts), ours_s = timed(run)
    ref = references.get((side, "default")) or reference(model, image, dict(points_per_side=side))
    match = best_match_iou(ours, ref) if len(ref) and len(ours) else np.array([float("nan")])
    print(
        f"| {side}x{side} | default, {half} | – | {ours_s:.1f} | – | {len(ref)} / {len(ours)} "
        f"| {match.min():.4f} (median {np.median(match):.4f}) | – | {gates(counts)} | {load()} |",
        flush=True,
    )


def huge_run(args: argparse.Namespace) -> None:
    """Child process: ours only, default settings, prints time and peak RSS as JSON."""
    model = build_model(args)
    height, width = args.huge_size
    image = test_image(height, width)
    (masks, counts), seconds = timed(lambda: generate_mask_set_with_counts(model, image, precision=args.precision))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(seconds=seconds, count=len(masks), shape=list(masks.shape), peak=peak, gates=gates(counts))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="vit_b", choices=sorted(SAM_BUILDERS))
    parser.add_argument("--checkpoint", default=None, help="real weights (default: random, steepened)")
    parser.add_argument("--sides", type=int, nargs="+", default=[16, 32], help="points_per_side values")
    parser.add_argument("--gates", nargs="+", default=["default", "open"], choices=["default", "open"])
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the test image")
    parser.add_argument("--demo-images", type=int, default=0, help="time on this many demo images instead (seed 7401)")
    parser.add_argument(
        "--pred-iou-thresh", type=float, default=None, help="the 'default' gates' IoU gate (SAM's 0.88)"
    )
    parser.add_argument(
        "--stability-score-thresh", type=float, default=None, help="the 'default' gates' stability gate (SAM's 0.95)"
    )
    parser.add_argument("--crop-n-layers", type=int, default=0, help="SAM's crop layers, in every row")
    parser.add_argument("--huge", default="8000x6000", help="WIDTHxHEIGHT for the ours-only memory row; 0 skips")
    parser.add_argument("--logit-gain", type=float, default=400.0)
    parser.add_argument("--iou-shift", type=float, default=0.85)
    parser.add_argument("--no-bf16", action="store_true", help="skip the 16-bit row")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)  # for the child run
    parser.add_argument("--huge-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.huge_size = None if args.huge == "0" else tuple(int(v) for v in args.huge.split("x"))[::-1]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.huge_child:
        return huge_run(args)

    model = build_model(args)
    if args.device.startswith("cuda"):  # the reference in true float32 too (ours turns TF32 off itself: precision.py)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    width, height = (int(v) for v in args.size.split("x"))
    images = [test_image(height, width)]
    if args.demo_images:
        from helpers.data import make_demo_dataset

        images = [sample.image for sample in make_demo_dataset(args.demo_images, seed=7401).samples]
        height, width = images[0].shape[:2]
    default = {
        key: value
        for key, value in (
            ("pred_iou_thresh", args.pred_iou_thresh),
            ("stability_score_thresh", args.stability_score_thresh),
        )
        if value is not None
    }
    crops = {"crop_n_layers": args.crop_n_layers} if args.crop_n_layers else {}
    cpu = "{model}, {kernels} kernels".format(**cpu_record())
    print(f"SAM {args.model} ({'checkpoint' if args.checkpoint else 'random, steepened'}), {args.device}, ", end="")
    print(f"{torch.get_num_threads()} threads, {cpu}, torch {torch.__version__}, ", end="")
    gates_text = default or "SAM's"
    print(f"{len(images)} image(s) of {width}x{height}, 'default' gates {gates_text}, ", end="")
    print(f"load average {load()} at the start\n")
    logit_diff, iou_diff, logit_scale = decoder_difference(model, images[0])
    print(f"decoder vs MaskDecoder: max |Δlogit| {logit_diff:.2e} (logits up to {logit_scale:.1f}), ", end="")
    print(f"max |Δ predicted IoU| {iou_diff:.2e}\n")

    print("| points | gates | reference s | ours s | speed-up | masks ref / ours | min best-match IoU ", end="")
    print("| max Δ pred. IoU | candidates → IoU gate → stability gate → NMS | load after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    references, differ = {}, []
    for side in args.sides:
        for name in args.gates:
            options = dict(points_per_side=side, **crops, **(OPEN if name == "open" else default))
            ref_s = ours_s = 0.0
            n_ref = n_ours = 0
            match, iou_delta, total, same = 1.0, 0.0, GateCounts(), True
            for image in images:
                ref, seconds = timed(lambda: reference(model, image, options))
                ref_s += seconds
                references[side, name] = ref
                (ours, counts), seconds = timed(lambda: generate_mask_set_with_counts(model, image, **options))
                ours_s += seconds
                n_ref, n_ours = n_ref + len(ref), n_ours + len(ours)
                if len(ref) and len(ours):  # an empty mask matches nothing: count empties instead
                    same &= bool((ours.areas == 0).sum() == (ref.areas == 0).sum())
                    match = min(match, float(best_match_iou(ours, ref)[ours.areas > 0].min(initial=1.0)))
                iou_delta = (
                    max(iou_delta, float(np.abs(ours.predicted_iou - ref.predicted_iou).max(initial=0.0)))
                    if len(ref) == len(ours)
                    else float("nan")
                )
                total = GateCounts(*(a + b for a, b in zip(dataclasses.astuple(total), dataclasses.astuple(counts))))
                same &= len(ref) == len(ours) and (not len(ref) or match >= 0.999)
            if not same:
                differ.append(f"{side}x{side} {name}")
            print(
                f"| {side}x{side} | {name} | {ref_s:.1f} | {ours_s:.1f} | {ref_s / ours_s:.1f}x "
                f"| {n_ref} / {n_ours}{'' if same else ' (differ)'} | {match:.4f} | {iou_delta:.1e} | {gates(total)} "
                f"| {load()} |",
                flush=True,
            )
    if not args.no_bf16:
        half_row(model, images[-1], max(args.sides), references, args.device)
    if args.huge_size:
        command = [sys.executable, __file__, "--huge-child", "--device", args.device, "--model", args.model]
        command += ["--huge", args.huge, "--logit-gain", str(args.logit_gain), "--iou-shift", str(args.iou_shift)]
        command += ["--checkpoint", args.checkpoint] if args.checkpoint else []
        command += ["--threads", str(args.threads)] if args.threads else []
        result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        print(
            f"| 32x32 | default, {args.huge} px | – (not run) | {result['seconds']:.1f} | – "
            f"| – / {result['count']} | peak RSS {result['peak'] / 2**30:.2f} GiB | – | {result['gates']} | {load()} |"
        )
    if differ:  # every row is printed first: on a GPU the timings are worth having even where masks differ
        raise SystemExit(f"masks differ from segment-anything's in: {', '.join(differ)}")


if __name__ == "__main__":
    main()
