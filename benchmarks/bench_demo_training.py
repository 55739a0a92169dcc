"""The demo SAM's training step: one process of 2 threads (the first training recipe) against data parallel
processes and ``torch.compile``, in one run.

    python benchmarks/bench_demo_training.py                 # 100 steps each
    python benchmarks/bench_demo_training.py --steps 300

Each configuration trains from scratch for 1 step twice and for 1 + ``--steps`` steps; the first 1-step
run compiles (``torch.compile``, printed as ``first_start_up_s``; the benchmark's compile cache is empty at its
start and shared by its configurations, so only the first compiled one pays what a first run on a new machine
pays), the second is the start-up of a run with the cache filled (building the model, starting the processes,
loading the compiled code), and the difference between the last two is the time of ``--steps`` steps without
start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

# torch.compile's cache starts empty, whatever earlier runs left (set before torch is imported). Only here: spawn
# re-imports this module (as __mp_main__) in each data-parallel process, which inherits the parent's cache
if __name__ == "__main__":
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_inductor_")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.demo.train_sam import SamTrainSettings, train_sam  # noqa: E402


def seconds(settings: SamTrainSettings) -> float:
    clock = time.perf_counter()
    train_sam(settings, progress=False)
    return time.perf_counter() - clock


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="per process, for the data parallel runs")
    args = parser.parse_args(argv)
    parallel = SamTrainSettings(threads=args.threads, processes=args.processes)
    name = f"{args.processes} processes x {args.threads} thread"
    configs = {
        "1 process x 2 threads, eager (the first recipe)": SamTrainSettings(threads=2, processes=1, compile=False),
        "1 process x 2 threads, compiled": SamTrainSettings(threads=2, processes=1, compile=True),
        f"{name}, eager": replace(parallel, compile=False),
        f"{name}, compiled": replace(parallel, compile=True),
    }
    rows = {}
    for label, settings in configs.items():
        first = seconds(replace(settings, steps=1))
        start = seconds(replace(settings, steps=1))
        total = seconds(replace(settings, steps=1 + args.steps))
        rows[label] = {
            "first_start_up_s": round(first, 1),
            "start_up_s": round(start, 1),
            "s_per_step": round((total - start) / args.steps, 3),
        }
        print(label, rows[label], flush=True)
    baseline = next(iter(rows.values()))["s_per_step"]
    for row in rows.values():
        row["speed_up"] = round(baseline / row["s_per_step"], 2)
    report = {"steps": args.steps, "runs": rows}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
