"""Train the demo models (a small SAM and a small CLIP) on generated shape images, offline.

``python -m helpers.demo.train`` trains the demo weights, seeded, into ``outputs/demo_weights/`` (``--out-dir``; the
shipped ones in ``helpers/demo/weights/`` are replaced only when named there, from a source checkout) and says
whether they are the shipped files byte for byte: they are on a CPU of the type that trained them (the AMD EPYC
build machine; SAM and CLIP on ``--threads`` 2, SAM's cut-outs in two one-thread processes; another thread count or
CPU type sums floats in another order and trains other weights). SAM first, in three stages (the second adds SAM 2's
high-res path, the third zooms some scenes in), then SAM's own masks on 1,000 further scenes and CLIP (CLIP's
ModifiedResNet image tower) on those cut-outs and exact ones, then a short evaluation: 71 min in one run on the AMD
EPYC build machine (6 Dec 2026), 2 h 11 min on the Intel Xeon one (docs/performance.md); ``--quick`` is a
seconds-long end-to-end run into a scratch folder. Measured results: docs/demo-models.md.

SAM is trained as in its paper, restricted to what the automatic mask generator uses: one point
per prompt, three masks per point, the mask loss (focal : dice = 20 : 1) on the best of the three
only, and the IoU head regressed (MSE) on the true IoU of all three, so that ``pred_iou_thresh``
means what it means for the real SAM (points on the background train the IoU head only).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from clip.model import CLIP
from segment_anything.modeling import Sam

from ..checkpoints.ensure import sha256_of
from ..clip_scoring import encode_images, encode_text
from ..config import DEMO_TRAINED_ON
from ..data import DEMO_CLASSES, Dataset, make_demo_dataset, make_mosaics, object_crops
from ..files import atomic_path, write_text
from ..masks import MaskSet, iou_from_counts, overlap_counts
from ..models.loading import LoadedClip, LoadedSam, load_clip, load_sam
from ..models.tiny import DEMO_SAM, DEMO_SAM_ARCHITECTURE, SamArchitecture, build_sam_small
from ..runs import cpu_record
from ..segmentation import SamSettings, generate_masks
from .models import DEMO_SAM_SETTINGS
from .scenes import TRAIN_STREAM, Scene, make_scene  # noqa: F401 (public through this module)
from .train_clip import (  # noqa: F401
    ClipTrainSettings,
    CutOut,
    encode_text_prefix,
    multi_positive_loss,
    sam_mask_cutouts,
    sigmoid_loss,
    train_clip,
)
from .train_sam import SamTrainSettings, init_pointer_attention, load_start, train_sam  # noqa: F401


def truth_overlaps(masks: MaskSet, truths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``masks`` as an N x H x W stack, and their pixel intersections and IoUs with the T ground-truth
    masks ``truths`` (both N x T)."""
    dense = masks.to_dense() if len(masks) else np.zeros((0, *truths.shape[1:]), bool)
    inter = overlap_counts(dense, truths)
    return dense, inter, iou_from_counts(inter, dense.sum((1, 2)), truths.sum((1, 2)))


def ceiling_table(sam: LoadedSam, dataset: Dataset, settings: SamSettings = DEMO_SAM_SETTINGS) -> pd.DataFrame:
    """Per ground-truth shape: the best single SAM mask's IoU and the best union's IoU (the union
    of the masks lying more than half inside the shape), i.e. what a perfect selector could reach."""
    return ceiling_from_masks(dataset, (generate_masks(sam, sample.image, settings) for sample in dataset.samples))


def ceiling_from_masks(dataset: Dataset, masks: Iterable[MaskSet]) -> pd.DataFrame:
    """``ceiling_table`` of SAM's masks of ``dataset``'s samples, given in their order (e.g. from a ``Pipeline``'s
    ``segment``, which reads and fills its cache)."""
    rows = []
    for sample, image_masks in zip(dataset.samples, masks, strict=True):
        present = [name for name, truth in sample.masks.items() if truth.any()]
        if not present:
            continue
        truths = np.stack([sample.masks[name] for name in present])
        dense, inter, ious = truth_overlaps(image_masks, truths)
        areas = dense.sum((1, 2))
        for j, (name, truth) in enumerate(zip(present, truths)):
            single = float(ious[:, j].max()) if len(dense) else 0.0
            inside = inter[:, j] > 0.5 * areas
            merged = dense[inside].any(0) if inside.any() else np.zeros_like(truth)
            union_iou = float((merged & truth).sum() / max(1, (merged | truth).sum()))
            rows.append(
                {
                    "image_id": sample.image_id,
                    "class": name,
                    "area": int(truth.sum()),
                    "best_mask_iou": single,
                    "best_union_iou": max(single, union_iou),
                    "masks": len(image_masks),
                }
            )
    return pd.DataFrame(rows)


