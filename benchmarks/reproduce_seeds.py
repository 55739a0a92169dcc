"""The seed reports' headline numbers beside this suite's, in one command.

Three reports this suite grew from give one number each that it can measure the same way:

- the object-retrieval report: COCO val2017 "chair", mean IoU **0.6824** (SAM vit_h; each mask cut out,
  kept when its cosine similarity to the prompt reaches a threshold, the kept masks united);
- the CIFAR-10 paper: test-image accuracy of CLIP alone **86.67 %** against SAM + CLIP **63.72 %**
  (the class of the SAM region that matches a class best);
- the SLIP report: top-1 on 4-class mosaics with the pretrained CLIP, **15.25 %** (is the region that
  best matches a class inside that class's tile?).

    python benchmarks/reproduce_seeds.py --sam vit_h --clip ViT-B/32 --coco-images 100 --cifar-images 1000
    python benchmarks/reproduce_seeds.py --demo      # offline: the demo models on demo stand-ins

The real run needs the SAM and CLIP checkpoints in ``--checkpoint-dir`` (``python -m helpers.checkpoints
vit_h ViT-B/32``; a missing one stops the run with that advice) and fetches COCO val2017 (images and
annotations zips, 1.07 GB) and CIFAR-10 (python tarball, 163 MB) from their official addresses into
``--data-dir`` with progress bars: resumable, md5-checked, renamed into place only when complete
(``helpers.download``). ``--offline`` never downloads and says what to put where. ``--coco-dir`` /
``--cifar-dir`` / ``--mosaic-dir`` use data already on disk instead.

``--demo`` runs the demo models (``helpers.demo_models``, the ``demo`` profile's settings) on stand-ins:
demo images in the "chair" role with a shape class, shape cut-outs in CIFAR-10's, mosaics of those
cut-outs in the Pokemon mosaics'. Those numbers say the code path works; they are not comparable with
the reports', and the printout says so.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import sys
import tarfile
import time
import zipfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from helpers import evaluation, metrics
from helpers.checkpoints.download import DownloadError, download_file
from helpers.checkpoints.ensure import REGISTRY, CheckpointError
from helpers.clip_scoring import encode_images
from helpers.config import ConfigError, RunConfig, load_config, project_root
from helpers.data import (
    COCO_ANNOTATIONS_URL,
    DEMO_CLASSES,
    Dataset,
    DatasetError,
    LabelledImage,
    load_class_folders,
    load_coco,
    make_demo_dataset,
    make_mosaics,
    object_crops,
)
from helpers.pipeline import Pipeline
from helpers.regions import REGION_MODES
from helpers.selection import SelectionSettings
from helpers.session import checkpoint_paths, load_clip_for, sam_source

# The reports' numbers: (value, report, how it was measured there).
SEED_REPORT = {
    "coco_chair_miou": (0.6824, "object-retrieval report", "COCO val2017, SAM vit_h, crop + cosine threshold + union"),
    "cifar_clip": (0.8667, "CIFAR-10 paper", "CIFAR-10 test images, CLIP alone"),
    "cifar_sam_clip": (0.6372, "CIFAR-10 paper", "same images, class of the best-matching SAM region"),
    "mosaic_top1": (0.1525, "SLIP report", "Pokemon (151 classes), 4-class mosaics, pretrained CLIP"),
}


class Archive(NamedTuple):
    """A dataset archive at its official address, recognised by size and md5 (what its publishers give)."""

    url: str
    size: int
    md5: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


COCO_IMAGES = Archive("http://images.cocodataset.org/zips/val2017.zip", 815_585_330, "442b8da7639aecaf257c1dceb8ba8c80")
COCO_ANNOTATIONS = Archive(COCO_ANNOTATIONS_URL, 252_907_541, "f4bbac642086de4f52a3fdda2de5fa2c")
CIFAR10 = Archive(
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", 170_498_071, "c58f30108f718f92721af3b95e74349a"
)


class SetupError(RuntimeError):
    """Something the run needs is missing; the message says how to supply it."""


# --- data --------------------------------------------------------------------------------------


def md5_check(expected: str):
    """A ``download_file`` check: the file's md5 must be ``expected`` (ValueError otherwise)."""

    def check(path: Path) -> None:
        digest = hashlib.md5()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != expected:
            raise ValueError(f"md5 {digest.hexdigest()}, expected {expected}")

    return check


