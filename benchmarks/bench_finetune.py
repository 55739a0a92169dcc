"""Seconds per fine-tuning step and peak memory, for the tiny CLIP and a random ViT-B/32.

``python benchmarks/bench_finetune.py --model vit_b_32 --batch 16 --steps 4 --trainable all``
The ViT-B/32 is built from ``clip.model`` classes with random weights (same shapes and cost as
OpenAI's), saved as a state dict and loaded through ``helpers.models.load_clip``.
"""

from __future__ import annotations

import argparse
import math
import resource
import tempfile
import time
from pathlib import Path

import torch
from clip.model import CLIP

from helpers.data import make_demo_dataset, object_crops
from helpers.finetune.run import FinetuneRun, FinetuneSettings
from helpers.models.loading import load_clip
from helpers.models.tiny import build_clip_tiny

VIT_B_32 = dict(
    embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
    context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12,
)  # fmt: skip


def build(model: str, folder: Path) -> Path:
    torch.manual_seed(0)
    network = build_clip_tiny() if model == "tiny" else CLIP(**VIT_B_32)
    path = folder / f"{model}.pt"
    torch.save(network.state_dict(), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "vit_b_32"), default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--trainable", default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    items = object_crops(make_demo_dataset(max(8, math.ceil(args.batch * (args.steps + 1) / 2)), seed=1))
    classes = sorted({item.label for item in items})
    with tempfile.TemporaryDirectory() as folder:
        clip_model = load_clip(build(args.model, Path(folder)), args.device)
    settings = FinetuneSettings(batch_size=args.batch, trainable=args.trainable, val_share=0.0)
    run = FinetuneRun(clip_model, items, classes, settings)
    batches = [items[i : i + args.batch] for i in range(0, args.batch * (args.steps + 1), args.batch)]
    times = []
    for batch in batches:
        started = time.perf_counter()
        run.loss(batch, train=True).backward()
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    steady = sorted(times[1:])  # the first step pays for allocations
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"model={args.model} trainable={args.trainable} batch={args.batch} threads={torch.get_num_threads()} "
        f"device={args.device}: median {steady[len(steady) // 2]:.3f} s/step (min {steady[0]:.3f}, "
        f"first {times[0]:.3f}), peak RSS {peak_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