def evaluate_sam(sam: Sam, seeds=(101, 202), images: int = 6, settings: SamSettings = DEMO_SAM_SETTINGS):
    """The SAM ceiling on fresh demo images (``make_demo_dataset`` seeds never used in training)."""
    loaded = LoadedSam(sam.eval(), "sam_demo:training")
    tables = [ceiling_table(loaded, make_demo_dataset(images, seed=seed), settings) for seed in seeds]
    return pd.concat(tables, ignore_index=True)


def gt_cutouts(dataset: Dataset, mode: str = "masked_crop", min_area: int = 200) -> tuple[list[np.ndarray], list[str]]:
    """Each ground-truth shape cut out as the pipeline cuts out SAM's masks (``masked_crop``)."""
    from ..regions import RegionSettings, extract_region

    crops, labels = [], []
    for sample in dataset.samples:
        for name, mask in sample.masks.items():
            if mask.sum() >= min_area:
                box = MaskSet.from_masks(mask[None]).bboxes()[0]
                crops.append(extract_region(sample.image, mask, box, RegionSettings(mode=mode)))
                labels.append(name)
    return crops, labels


def evaluate_clip(clip_model: LoadedClip, seeds=(303,), images: int = 12) -> dict:
    """Top-1 over DEMO_CLASSES (prompt template "a photo of a {}.") of fresh ground-truth cut-outs,
    masked (as the pipeline sees SAM's masks) and as box crops (``data.object_crops``)."""
    text = encode_text(clip_model, DEMO_CLASSES)
    result = {}
    for seed in seeds:
        dataset = make_demo_dataset(images, seed=seed)
        masked, labels = gt_cutouts(dataset)
        boxes = object_crops(dataset, min_area=200)
        for key, crops, truth in (
            ("masked", masked, labels),
            ("box", [b.image for b in boxes], [b.label for b in boxes]),
        ):
            guess = (encode_images(clip_model, crops) @ text.T).argmax(1)
            hits = [DEMO_CLASSES[g] == t for g, t in zip(guess, truth)]
            result.setdefault(f"{key}_hits", []).extend(hits)
    return {
        "recognition_masked": float(np.mean(result["masked_hits"])),
        "recognition_box": float(np.mean(result["box_hits"])),
        "cutouts": len(result["masked_hits"]),
    }


def evaluate_pipeline(
    sam: LoadedSam,
    clip_model: LoadedClip,
    seed: int = 404,
    images: int = 6,
    mosaics: int = 6,
    cache_dir: str | Path | None = None,
) -> dict:
    """End to end with the demo settings: mosaic top-1 (SLIP's measure; tiles cut from 12 fresh
    demo images; ``mosaics`` 0: none, NaN) and the mean IoU of prompting each class by name on ``images`` fresh
    images (per class over ``prompts_per_class`` prompts). ``cache_dir``: the pipeline's cache (SAM's masks and
    CLIP's embeddings are read from it when there, and written to it; ``sam_runs``: the images SAM ran on)."""
    from ..evaluation import mosaic_top1_accuracy
    from ..metrics import iou
    from ..pipeline import Pipeline
    from .models import DEMO_SELECTION, DEMO_SETTINGS

    pipeline = Pipeline(sam, clip_model, DEMO_SETTINGS, cache_dir=cache_dir)
    dataset = make_demo_dataset(max(images, 12), seed=seed)
    tiles = make_mosaics(object_crops(dataset, min_area=200), count=mosaics, seed=seed) if mosaics else None
    results = [pipeline.process(sample.image) for sample in tiles.samples] if tiles else []
    ious: dict[str, list[float]] = {}
    for sample in dataset.samples[:images]:
        result = pipeline.process(sample.image)
        for name, truth in sample.masks.items():
            if truth.any():
                prediction = pipeline.predict(result, name, DEMO_SELECTION, DEMO_CLASSES)
                ious.setdefault(name, []).append(iou(prediction.mask, truth))
    every = [v for values in ious.values() for v in values]
    return {
        "mosaic_top1": mosaic_top1_accuracy(tiles, results, pipeline.text) if tiles else float("nan"),
        "prompt_mean_iou": float(np.mean(every)) if every else float("nan"),
        "prompt_iou_per_class": {name: float(np.mean(values)) for name, values in sorted(ious.items())},
        "prompts_per_class": {name: len(values) for name, values in sorted(ious.items())},
        "prompts": len(every),
        "sam_runs": pipeline.sam_runs,
    }