def fetch_archive(archive: Archive, folder: Path, offline: bool) -> Path:
    """``folder/<archive file>``, downloaded with a progress bar when missing (resumable, md5-checked);
    ``offline``: only a file already there, checked."""
    dest = folder / archive.filename
    supply = (
        f"download {archive.url} ({archive.size / 2**20:.0f} MiB, md5 {archive.md5}) on a machine with "
        f"internet and copy it to {dest}"
    )
    if offline and not dest.is_file():
        raise SetupError(f"{dest} is missing (--offline). To supply it, {supply}; or run without --offline.")
    sources = [] if offline else [archive.url]  # offline: the file present is checked, nothing is fetched
    return download_file(
        sources, dest, size=archive.size, check=md5_check(archive.md5), progress=True, hint=f"\nOr {supply}."
    )


def coco_from_zips(data_dir: Path, class_name: str, count: int, offline: bool) -> tuple[Path, Path, list[int]]:
    """COCO val2017 from the official zips: the instances json and the first ``count`` images (by id)
    holding a non-crowd ``class_name``, extracted into ``data_dir/coco_val2017``. Returns (json, image
    folder, image ids)."""
    folder = data_dir / "coco_val2017"
    annotations = folder / "annotations" / "instances_val2017.json"
    if not annotations.is_file():
        zipped = fetch_archive(COCO_ANNOTATIONS, data_dir, offline)
        with zipfile.ZipFile(zipped) as archive:
            _write_atomic(annotations, archive.read("annotations/instances_val2017.json"))
    ids, content = coco_class_images(annotations, class_name, count)
    image_dir = folder / "val2017"
    files = {entry["id"]: entry["file_name"] for entry in content["images"]}
    missing = [i for i in ids if not (image_dir / files[i]).is_file()]
    if missing:
        zipped = fetch_archive(COCO_IMAGES, data_dir, offline)
        with zipfile.ZipFile(zipped) as archive:
            for image_id in tqdm(missing, desc="extracting COCO images"):
                _write_atomic(image_dir / files[image_id], archive.read(f"val2017/{files[image_id]}"))
    return annotations, image_dir, ids


def coco_class_images(annotations: Path, class_name: str, count: int) -> tuple[list[int], dict]:
    """The first ``count`` image ids (ascending) with a non-crowd ``class_name`` annotation, and the json."""
    content = json.loads(annotations.read_text())
    category = {c["name"]: c["id"] for c in content["categories"]}
    if class_name not in category:
        raise SetupError(f"{annotations} has no category {class_name!r}; its categories: {sorted(category)}.")
    ids = sorted(
        {
            a["image_id"]
            for a in content["annotations"]
            if a["category_id"] == category[class_name] and not a.get("iscrowd")
        }
    )
    if not ids:
        raise SetupError(f"No image in {annotations} holds a non-crowd {class_name!r}.")
    return ids[:count], content


def coco_dataset(args, class_name: str) -> tuple[Dataset, str]:
    """The COCO images holding ``class_name``, from ``--coco-dir`` or the official zips."""
    if args.coco_dir:
        found = sorted((args.coco_dir / "annotations").glob("instances_val2017*.json"))
        if not found:
            raise SetupError(f"--coco-dir {args.coco_dir} has no annotations/instances_val2017*.json.")
        annotations, image_dir = found[0], args.coco_dir / "val2017"
        ids, _ = coco_class_images(annotations, class_name, args.coco_images)
    else:
        annotations, image_dir, ids = coco_from_zips(args.data_dir, class_name, args.coco_images, args.offline)
    dataset = load_coco(annotations, image_dir, classes=[class_name], image_ids=ids)
    if not dataset.samples:
        raise SetupError(
            f"None of the {len(ids)} COCO images with a {class_name!r} could be read: {dataset.skipped[:3]}"
        )
    return dataset, f"'{class_name}' in {len(dataset)} COCO val2017 images holding one"


def cifar_items(args) -> tuple[list[LabelledImage], str]:
    """CIFAR-10 test images (all 10 000, in file order) from ``--cifar-dir`` or the official tarball."""
    if args.cifar_dir:
        batches = args.cifar_dir / "test_batch"
        if batches.is_file():
            meta = args.cifar_dir / "batches.meta"
            return _cifar_from_pickles(batches.read_bytes(), meta.read_bytes()), f"CIFAR-10 test ({args.cifar_dir})"
        items, _ = load_class_folders(args.cifar_dir)  # class folders
        return items, f"class folders {args.cifar_dir}"
    tarball = fetch_archive(CIFAR10, args.data_dir / "cifar10", args.offline)
    with tarfile.open(tarball, "r:gz") as archive:
        read = lambda name: archive.extractfile(f"cifar-10-batches-py/{name}").read()  # noqa: E731
        return _cifar_from_pickles(read("test_batch"), read("batches.meta")), "CIFAR-10 test"


