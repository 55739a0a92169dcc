"""The demo SAM's training steps as the default command runs them (two one-thread data-parallel processes, compiled) in
this tree against another commit's, in one run: seconds per step of each stage, and whether the two trees train the
same weights.

    python benchmarks/bench_demo_sam_steps.py --fast-decoder   # --sam-fast-decoder's steps against 4f0966a's recipe
    python benchmarks/bench_demo_sam_steps.py --baseline f35f0ea  # the recipe against gloo's all-reduce (same weights)
    python benchmarks/bench_demo_sam_steps.py --baseline REV --steps 200 --stages 1 2 3

Each tree's code runs in its own process (``train_sam`` starts the two training processes), stage by stage as the
recipe chains them (stage 2 from stage 1's weights, stage 3 from stage 2's): per stage a 1-step run (start-up:
processes, model, the compiled code) and a 1 + ``--steps`` run. Trees alternate (A B A B, ``--repeats`` rounds); a
stage's time per step is (the fastest 1 + ``--steps`` run - the fastest 1-step run) / ``--steps``, so that a
1-step run that also compiled (torch's cache cold for that code) does not count: give ``--repeats 2`` or more. The
rounds' own times are printed too. ``same_weights`` compares the sha256 of every stage's trained weights between the
trees (a change of the step's arithmetic, as ``--fast-decoder``, trains other weights: False), and
``reproducible`` between each tree's own rounds (should be True; False means the rounds did different work and the
timing is not a fair comparison). The baseline is checked out with ``git worktree`` into a scratch folder and removed
after; it needs the three stages' settings functions (5 Dec 2026 or later).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from worktree import ROOT, baseline_tree, run_in_tree

BASELINE = "4f0966a"  # the committed recipe before SamTrainSettings.fast_decoder existed (6 Dec 2026)

# Run in the tree being timed (its own ``helpers``): per stage, seconds of the 1-step and the 1 + N-step runs and the
# sha256 of the weights the latter trained (each stage starts from the previous stage's weights).
TIMER = """
import hashlib, io, json, sys, time
from dataclasses import replace
import torch
import helpers
from helpers.demo.train import demo_sam_high_res_settings, demo_sam_settings, demo_sam_zoomed_settings
from helpers.demo.train_sam import train_sam

def timed(settings, start):
    clock = time.perf_counter()
    sam, _ = train_sam(settings, progress=False, start=start)
    return time.perf_counter() - clock, sam.state_dict()

if __name__ == "__main__":
    steps, stages, fast = int(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")], sys.argv[3] == "1"
    first = demo_sam_settings()
    if fast:  # this tree with --sam-fast-decoder (the baseline is timed as its recipe is)
        first = replace(first, fast_decoder=True)
    second = demo_sam_high_res_settings(first)
    chain = {1: first, 2: second, 3: demo_sam_zoomed_settings(second)}
    out, start = {}, None
    for stage in range(1, max(stages) + 1):
        settings = replace(chain[stage], steps=1 + steps)
        if stage in stages:
            one, _ = timed(replace(settings, steps=1), start)
        whole, state = timed(settings, start)
        if stage in stages:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            out[stage] = {"one_s": one, "whole_s": whole, "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}
        start = state
    print(json.dumps({"helpers": helpers.__file__, "stages": out}))
"""


def time_tree(tree: Path, steps: int, stages: list[int], fast: bool = False) -> dict:
    """Per stage {"one_s", "whole_s", "sha256"}, timed with ``tree``'s own code (``fast``: its fast decoder)."""
    args = [str(steps), ",".join(map(str, stages)), "1" if fast else "0"]
    return run_in_tree(tree, TIMER, args, "the SAM steps")["stages"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="a git revision to time against")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per stage and run")
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of both trees (the first also compiles)")
    parser.add_argument(
        "--fast-decoder", action="store_true", help="time this tree's steps with --sam-fast-decoder (other weights)"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be 1 or more.")
    stages = sorted(set(args.stages))
    with baseline_tree(args.baseline) as base:
        runs = {"baseline": [], "this tree": []}
        for _ in range(args.repeats):
            runs["baseline"].append(time_tree(base, args.steps, stages))
            runs["this tree"].append(time_tree(ROOT, args.steps, stages, args.fast_decoder))
    report = {
        "baseline": args.baseline,
        "fast_decoder": args.fast_decoder,
        "steps": args.steps,
        "repeats": args.repeats,
        "stages": {},
    }
    for stage in map(str, stages):
        fastest = {
            tree: {part: min(run[stage][part] for run in tree_runs) for part in ("one_s", "whole_s")}
            for tree, tree_runs in runs.items()
        }
        per_step = {tree: (times["whole_s"] - times["one_s"]) / args.steps for tree, times in fastest.items()}
        report["stages"][stage] = {
            "baseline_s_per_step": round(per_step["baseline"], 4),
            "this_tree_s_per_step": round(per_step["this tree"], 4),
            "speed_up": round(per_step["baseline"] / per_step["this tree"], 3),
            "start_up_s": {tree: round(times["one_s"], 1) for tree, times in fastest.items()},
            "same_weights": len({run[stage]["sha256"] for tree_runs in runs.values() for run in tree_runs}) == 1,
            "reproducible": all(len({run[stage]["sha256"] for run in tree_runs}) == 1 for tree_runs in runs.values()),
            "rounds_s": {  # (1-step run, 1 + steps run) per round
                tree: [(round(run[stage]["one_s"], 1), round(run[stage]["whole_s"], 1)) for run in tree_runs]
                for tree, tree_runs in runs.items()
            },
        }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