def oracle_prompt_iou(clip_model: LoadedClip, selection, seed: int = 505, images: int = 12) -> float:
    """Mean IoU of prompting each present class by name when the masks are perfect (the ground-truth
    shapes plus the background): CLIP and the selection settings alone, whatever SAM does."""
    from ..clip_scoring import TextEmbeddings, encode_masks
    from ..metrics import iou
    from ..selection import ImageResult, predict
    from .models import DEMO_SETTINGS

    text = TextEmbeddings(clip_model, DEMO_SETTINGS.templates)
    ious = []
    for sample in make_demo_dataset(images, seed=seed).samples:
        shapes = [mask for mask in sample.masks.values() if mask.any()]
        masks = MaskSet.from_masks(np.stack([*shapes, ~np.any(shapes, axis=0)]))
        embeddings = encode_masks(clip_model, sample.image, masks, DEMO_SETTINGS.regions)
        result = ImageResult(sample.image_id, masks, embeddings)
        for name, truth in sample.masks.items():
            if truth.any():
                ious.append(iou(predict(result, text, name, selection, DEMO_CLASSES).mask, truth))
    return float(np.mean(ious))


def save_clip_state(model: CLIP, path: Path) -> None:
    """A float16 state dict (half the size; ``load_clip`` returns float32 either way)."""
    state = model.state_dict()
    with atomic_path(path) as tmp:  # never written in place: an installer's hard-linked copy stays whole
        torch.save({key: value.half() if value.is_floating_point() else value for key, value in state.items()}, tmp)


def _clock() -> tuple[float, float]:
    """Wall and CPU seconds so far; the CPU of finished child processes (data-parallel SAM's) included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), time.process_time() + usage.ru_utime + usage.ru_stime


def _since(clock: tuple[float, float], name: str) -> dict:
    """``{name}_wall_s`` and ``{name}_cpu_s`` since ``clock`` (a ``_clock()``)."""
    wall, cpu = _clock()
    return {f"{name}_wall_s": wall - clock[0], f"{name}_cpu_s": cpu - clock[1]}


def _say_stage(stage: int, stages: int, steps: int, wall_s: float, iou: float) -> None:
    """One line per finished SAM stage (a run takes one to two hours): its time and its last steps' training IoU."""
    print(f"SAM stage {stage} of {stages}: {steps} steps in {wall_s / 60:.1f} min, training IoU {iou:.4f}", flush=True)


SAM_RECORD_PREFIXES = ("sam_train_", "sam_final_", "sam_settings", "sam_high_res_", "sam_zoomed_")


def sam_record(summary_path: Path, sam_path: Path) -> dict:
    """How the SAM at ``sam_path`` was trained (its stages' settings, times and final training IoU), read from the
    summary at ``summary_path`` when that summary's sha256 of ``sam_demo.pth`` is this file's; {} otherwise (no
    summary, another SAM). ``--only clip`` keeps it, so that its summary still says how its SAM was made."""
    if not (summary_path.is_file() and sam_path.is_file()):
        return {}
    previous = json.loads(summary_path.read_text())
    if previous.get("sha256", {}).get(sam_path.name) != sha256_of(sam_path):
        return {}
    return {key: value for key, value in previous.items() if key.startswith(SAM_RECORD_PREFIXES)}


def _train_sam_into(
    path: Path,
    settings: SamTrainSettings,
    high_res: SamTrainSettings,
    zoomed: SamTrainSettings,
    progress: bool,
    snapshots: bool = False,
) -> dict:
    """SAM in three stages: ``settings`` from scratch, then ``high_res`` from its weights with the high-res stem
    added (zero at first), then ``zoomed`` from those (``zoomed.steps`` 0: none); ``high_res.steps`` 0 saves the
    first stage's SAM with that (zero) stem, and needs ``zoomed.steps`` 0 (a ValueError before any training)."""
    if zoomed.steps and not high_res.steps:
        raise ValueError(
            f"A third stage of {zoomed.steps} steps continues the high-res stage, which has 0 steps: give the second "
            "stage steps, or the third none."
        )
    clock = _clock()
    sam, history = train_sam(settings, progress, snapshot=path if snapshots else None)
    summary = {
        **_since(clock, "sam_train"),  # CPU, data parallel: its processes too
        "sam_final_train_iou": float(history["iou"].tail(50).mean()),  # data parallel: on the first process's scenes
        "sam_settings": asdict(settings),
    }
    stages = 1 + bool(high_res.steps) + bool(zoomed.steps)
    _say_stage(1, stages, settings.steps, summary["sam_train_wall_s"], summary["sam_final_train_iou"])
    clock = _clock()
    if high_res.steps:
        snapshot = path.with_name(f"{path.stem}_high_res.pth") if snapshots else None
        sam, history = train_sam(high_res, progress, snapshot=snapshot, start=sam.state_dict())
        summary["sam_high_res_final_train_iou"] = float(history["iou"].tail(50).mean())
    else:
        with torch.random.fork_rng():  # seeded: the stem's (unused) convolutions, and so the file, reproducible
            torch.manual_seed(high_res.seed)
            plain, sam = sam, build_sam_small(high_res.architecture)
        load_start(sam, plain.state_dict())
    summary.update(_since(clock, "sam_high_res"))
    if high_res.steps:
        _say_stage(2, stages, high_res.steps, summary["sam_high_res_wall_s"], summary["sam_high_res_final_train_iou"])
    summary["sam_high_res_settings"] = asdict(high_res)
    if zoomed.steps:
        clock = _clock()
        snapshot = path.with_name(f"{path.stem}_zoomed.pth") if snapshots else None
        sam, history = train_sam(zoomed, progress, snapshot=snapshot, start=sam.state_dict())
        summary["sam_zoomed_final_train_iou"] = float(history["iou"].tail(50).mean())
        summary.update(_since(clock, "sam_zoomed"))
        _say_stage(3, stages, zoomed.steps, summary["sam_zoomed_wall_s"], summary["sam_zoomed_final_train_iou"])
    summary["sam_zoomed_settings"] = asdict(zoomed)  # steps 0: no third stage
    with atomic_path(path) as tmp:
        torch.save(sam.state_dict(), tmp)
    return summary