def _cifar_from_pickles(batch: bytes, meta: bytes) -> list[LabelledImage]:
    """The python pickles of the md5-checked official tarball (or a folder extracted from it)."""
    batch, meta = pickle.load(io.BytesIO(batch), encoding="bytes"), pickle.load(io.BytesIO(meta), encoding="bytes")
    names = [n.decode() for n in meta[b"label_names"]]
    images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return [LabelledImage(np.ascontiguousarray(im), names[k], f"cifar10_test_{i:05d}") for i, (im, k) in
            enumerate(zip(images, batch[b"labels"]))]  # fmt: skip


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    part.write_bytes(data)
    os.replace(part, path)


# --- the demo stand-ins ------------------------------------------------------------------------


def demo_chair_role(config: RunConfig, class_name: str, count: int) -> tuple[Dataset, str]:
    """``count`` demo images (the demo profile's seed) that hold ``class_name``: the COCO "chair" role."""
    pool = make_demo_dataset(4 * count + 8, seed=config.demo_seed)
    samples = [s for s in pool.samples if s.masks[class_name].any()][:count]
    source = f"'{class_name}' in {len(samples)} demo images (seed {config.demo_seed}) holding one"
    return Dataset(pool.name, samples, pool.classes), source


def demo_crops(config: RunConfig, count: int) -> list[LabelledImage]:
    """Shape cut-outs (``object_crops``, ground-truth boxes) of demo images of the demo profile's seed,
    at least ``count`` of them and every shape among them: the CIFAR-10 role."""
    images, items = 4, []
    while len(items) < count or len({item.label for item in items}) < len(DEMO_CLASSES):
        items = object_crops(make_demo_dataset(images, seed=config.demo_seed))
        images *= 2
    return items


# --- models and measures -----------------------------------------------------------------------


def run_config(args) -> RunConfig:
    """The run's settings through ``helpers.config`` (the options given as its variables, not the environment)."""
    env = {"SAMCLIP_PROFILE": "demo" if args.demo else "full", "SAMCLIP_DEVICE": args.device}
    env["SAMCLIP_PRECISION"] = args.precision
    if not args.demo:
        env.update(SAMCLIP_SAM_MODEL=args.sam, SAMCLIP_CLIP_MODEL=args.clip)
    files = {
        "CHECKPOINT_DIR": args.checkpoint_dir,
        "SAM_CHECKPOINT": args.sam_checkpoint,
        "CLIP_CHECKPOINT": args.clip_checkpoint,
    }
    env.update({f"SAMCLIP_{name}": str(Path(value).resolve()) for name, value in files.items() if value})
    env["SAMCLIP_HOME"] = str(project_root(Path(__file__).resolve().parent))
    return load_config(env)


def check_checkpoints(config: RunConfig) -> None:
    """Real runs never download 2.4 GB unasked: a checkpoint absent from the folder stops the run here."""
    if config.is_demo:
        return
    for family, name, own in (("sam", config.sam_model, config.sam_checkpoint),
                              ("clip", config.clip_model, config.clip_checkpoint)):  # fmt: skip
        if own:
            continue
        entry = REGISTRY[name]
        files = [c.filename for c in (entry, *entry.alternates)]
        if not any((config.checkpoint_dir / f).is_file() for f in files):
            raise SetupError(
                f"The {family.upper()} checkpoint {name} is not in {config.checkpoint_dir} "
                f"(looked for {', '.join(files)}).\n"
                f"  Fetch it: python -m helpers.checkpoints {name}  (or run notebooks/00_download_checkpoints.ipynb),\n"
                f"  or pass --checkpoint-dir FOLDER that holds it, or --{family}-checkpoint FILE."
            )


def open_pipeline(config: RunConfig, args) -> Pipeline:
    """SAM (loaded on the first cache miss) and CLIP, with the profile's pipeline settings."""
    check_checkpoints(config)
    paths = checkpoint_paths(config)
    settings = config.pipeline
    if args.regions and args.regions != settings.regions.mode:
        settings = replace(settings, regions=replace(settings.regions, mode=args.regions))
    cache = None if args.no_cache else (args.cache_dir or config.output_dir / "reproduce_seeds" / "cache")
    return Pipeline(sam_source(config, paths), load_clip_for(config, paths), settings, cache)


def measure_iou(pipe: Pipeline, dataset: Dataset, class_name: str, selection: SelectionSettings) -> float:
    """Mean IoU of ``class_name`` over the images (the suite's ``evaluation.evaluate``)."""
    results = pipe.process_dataset(dataset)
    per_image = evaluation.evaluate(dataset, results, pipe.text, [class_name], selection)
    return float(metrics.summarize(per_image)["mean_iou"].iloc[0])


