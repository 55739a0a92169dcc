"""The demo SAM's training data (``_batch``: scenes drawn, prompts picked, targets resized, images normalised) in this
tree against another commit's, in one run: milliseconds per step of one data-parallel process, and whether the two
draw the same data.

    python benchmarks/bench_demo_scenes.py                    # against a6046a2 (before the fast data path)
    python benchmarks/bench_demo_scenes.py --baseline REV --batches 200

Each tree's code runs in its own process of one thread (as each of the training's two processes), on the scenes of the
three training stages (the stage-3 scenes include mosaics and zoomed scenes), A B A B, the faster of each tree's
two runs kept (torch on one thread; OpenCV with its own pool, as in training). The baseline is checked out with
``git worktree`` into a scratch folder and removed after; it needs the three stages' settings functions
(``demo_sam_zoomed_settings``: 5 Dec 2026 or later).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from worktree import ROOT, baseline_tree, run_in_tree

BASELINE = "a6046a2"  # the commit before the fast data path (6 Dec 2026)

# Run in the tree being timed (its own ``helpers``): per stage, seconds per batch and a digest of everything drawn.
TIMER = """
import hashlib, json, sys, time
from dataclasses import replace
import numpy as np, torch
import helpers
torch.set_num_threads(1)
from helpers.demo.train import demo_sam_high_res_settings, demo_sam_settings, demo_sam_zoomed_settings
from helpers.demo.train_sam import _batch
from helpers.models.tiny import build_sam_small
batches = int(sys.argv[1])
first = demo_sam_settings()
second = demo_sam_high_res_settings(first)
out = {}
for stage, settings in ((1, first), (2, second), (3, demo_sam_zoomed_settings(second))):
    local = replace(settings, images_per_step=settings.images_per_step // settings.processes, processes=1)
    sam = build_sam_small(settings.architecture)
    digest, rng = hashlib.sha256(), np.random.default_rng(stage)
    clock = time.perf_counter()
    for _ in range(batches):
        images, prompts = _batch(rng, sam, local)
        digest.update(images.numpy().tobytes())
        for prompt in prompts:
            for tensor in prompt:
                digest.update(tensor.numpy().tobytes())
    out[stage] = {"s": (time.perf_counter() - clock) / batches, "digest": digest.hexdigest()}
print(json.dumps({"helpers": helpers.__file__, "stages": out}))
"""


def time_tree(tree: Path, batches: int) -> dict:
    """Per stage {"s": seconds per step's data, "digest": of everything drawn}, timed with ``tree``'s own code."""
    return run_in_tree(tree, TIMER, [str(batches)], "the data path", {"OMP_NUM_THREADS": "1"})["stages"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="a git revision to time against")
    parser.add_argument("--batches", type=int, default=100, help="steps' data per stage and run")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error("--batches must be 1 or more.")
    with baseline_tree(args.baseline) as base:
        runs = {"baseline": [], "this tree": []}
        for _ in range(2):
            runs["baseline"].append(time_tree(base, args.batches))
            runs["this tree"].append(time_tree(ROOT, args.batches))
    report = {"baseline": args.baseline, "batches": args.batches, "stages": {}}
    for stage in ("1", "2", "3"):
        before = min(run[stage]["s"] for run in runs["baseline"])
        after = min(run[stage]["s"] for run in runs["this tree"])
        digests = {run[stage]["digest"] for tree in runs.values() for run in tree}
        report["stages"][stage] = {
            "baseline_ms": round(1000 * before, 1),
            "this_tree_ms": round(1000 * after, 1),
            "speed_up": round(before / after, 2),
            "same_data": len(digests) == 1,
        }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