SAM_CUTOUT_PARTS = 2  # the scenes for SAM's cut-outs come in two fixed streams (two processes): same on any machine
CUTOUT_THREADS = 1  # per process: the parts fill the cores
# The demo generator without its crop layer (4x cheaper per scene; a CLIP trained on the crop layer's masks
# too, 400 scenes, was worse on the demo images: docs/demo-models.md) and without a stability gate: CLIP learns
# from every mask the IoU gate passes (those matching a shape get its name). Stated here, not derived from
# DEMO_SAM_SETTINGS, so that tuning the profile's gates does not change the trained CLIP.
CUTOUT_SAM_SETTINGS = SamSettings(points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.0, crop_n_layers=0)


def sam_cutouts_part(sam_path: Path, settings: ClipTrainSettings, part: int, progress: bool = False) -> list[CutOut]:
    """Stream ``part`` of ``settings.sam_scenes`` further training scenes through the demo pipeline's
    SAM steps (``CUTOUT_SAM_SETTINGS``, ``DEMO_SETTINGS``' filters), each mask named by ``sam_mask_cutouts``."""
    from tqdm.auto import tqdm

    from ..masks import apply_filters
    from .models import DEMO_SETTINGS

    torch.set_num_threads(CUTOUT_THREADS)
    sam = load_sam(DEMO_SAM, sam_path)
    rng = np.random.default_rng([TRAIN_STREAM, 2, settings.seed, part])
    cutouts = []
    count = len(range(part, settings.sam_scenes, SAM_CUTOUT_PARTS))
    bar = tqdm(range(count), desc=f"SAM cut-outs {part + 1}/{SAM_CUTOUT_PARTS}", disable=not progress, position=part)
    for _ in bar:
        scene = make_scene(rng)
        masks = apply_filters(generate_masks(sam, scene.image, CUTOUT_SAM_SETTINGS), DEMO_SETTINGS.filters)
        cutouts += sam_mask_cutouts(
            scene, masks, settings.sam_min_iou, settings.min_area, DEMO_SETTINGS.regions, settings.sam_part_max_iou
        )
    return cutouts


def _sam_cutouts(pool: ProcessPoolExecutor, sam_path: Path, settings: ClipTrainSettings, progress: bool) -> tuple:
    """All parts of the SAM cut-outs, the last in this process and the others in ``pool``."""
    clock = time.perf_counter()
    jobs = [pool.submit(sam_cutouts_part, sam_path, settings, part, progress) for part in range(SAM_CUTOUT_PARTS - 1)]
    last = sam_cutouts_part(sam_path, settings, SAM_CUTOUT_PARTS - 1, progress)
    cutouts = [c for job in jobs for c in job.result()] + last
    kinds = pd.Series([c.kind for c in cutouts], dtype=object).value_counts().to_dict()
    return cutouts, {"sam_cutouts_wall_s": time.perf_counter() - clock, "sam_cutouts": kinds}


def _train_clip_into(path: Path, settings: ClipTrainSettings, progress: bool, sam_cutouts: list[CutOut]) -> dict:
    clock = time.perf_counter(), time.process_time()
    clip_model, history = train_clip(settings, progress, sam_cutouts=sam_cutouts)
    save_clip_state(clip_model, path)
    record = {
        "clip_train_wall_s": time.perf_counter() - clock[0],
        "clip_train_cpu_s": time.process_time() - clock[1],
        "clip_final_batch_top1": float(history["batch_top1"].tail(50).mean()),
    }
    if "bias" in history:  # SigLIP's loss: where its learnt scale and bias ended
        record["clip_final_scale"] = float(history["scale"].iloc[-1])
        record["clip_final_bias"] = float(history["bias"].iloc[-1])
    return {**record, "clip_settings": asdict(settings)}