def measure_recognition(pipe: Pipeline, items: list[LabelledImage], classes: list[str]) -> dict:
    """CLIP alone and SAM + CLIP accuracy (``evaluation.recognition_accuracy``)."""
    settings = pipe.settings
    whole = encode_images(pipe.clip, [i.image for i in items], settings.batch_size, settings.precision)
    results = [pipe.process(item.image) for item in tqdm(items, desc="SAM + CLIP on whole images")]
    return evaluation.recognition_accuracy(items, classes, pipe.text, whole, results)


def measure_mosaics(pipe: Pipeline, items: list[LabelledImage], count: int) -> tuple[float, int]:
    """Top-1 on ``count`` 4-class mosaics of ``items`` (``evaluation.mosaic_top1_accuracy``); and the pairs."""
    mosaics = make_mosaics(items, per_mosaic=4, tile=112, count=count)
    accuracy = evaluation.mosaic_top1_accuracy(mosaics, pipe.process_dataset(mosaics), pipe.text)
    return accuracy, sum(len(s.masks) for s in mosaics.samples)


# --- the run -----------------------------------------------------------------------------------


def reproduce(args) -> dict:
    """Measure the three comparisons; returns rows and settings for ``report``."""
    config = run_config(args)
    selection = config.selection if args.threshold is None else replace(config.selection, threshold=args.threshold)
    started = time.perf_counter()
    if args.demo:
        class_name = args.demo_class
        chair, chair_source = demo_chair_role(config, class_name, args.coco_images)
        mosaic_pool = demo_crops(config, args.cifar_images)
        items = mosaic_pool[: args.cifar_images]
        items_source, mosaic_source = f"{len(items)} shape cut-outs (demo seed {config.demo_seed})", "shape cut-outs"
    else:
        class_name = "chair"
        check_checkpoints(config)  # before any download
        chair, chair_source = coco_dataset(args, class_name)
        cifar, cifar_source = cifar_items(args)
        items = cifar[: args.cifar_images]
        items_source = f"{len(items)} images of {cifar_source}"
        if args.mosaic_dir:
            mosaic_pool, _ = load_class_folders(args.mosaic_dir)
            mosaic_source = f"class folders {args.mosaic_dir}"
        else:  # images the accuracy above does not use
            mosaic_pool, mosaic_source = cifar[len(cifar) - max(40, 8 * args.mosaics) :], f"{cifar_source} images"
    pipe = open_pipeline(config, args)
    classes = sorted({item.label for item in items})
    iou = measure_iou(pipe, chair, class_name, selection)
    recognition = measure_recognition(pipe, items, classes)
    mosaic, pairs = measure_mosaics(pipe, mosaic_pool, args.mosaics)
    seconds = time.perf_counter() - started
    prefix = "DEMO STAND-IN: " if args.demo else ""
    rows = [
        ("coco_chair_miou", "COCO 'chair' mean IoU", iou, f"{prefix}{chair_source}", False),
        ("cifar_clip", "CIFAR-10 accuracy, CLIP alone", recognition["clip_alone"],
         f"{prefix}{items_source}, {len(classes)} classes", True),
        ("cifar_sam_clip", "CIFAR-10 accuracy, SAM + CLIP", recognition["sam_clip"], "same images", True),
        ("mosaic_top1", "mosaic top-1, pretrained CLIP", mosaic,
         f"{prefix}{args.mosaics} 4-class mosaics of {mosaic_source} ({pairs} pairs)", True),
    ]  # fmt: skip
    return {
        "demo": args.demo,
        "rows": rows,
        "models": {
            "sam": f"{config.sam_model} ({pipe.sam.identity})",
            "clip": f"{config.clip_model} ({pipe.clip.identity})",
        },
        "device": config.device,
        "pipeline": pipe.settings,
        "selection": selection,
        "sam_runs": pipe.sam_runs,
        "seconds": seconds,
    }


