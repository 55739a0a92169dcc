"""The demo SAM's training recipe at other encoder or decoder sizes or learning rates: SAM alone, for the experiments in
docs/demo-models.md (the committed models come from ``python -m helpers.demo.train``).

    python benchmarks/train_sam_variant.py --out-dir D                   # the committed SAM's first stage
    python benchmarks/train_sam_variant.py --out-dir D --steps 1000 --no-compile --dim 128 --depth 6 --heads 4 \\
        --global-attn 1 3 5
    python benchmarks/eval_demo_models.py --baseline none --no-rank --weights D --seeds 6101 6102 ...

Writes ``D/sam_demo.pth``, ``D/sam_architecture.json`` (which ``eval_demo_models.py --weights D`` builds the SAM
from), ``D/history.csv`` (loss and point IoU per step), ``D/variant.json`` (the settings and the time) and, unless
``D`` has one, a copy of the committed ``clip_demo.pt``, so that the evaluation measures the new SAM with the
committed CLIP.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from helpers.demo.models import DEMO_CLIP_FILE, DEMO_SAM_FILE, DEMO_WEIGHTS_DIR  # noqa: E402
from helpers.demo.train import (  # noqa: E402
    DEMO_SAM_LR,
    DEMO_SAM_PROCESSES,
    DEMO_SAM_STEPS,
    DEMO_SEED,
    demo_sam_settings,
)
from helpers.demo.train_sam import train_sam  # noqa: E402
from helpers.models.tiny import DEMO_SAM_ARCHITECTURE, SamArchitecture  # noqa: E402

ARCHITECTURE_FILE = "sam_architecture.json"  # read by eval_demo_models.read_architecture


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=DEMO_SAM_STEPS)
    parser.add_argument("--lr", type=float, default=DEMO_SAM_LR)
    default = DEMO_SAM_ARCHITECTURE
    parser.add_argument("--dim", type=int, default=default.dim, help="the image encoder's width")
    parser.add_argument("--depth", type=int, default=default.depth, help="the image encoder's blocks")
    parser.add_argument("--heads", type=int, default=default.heads)
    parser.add_argument("--global-attn", type=int, nargs="+", default=list(default.global_attn))
    parser.add_argument(
        "--decoder-dim",
        type=int,
        default=default.decoder_dim,
        help="the mask decoder's width (its masks' features: / 8)",
    )
    parser.add_argument(
        "--high-res",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="stride-8 / stride-4 image features into the decoder's upscaling (SAM 2's high-res path) from the start; "
        "the committed SAM gets them in a second stage (helpers.demo.train)",
    )
    parser.add_argument("--processes", type=int, default=DEMO_SAM_PROCESSES)
    parser.add_argument("--threads", type=int, default=2, help="shared by the processes")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--overwrite", action="store_true", help="replace the SAM weights already in --out-dir")
    args = parser.parse_args(argv)
    if args.out_dir.resolve() == DEMO_WEIGHTS_DIR.resolve():
        parser.error(f"--out-dir {args.out_dir} holds the committed demo weights: choose another folder.")
    if (args.out_dir / DEMO_SAM_FILE).exists() and not args.overwrite:
        parser.error(f"{args.out_dir / DEMO_SAM_FILE} exists: choose another --out-dir, or pass --overwrite.")
    if args.dim % args.heads or any(not 0 <= block < args.depth for block in args.global_attn):
        parser.error("--dim must be a multiple of --heads, and every --global-attn block below --depth.")
    if args.decoder_dim % (8 * default.decoder_heads):
        parser.error(f"--decoder-dim must be a multiple of {8 * default.decoder_heads} (8 x the decoder's heads).")
    architecture = SamArchitecture(
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        global_attn=tuple(args.global_attn),
        decoder_dim=args.decoder_dim,
        high_res=args.high_res,
    )
    if args.steps < 1 or args.lr <= 0 or args.threads < 1 or args.seed < 0:
        parser.error("--steps and --threads must be 1 or more, --lr above 0, --seed 0 or more.")
    try:  # the processes must divide a step's scenes
        settings = demo_sam_settings(
            args.steps, args.lr, args.threads, args.processes, args.compile, args.seed, architecture
        )
    except ValueError as error:
        parser.error(str(error))
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    sam, history = train_sam(settings, progress=False)
    wall = time.perf_counter() - clock
    partial = out / f"{DEMO_SAM_FILE}.part"  # renamed when complete: an interrupted run leaves no half file
    torch.save(sam.state_dict(), partial)
    partial.replace(out / DEMO_SAM_FILE)
    (out / ARCHITECTURE_FILE).write_text(json.dumps(asdict(architecture)))
    history.to_csv(out / "history.csv", index=False)
    if not (out / DEMO_CLIP_FILE).is_file():
        shutil.copyfile(DEMO_WEIGHTS_DIR / DEMO_CLIP_FILE, out / DEMO_CLIP_FILE)
    report = {
        "wall_s": round(wall, 1),
        "seconds_per_step": round(wall / args.steps, 3),
        "parameters": sum(p.numel() for p in sam.parameters()),
        "point_iou_last_200_steps": float(history["iou"].tail(200).mean()),
        "settings": asdict(settings),
    }
    (out / "variant.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