# The committed demo weights' recipe (docs/demo-models.md): SAM without its high-res path, 8500 compiled steps in two
# data-parallel processes at lr 1e-3 (32-40 min on 2 cores; the 4 Dec SAM), then with the high-res path added (starting
# at zero), 4000 further steps at lr 3e-4 on fresh scenes (16-22 min; 2000 until 5 Dec), then 1000 steps at lr 1e-4 on
# fresh scenes of which 30 % are mosaics of up-scaled shapes' boxes and 30 % of the others zoomed in up to 2.5x, as
# mosaic tiles and the crop layer show shapes (4.5-6 min; since 5 Dec, the mosaics since 07:00); then CLIP; seed 1.
DEMO_SAM_STEPS, DEMO_SAM_LR, DEMO_SAM_PROCESSES, DEMO_SEED = 8500, 1e-3, 2, 1
DEMO_SAM_HIGH_RES_STEPS, DEMO_SAM_HIGH_RES_LR = 4000, 3e-4
DEMO_SAM_ZOOMED_STEPS, DEMO_SAM_ZOOMED_LR, DEMO_SAM_ZOOMED_WARMUP = 1000, 1e-4, 20
DEMO_SAM_ZOOM_SHARE, DEMO_SAM_MAX_ZOOM, DEMO_SAM_MOSAIC_SHARE = 0.3, 2.5, 0.3