def report(result: dict) -> str:
    """The table: measure | seed report | this suite | measured on, then the settings."""
    lines = []
    if result["demo"]:
        rule = "=" * 100
        lines += [
            rule,
            "DEMO MODE: the demo models (small SAM + CLIP trained on synthetic shapes) on demo stand-ins for COCO,",
            "CIFAR-10 and the Pokemon mosaics. These numbers show the code path works; they are NOT comparable",
            "with the reports' (real checkpoints and data: run without --demo).",
            rule,
        ]
    header = ("measure", "seed report", "this suite", "this suite measured on")
    body, notes = [], []
    for key, label, value, source, percent in result["rows"]:
        seed_value, seed_report, seed_how = SEED_REPORT[key]
        show = (lambda v: f"{100 * v:.2f} %") if percent else (lambda v: f"{v:.4f}")
        mark = f"[{len(notes) + 1}]"
        body.append((f"{label} {mark}", show(seed_value), "n/a" if np.isnan(value) else show(value), source))
        notes.append(f"{mark} {seed_report}: {seed_how}")
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(4)]
    fmt = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    lines += [fmt(header), "-+-".join("-" * w for w in widths), *map(fmt, body), *notes]
    pipeline, selection = result["pipeline"], result["selection"]
    lines += [
        "",
        f"SAM  {result['models']['sam']}",
        f"CLIP {result['models']['clip']}",
        f"device {result['device']}, precision {pipeline.precision}; SAM ran on {result['sam_runs']} images "
        f"(the rest from the cache); {result['seconds']:.0f} s",
        f"SAM generator: {asdict(pipeline.sam)}",
        f"filters: {asdict(pipeline.filters)}; cut-outs: {pipeline.regions.mode}, margin {pipeline.regions.margin}"
        f"{', each also mirrored (embeddings averaged)' if pipeline.regions.mirror else ''}; "
        f"templates {list(pipeline.templates)}",
        f"selection (IoU row): {selection.mode}, threshold {selection.threshold}, "
        f"negatives {list(selection.negatives)}, kept masks united",
        "recognition: the class of the best-matching region (CLIP alone: the whole image); "
        "mosaics: the top-1 region per class inside its tile",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The seed reports' headline numbers beside this suite's.")
    parser.add_argument("--demo", action="store_true", help="the demo models on demo stand-ins (offline, minutes)")
    parser.add_argument("--sam", default="vit_h", choices=("vit_h", "vit_l", "vit_b"), help="SAM model (%(default)s)")
    parser.add_argument("--clip", default="ViT-B/32", help="CLIP model (%(default)s)")
    parser.add_argument("--coco-images", type=int, help="COCO images with a chair (100; --demo: 12 demo images)")
    parser.add_argument("--cifar-images", type=int, help="CIFAR-10 test images (1000; --demo: 32 cut-outs)")
    parser.add_argument("--mosaics", type=int, help="4-class mosaics, 4 pairs each (100 as SLIP; --demo: 8)")
    parser.add_argument("--demo-class", default="circle", help="--demo: the shape in the 'chair' role (%(default)s)")
    parser.add_argument("--threshold", type=float, default=None, help="cosine threshold (default: the profile's)")
    parser.add_argument("--regions", choices=REGION_MODES, default=None, help="cut-out mode (default: the profile's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (%(default)s)")
    parser.add_argument("--precision", default="float32", help="float32, bfloat16, float16 (%(default)s)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="default: checkpoints/ of the project")
    parser.add_argument("--sam-checkpoint", type=Path, default=None, help="a SAM file to use as it is")
    parser.add_argument("--clip-checkpoint", type=Path, default=None, help="a CLIP file to use as it is")
    parser.add_argument("--data-dir", type=Path, default=project_root(Path(__file__).resolve().parent) / "data",
                        help="where the archives are fetched to (%(default)s)")  # fmt: skip
    parser.add_argument("--coco-dir", type=Path, help="COCO on disk: annotations/instances_val2017*.json, val2017/")
    parser.add_argument("--cifar-dir", type=Path, help="CIFAR-10 on disk: cifar-10-batches-py/ or class folders")
    parser.add_argument("--mosaic-dir", type=Path, help="class folders for the mosaics (e.g. SLIP's Pokemon)")
    parser.add_argument("--offline", action="store_true", help="never download; say what to put where")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: outputs/<profile>/reproduce_seeds/cache")
    parser.add_argument("--no-cache", action="store_true", help="recompute every mask and embedding")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    for name, full, demo in (("coco_images", 100, 12), ("cifar_images", 1000, 32), ("mosaics", 100, 8)):
        if getattr(args, name) is None:
            setattr(args, name, demo if args.demo else full)
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = reproduce(args)
    except (SetupError, ConfigError, CheckpointError, DownloadError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    if args.json:
        rows = {key: {"seed_report": SEED_REPORT[key][0], "this_suite": value, "on": on}
                for key, _, value, on, _ in result["rows"]}  # fmt: skip
        args.json.write_text(json.dumps({"demo": args.demo, "rows": rows, "models": result["models"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
