"""The demo SAM's training step: one process of 2 threads (the default) against data parallel processes, in one run.

    python benchmarks/bench_demo_training.py                 # 100 steps each: default vs 2 processes x 1 thread
    python benchmarks/bench_demo_training.py --steps 300

Each configuration trains from scratch for 1 step and for 1 + ``--steps`` steps; the difference is the time of
``--steps`` steps without start-up (building the model, starting the processes), which is printed apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

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
    parser.add_argument("--threads", type=int, default=1, help="per process, for the data parallel run")
    args = parser.parse_args(argv)
    configs = {
        "default (1 process x 2 threads)": SamTrainSettings(threads=2),
        f"data parallel ({args.processes} x {args.threads} thread)": SamTrainSettings(
            threads=args.threads, processes=args.processes
        ),
    }
    rows = {}
    for name, settings in configs.items():
        start = seconds(replace(settings, steps=1))
        total = seconds(replace(settings, steps=1 + args.steps))
        rows[name] = {"start_up_s": round(start, 1), "s_per_step": round((total - start) / args.steps, 3)}
    baseline, parallel = (row["s_per_step"] for row in rows.values())
    report = {"steps": args.steps, "runs": rows, "speed_up": round(baseline / parallel, 2)}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
