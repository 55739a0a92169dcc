"""Notebook 05's demo experiment: the demo CLIP learns class names it never saw (the demo shapes in German).

``python benchmarks/bench_finetune_demo.py --tune``   the grid on the tuning seeds (chooses the settings)
``python benchmarks/bench_finetune_demo.py``          ``DEMO_FINETUNE_SETTINGS`` on the reported seeds
For each seed: zero-shot accuracy on the held-out 20 % of the cut-outs and on cut-outs of fresh images
(seed + 50), mosaic top-1 on mosaics of those fresh cut-outs (tiles as regions; with ``--sam``, also the
regions the demo SAM proposes, and as a ceiling the pretrained CLIP under the English names it was trained with),
before and after, and the seconds ``finetune_clip`` took (``--threads 1``: on 2 shared cores, 2 threads ran 10x slower).
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace

import pandas as pd
import torch

from helpers.config import DEMO_SETTINGS
from helpers.data import make_demo_dataset, make_mosaics
from helpers.demo.models import load_demo_models
from helpers.finetune import (
    finetune_clip,
    region_cutouts,
    rename_classes,
    sam_clip_measures,
    split_items,
    tile_top1_accuracy,
    zero_shot_accuracy,
)
from helpers.finetune.demo import (
    DEMO_FINETUNE_NAMES,
    DEMO_FINETUNE_SETTINGS,
    HELD_OUT_OFFSET,
    REPORT_SEEDS,
    TUNING_SEEDS,
    demo_finetune_items,
)

GRID = {"learning_rate": (3e-4, 1e-3, 3e-3)}


def one_run(sam, clip_model, seed: int, settings, mosaics: int, with_sam: bool, cache_dir: str) -> dict:
    items, classes = demo_finetune_items(seed=seed)
    fresh = region_cutouts(make_demo_dataset(40, seed=seed + HELD_OUT_OFFSET), names=DEMO_FINETUNE_NAMES)
    tiles = make_mosaics(fresh, per_mosaic=4, tile=112, count=mosaics, seed=seed)
    settings = replace(settings, seed=seed)
    started = time.perf_counter()
    tuned, history = finetune_clip(clip_model, items, classes, settings, progress=False)
    seconds = time.perf_counter() - started
    _, val = split_items(items, settings.val_share, settings.seed)
    row = {"seed": seed, "seconds": round(seconds, 1), "kept epoch": int(history.loc[history["kept"], "epoch"].iloc[0])}
    for tag, model in (("before", clip_model), ("after", tuned)):
        row[f"zero-shot held-out 20 % {tag}"] = zero_shot_accuracy(model, val, classes)
        row[f"zero-shot fresh images {tag}"] = zero_shot_accuracy(model, fresh, classes)
        row[f"mosaic top-1 tiles {tag}"] = tile_top1_accuracy(model, tiles)
        if with_sam:
            measures = sam_clip_measures(sam, model, classes, tiles, None, DEMO_SETTINGS, cache_dir)
            row[f"mosaic top-1 SAM + CLIP {tag}"] = measures["mosaic top-1 (SAM + CLIP)"]
    if with_sam:  # the ceiling: the pretrained demo CLIP on the same mosaics under the names it was trained with
        english = {german: name for name, german in DEMO_FINETUNE_NAMES.items()}
        measures = sam_clip_measures(sam, clip_model, list(english.values()), rename_classes(tiles, english), None,
                                     DEMO_SETTINGS, cache_dir)  # fmt: skip
        row["mosaic top-1 SAM + CLIP, pretrained, English names"] = measures["mosaic top-1 (SAM + CLIP)"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true", help="the grid on TUNING_SEEDS instead of the report")
    parser.add_argument("--mosaics", type=int, default=25)
    parser.add_argument("--sam", action="store_true", help="also mosaic top-1 with the demo SAM's regions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default="outputs/bench_finetune_demo_cache")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sam, clip_model = load_demo_models()
    rows = []
    if args.tune:
        for values in itertools.product(*GRID.values()):
            settings = replace(DEMO_FINETUNE_SETTINGS, **dict(zip(GRID, values)))
            for seed in TUNING_SEEDS:
                row = one_run(sam, clip_model, seed, settings, args.mosaics, args.sam, args.cache)
                rows.append({**dict(zip(GRID, values)), **row})
                print(rows[-1], flush=True)
        table = pd.DataFrame(rows).groupby(list(GRID)).mean(numeric_only=True).drop(columns="seed")
    else:
        for seed in REPORT_SEEDS:
            rows.append(one_run(sam, clip_model, seed, DEMO_FINETUNE_SETTINGS, args.mosaics, args.sam, args.cache))
            print(rows[-1], flush=True)
        table = pd.DataFrame(rows).set_index("seed")
        table.loc["mean"] = table.mean(numeric_only=True)
    print(table.round(3).T.to_string())


if __name__ == "__main__":
    main()