def demo_sam_settings(
    steps: int = DEMO_SAM_STEPS,
    lr: float = DEMO_SAM_LR,
    threads: int = 2,
    processes: int = DEMO_SAM_PROCESSES,
    compile: bool = True,
    seed: int = DEMO_SEED,
    architecture: SamArchitecture = replace(DEMO_SAM_ARCHITECTURE, high_res=False),
    fast_decoder: bool = False,
    points_per_image: int = SamTrainSettings.points_per_image,
) -> SamTrainSettings:
    """The demo SAM's training settings, first stage (the committed recipe by default: ``DEMO_SAM_ARCHITECTURE``
    without the high-res path); ``threads`` are shared by the processes. A ValueError when ``processes`` does not
    divide a step's scenes. ``fast_decoder``: ``SamTrainSettings.fast_decoder`` (the committed weights: SAM's own
    decoder). ``points_per_image``: the point prompts per scene and step (the committed weights: 8)."""
    per_process = max(1, threads // max(1, processes))
    return SamTrainSettings(
        steps=steps, lr=lr, threads=per_process, processes=processes, compile=compile, seed=seed,
        architecture=architecture, fast_decoder=fast_decoder, points_per_image=points_per_image,
    )  # fmt: skip


def demo_sam_high_res_settings(
    first: SamTrainSettings, steps: int = DEMO_SAM_HIGH_RES_STEPS, lr: float = DEMO_SAM_HIGH_RES_LR
) -> SamTrainSettings:
    """The second stage after ``first``: the same, with the high-res path, ``steps`` at ``lr`` on fresh scenes (from
    the first stage's weights, so without ``init_pointer_attention``), at the demo SAM's input size
    (``DEMO_SAM_ARCHITECTURE.image_size``) whatever the first stage's (``--sam-first-size``: its position tensors
    resized, ``load_start``)."""
    architecture = replace(first.architecture, high_res=True, image_size=DEMO_SAM_ARCHITECTURE.image_size)
    return replace(first, steps=steps, lr=lr, stage=2, architecture=architecture, pointer_init=False)


def demo_sam_zoomed_settings(
    high_res: SamTrainSettings, steps: int = DEMO_SAM_ZOOMED_STEPS, lr: float = DEMO_SAM_ZOOMED_LR
) -> SamTrainSettings:
    """The third stage after ``high_res``: the same SAM, ``steps`` at ``lr`` (a short warm-up) on fresh scenes, a share
    of them mosaics (``mosaic_scene``) and a share of the others zoomed in (``zoom_scene``), so that shapes as mosaic
    tiles and the crop layer show them are learnt too."""
    warmup = min(DEMO_SAM_ZOOMED_WARMUP, max(1, steps))
    shares = {"zoom_share": DEMO_SAM_ZOOM_SHARE, "max_zoom": DEMO_SAM_MAX_ZOOM, "mosaic_share": DEMO_SAM_MOSAIC_SHARE}
    return replace(high_res, steps=steps, lr=lr, stage=3, warmup=warmup, **shares)


# The flags of one model's training, refused with ``--only`` the other (they would change nothing): (flag, dest)
SAM_FLAGS = tuple(
    (f"--{name.replace('_', '-')}", name)
    for name in (
        "sam_steps",
        "sam_lr",
        "sam_points",
        "sam_first_size",
        "sam_high_res_steps",
        "sam_zoomed_steps",
        "sam_processes",
        "snapshots",
    )
) + (("--no-sam-compile", "sam_compile"), ("--sam-fast-decoder", "sam_fast_decoder"))
CLIP_FLAGS = tuple(
    (f"--{name.replace('_', '-')}", name)
    for name in ("clip_steps", "clip_sam_scenes", "clip_part_max_iou", "clip_loss")
)


DEFAULT_OUT = Path("outputs") / "demo_weights"


def out_dir_refusal(out: Path, shipped: Path) -> str | None:
    """Why weights may not be written to ``out`` (None when they may): the shipped weights' folder is written only
    in a source checkout (``pyproject.toml`` above ``helpers/``), never inside an installed package, whose files
    ``load_demo_models`` checks; a folder that cannot be made or written is found now, not after the training."""
    if out.resolve() == shipped.resolve() and not (shipped.parents[2] / "pyproject.toml").is_file():
        return (
            f"--out-dir {out} is the installed package's demo weights, which load_demo_models checks by sha256: "
            f"train into another folder (the default is {DEFAULT_OUT})."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / ".write-test", "")
        (out / ".write-test").unlink()
    except OSError as exc:
        return f"--out-dir {out} cannot be written ({exc}); choose another folder."
    return None


def main(argv: list[str] | None = None) -> dict:
    """Train (or, with ``--only``, train one of) the demo models, save them, evaluate, summarise."""
    from .models import DEMO_CLIP_FILE, DEMO_SAM_FILE, DEMO_SELECTION, DEMO_SHA256, DEMO_WEIGHTS_DIR

    parser = argparse.ArgumentParser(prog="python -m helpers.demo.train", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help=f"default: {DEFAULT_OUT} in the current folder (a temp dir with --quick); the shipped weights' folder, "
        "helpers/demo/weights, only from a source checkout",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few steps of each, about 1-2 minutes on 2 cores: checks the code path"
    )
    parser.add_argument("--only", choices=("sam", "clip"), help="train this one; evaluate with the other from out-dir")
    parser.add_argument("--sam-steps", type=int, default=DEMO_SAM_STEPS)
    parser.add_argument("--sam-lr", type=float, default=DEMO_SAM_LR, help="SAM's peak learning rate")
    parser.add_argument(
        "--sam-points",
        type=int,
        default=SamTrainSettings.points_per_image,
        help="point prompts per scene in each of SAM's steps, every stage (the committed weights: "
        f"{SamTrainSettings.points_per_image}; fewer: cheaper steps, other weights)",
    )
    parser.add_argument(
        "--sam-first-size",
        type=int,
        default=DEMO_SAM_ARCHITECTURE.image_size,
        help="SAM's input size in pixels in its first stage (the committed weights: "
        f"{DEMO_SAM_ARCHITECTURE.image_size}; smaller: cheaper steps, coarser tokens, other weights); the later stages "
        f"train at {DEMO_SAM_ARCHITECTURE.image_size}, the position embeddings resized",
    )
    parser.add_argument(
        "--sam-high-res-steps",
        type=int,
        default=DEMO_SAM_HIGH_RES_STEPS,
        help="SAM's second stage, with the high-res path (0: none; the path then stays zero)",
    )
    parser.add_argument(
        "--sam-zoomed-steps",
        type=int,
        default=None,
        help=f"SAM's third stage, on scenes partly mosaics or zoomed in (default {DEMO_SAM_ZOOMED_STEPS}; 0: none; "
        "none either with --sam-high-res-steps 0)",
    )
    parser.add_argument("--clip-steps", type=int, default=ClipTrainSettings.steps)
    parser.add_argument(
        "--clip-sam-scenes", type=int, default=ClipTrainSettings.sam_scenes, help="0: CLIP on exact cut-outs only"
    )
    parser.add_argument(
        "--clip-part-max-iou",
        type=float,
        default=ClipTrainSettings.sam_part_max_iou,
        help="SAM's masks inside one shape matching it below this IoU (at most 0.7) train CLIP as its parts (no shape "
        "name; 0, the committed recipe: none)",
    )
    parser.add_argument(
        "--clip-loss",
        choices=("sigmoid", "contrastive"),
        default=ClipTrainSettings.loss,
        help="sigmoid: SigLIP's pairwise loss (the committed CLIP); contrastive: CLIP's softmax over the batch (the "
        "recipe until 6 Dec 2026)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=SamTrainSettings.threads,
        help="torch threads for SAM and CLIP training; the committed weights come from 2 (another count trains "
        "other weights)",
    )
    parser.add_argument(
        "--sam-processes",
        type=int,
        default=DEMO_SAM_PROCESSES,
        help="train SAM data parallel in N processes sharing --threads (the committed weights: 2; on 2 cores 1.31x "
        "faster per step than 1); CLIP still trains on --threads",
    )
    parser.add_argument(
        "--sam-compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.compile SAM's training step (1.3x faster per step after 2-4 min of compiling; needs a C++ "
        "compiler; the committed weights are compiled; --no-sam-compile trains other weights, eagerly; --quick "
        "never compiles)",
    )
    parser.add_argument(
        "--sam-fast-decoder",
        action="store_true",
        help="train SAM's steps through the rearranged PromptBatchDecoder and matrix-product up-sampling (the same "
        "maths, 1.1-1.3x faster per step; another trajectory: other weights than the committed ones)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEMO_SEED,
        help=f"the random streams of SAM's and CLIP's training (the committed weights: {DEMO_SEED}); another seed "
        "is another draw of the same recipe",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--snapshots", action="store_true", help="also save SAM's weights every 200 steps")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be 1 or more.")
    if args.seed < 0:
        parser.error(f"--seed must be 0 or more (the committed weights: {DEMO_SEED}).")
    if not args.sam_lr > 0:
        parser.error("--sam-lr must be above 0.")
    if args.sam_points < 1:
        parser.error("--sam-points must be 1 or more.")
    if not 0 <= args.clip_part_max_iou <= ClipTrainSettings.sam_min_iou:
        parser.error(
            f"--clip-part-max-iou must lie between 0 and {ClipTrainSettings.sam_min_iou} (a mask matching its shape "
            "that well is named after it, not a part of it)."
        )
    patch, size = DEMO_SAM_ARCHITECTURE.patch, DEMO_SAM_ARCHITECTURE.image_size
    if not 4 * patch <= args.sam_first_size <= size or args.sam_first_size % patch:
        parser.error(f"--sam-first-size must be a multiple of the {patch}-px patch from {4 * patch} to {size}.")
    if args.sam_first_size != size and not args.sam_high_res_steps:
        parser.error(
            "--sam-first-size trains the first stage at another size; the second (--sam-high-res-steps) brings SAM "
            f"back to {size} px: give it steps."
        )
    if args.sam_high_res_steps < 0:
        parser.error("--sam-high-res-steps must be 0 or more.")
    if (args.sam_zoomed_steps or 0) < 0:
        parser.error("--sam-zoomed-steps must be 0 or more.")
    if args.sam_high_res_steps == 0 and args.sam_zoomed_steps:
        parser.error("--sam-zoomed-steps continues the high-res stage: it needs --sam-high-res-steps above 0.")
    unused = {
        "clip": [flag for flag, name in SAM_FLAGS if getattr(args, name) != parser.get_default(name)],
        "sam": [flag for flag, name in CLIP_FLAGS if getattr(args, name) != parser.get_default(name)],
    }.get(args.only)
    if unused:
        parser.error(f"--only {args.only} trains no {'SAM' if args.only == 'clip' else 'CLIP'}: leave out {unused}.")
    if args.sam_zoomed_steps is None:
        args.sam_zoomed_steps = DEMO_SAM_ZOOMED_STEPS if args.sam_high_res_steps else 0
    try:
        sam_settings = demo_sam_settings(
            args.sam_steps,
            args.sam_lr,
            args.threads,
            args.sam_processes,
            args.sam_compile,
            args.seed,
            architecture=replace(DEMO_SAM_ARCHITECTURE, high_res=False, image_size=args.sam_first_size),
            fast_decoder=args.sam_fast_decoder,
            points_per_image=args.sam_points,
        )
    except ValueError as error:
        parser.error(f"--sam-processes must divide the {SamTrainSettings.images_per_step} scenes of a step ({error})")
    high_res_settings = demo_sam_high_res_settings(sam_settings, args.sam_high_res_steps)
    zoomed_settings = demo_sam_zoomed_settings(high_res_settings, args.sam_zoomed_steps)
    clip_settings = ClipTrainSettings(
        steps=args.clip_steps,
        sam_scenes=args.clip_sam_scenes,
        sam_part_max_iou=args.clip_part_max_iou,
        loss=args.clip_loss,
        threads=args.threads,
        seed=args.seed,
    )
    if args.quick:
        sam_settings = replace(
            sam_settings, steps=2, images_per_step=args.sam_processes, points_per_image=4, warmup=1, compile=False
        )
        high_res_settings = demo_sam_high_res_settings(sam_settings, min(args.sam_high_res_steps, 2))
        zoomed_settings = demo_sam_zoomed_settings(high_res_settings, min(args.sam_zoomed_steps, 2))
        clip_settings = replace(
            clip_settings, steps=2, batch=8, scenes=4, warmup=1, sam_scenes=min(args.clip_sam_scenes, 2)
        )
    out = args.out_dir or (Path(tempfile.mkdtemp(prefix="demo_weights_")) if args.quick else DEFAULT_OUT)
    refusal = out_dir_refusal(out, DEMO_WEIGHTS_DIR)
    if refusal:
        parser.error(refusal)
    sam_path, clip_path = out / DEMO_SAM_FILE, out / DEMO_CLIP_FILE
    progress = not args.no_progress
    summary: dict = {"threads": args.threads, "sam_processes": sam_settings.processes}
    # the CPU too: the same command trains the same bytes on a CPU of the same type only (pinning AVX2 kernels on an
    # Intel Xeon did not give the AMD EPYC's bytes)
    summary.update({"cutout_threads": CUTOUT_THREADS, "cpus": os.cpu_count(), "cpu": cpu_record()})
    summary["demo_sam_settings"] = asdict(DEMO_SAM_SETTINGS)  # what the evaluation below runs
    summary["cutout_sam_settings"] = asdict(CUTOUT_SAM_SETTINGS)  # what CLIP's SAM cut-outs were made with
    if args.only == "clip":  # the record of the SAM it learns from, when the summary beside it describes that SAM
        summary.update(sam_record(out / "train_summary.json", sam_path))
    clock = time.perf_counter()
    if args.only == "clip" and clip_settings.sam_scenes and not sam_path.is_file():
        parser.error(
            f"--only clip trains on the demo SAM's masks: {sam_path} is missing (train SAM first, or copy the shipped "
            f"{DEMO_WEIGHTS_DIR / DEMO_SAM_FILE} and train_summary.json there to train CLIP beside it)."
        )
    with ProcessPoolExecutor(SAM_CUTOUT_PARTS - 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        if args.only != "clip":  # SAM first: CLIP learns from its masks
            summary.update(
                _train_sam_into(sam_path, sam_settings, high_res_settings, zoomed_settings, progress, args.snapshots)
            )
        if args.only != "sam":
            sam_cutouts: list[CutOut] = []
            if clip_settings.sam_scenes:
                sam_cutouts, stats = _sam_cutouts(pool, sam_path, clip_settings, progress)
                summary.update(stats)
            summary.update(_train_clip_into(clip_path, clip_settings, progress, sam_cutouts))
    summary["train_wall_s"] = time.perf_counter() - clock
    summary["sha256"] = {path.name: sha256_of(path) for path in (sam_path, clip_path) if path.is_file()}
    summary["matches_registry"] = {name: DEMO_SHA256.get(name) == digest for name, digest in summary["sha256"].items()}
    if sam_path.is_file() and clip_path.is_file():
        sam_loaded = load_sam(DEMO_SAM, sam_path)
        clip_loaded = load_clip(clip_path, name=f"clip_demo:{clip_path.name}")
        images = 1 if args.quick else 6
        table = evaluate_sam(sam_loaded.model, images=images, seeds=(101,) if args.quick else (101, 202))
        summary["sam_ceiling_per_class"] = table.groupby("class")[["best_mask_iou", "best_union_iou"]].mean().to_dict()
        summary["sam_ceiling"] = table[["best_mask_iou", "best_union_iou"]].mean().to_dict()
        summary["sam_ceiling_shapes"] = len(table)
        summary["clip"] = evaluate_clip(clip_loaded, images=2 if args.quick else 12)
        summary["clip"]["oracle_prompt_iou"] = oracle_prompt_iou(
            clip_loaded, DEMO_SELECTION, images=2 if args.quick else 12
        )
        summary["pipeline"] = evaluate_pipeline(
            sam_loaded, clip_loaded, images=1 if args.quick else 6, mosaics=1 if args.quick else 6
        )
    write_text(out / "train_summary.json", json.dumps(summary, indent=1, default=str))
    print(json.dumps({k: v for k, v in summary.items() if not k.endswith("_settings")}, indent=1, default=str))
    print(f"weights in {out}")
    print(byte_for_byte_note(summary))
    return summary


def byte_for_byte_note(summary: dict) -> str:
    """Whether a run's files are the shipped ones byte for byte, and, where they are not, the CPU type and threads it
    ran with beside the shipped files' (``DEMO_TRAINED_ON``): what decides the bytes, besides the options."""
    matches = summary["matches_registry"]
    same = ", ".join(f"{name} {'yes' if match else 'no'}" for name, match in matches.items())
    note = f"the shipped files byte for byte: {same}"
    if matches and not all(matches.values()):
        cpu, shipped = summary.get("cpu", {}), DEMO_TRAINED_ON
        here = f"{cpu.get('model', '?')} with {cpu.get('kernels', '?')} kernels, {summary.get('threads')} threads"
        there = f"{shipped['model']} with {shipped['kernels']} kernels, {shipped['threads']} threads"
        alike = cpu.get("kernels") == shipped["kernels"] and shipped["model"] in cpu.get("model", "")
        note += f" (this run: {here}; the shipped files: {there}" + (
            "; the same CPU model, kernels and threads: with the default options the bytes should have matched)"
            if alike and summary.get("threads") == shipped["threads"]
            else ": another CPU type or thread count sums floats in another order and trains other bytes, as expected)"
        )
    return note + (
        ". docs/demo-models.md says why. To ship new ones: copy them into helpers/demo/weights/ and their sha256 into "
        "DEMO_SHA256 (helpers/config.py)."
    )


if __name__ == "__main__":
    main()
