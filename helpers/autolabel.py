"""Auto-labelling: a folder of images and a class list in, COCO and YOLO-seg datasets out.

    python -m helpers.autolabel --images DIR --classes "cat,dog" --out DIR --format coco,yolo

SAM's masks of every image (cached: an interrupted run resumes; ``--ray`` fills the cache on a Ray
cluster), each mask named by CLIP after the class it matches best or dropped when a negative prompt
("background" by default) wins, duplicates removed by mask NMS (``helpers.instances``), then
written in the chosen formats (``helpers.export``). Models and settings follow the ``SAMCLIP_*``
variables, as in the notebooks. An unreadable image is listed and skipped; an existing output
folder is never overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from .checkpoints import CheckpointError, DownloadError
from .config import RunConfig, load_config, remember_start_dir
from .data import Dataset, DatasetError, image_files, load_images
from .export import check_export_folder, write_coco_dataset, write_yolo
from .files import remove_leftovers
from .instances import InstancePredictions
from .pipeline import Pipeline
from .session import checkpoint_paths, load_clip_for, sam_source

FORMATS = ("coco", "yolo")
DEFAULT_NEGATIVES = ("background",)


@dataclass
class AutolabelReport:
    """What a run labelled: images, objects per class, what was skipped and where the exports lie."""

    images: int
    objects: dict[str, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    sam_runs: int = 0
    dataset: Dataset | None = None  # the images, read on touch
    predictions: InstancePredictions | None = None  # their instances, with scores, computed on touch
    ray: bool = False  # the cache was filled by Ray's workers first (``sam_runs`` counts this process only)
    untouched: list[Path] = field(default_factory=list)  # exports in ``out`` of formats this run did not write
    left_out: int = 0  # images beyond ``limit`` (``--max-images``), not labelled

    def summary(self) -> str:
        found = ", ".join(f"{name} {count}" for name, count in self.objects.items())
        if self.ray:
            sam = f"SAM + CLIP on Ray's workers, SAM on {self.sam_runs} more here"
        else:
            cached = self.images - self.sam_runs
            sam = f"SAM ran on {self.sam_runs}" + (f", {cached} from the cache" if cached > 0 else "")
        lines = [f"{self.images} images labelled in {self.seconds:.1f} s ({sam}): {found or 'no objects'}"]
        if self.left_out:
            lines.append(f"  {self.left_out} further image(s) left out by --max-images (limit): not labelled")
        lines += [f"  {fmt}: {path}" for fmt, path in self.outputs.items()]
        lines += [f"  left as it was: {path} (an earlier export; this run did not write it)" for path in self.untouched]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} image(s):")
            lines += [f"  {item}: {reason}" for item, reason in self.skipped]
        return "\n".join(lines)


def parse_classes(text: str | Sequence[str]) -> list[str]:
    """``"cat, dog"`` or ``["cat", "dog"]`` -> ``["cat", "dog"]``; ValueError when empty or repeated."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if not names:
        raise ValueError('The class list is empty: pass the names to look for, e.g. --classes "cat,dog".')
    folded = [n.casefold() for n in names]
    repeated = sorted({n for n, f in zip(names, folded) if folded.count(f) > 1})
    if repeated:
        raise ValueError(f"Classes {repeated} are listed twice (CLIP reads text in lower case); name each class once.")
    return names


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """``"coco,yolo"`` -> ``["coco", "yolo"]``; ValueError naming the known formats otherwise."""
    formats = [f.strip().lower() for f in (text.split(",") if isinstance(text, str) else text) if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if not formats:
        raise ValueError(f"No export format given: use one or more of {', '.join(FORMATS)}, e.g. --format coco,yolo.")
    if unknown:
        raise ValueError(f"Unknown export format {unknown}: use one or more of {', '.join(FORMATS)}.")
    return list(dict.fromkeys(formats))


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that already holds files, unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out.absolute()} is a file; name a folder.")
    for fmt in FORMATS:  # hidden temporaries a killed run left beside its exports do not make it "not empty"
        remove_leftovers(out / fmt)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"The output folder {out.absolute()} is not empty; choose another --out, or pass --overwrite "
            "(overwrite=True from Python) to replace the exports in it."
        )


def check_out_beside(images: Path, out: Path) -> None:
    """Refuse an ``out`` that is the ``images`` folder or lies inside it: the exports would lie among the images, and
    a ``--recursive`` run over them would label the exported copies. (An ``images`` folder inside ``out/coco`` or
    ``out/yolo``, which an export replaces, is refused by ``check_export_folder``.)"""
    if out.resolve().is_relative_to(images.resolve()):  # '..' collapsed, symbolic links followed
        raise ValueError(
            f"--out {out.absolute()} is, or lies inside, --images {images.absolute()}: the exports would lie among the "
            "images (and a --recursive run would label the exported copies); choose an --out outside the image folder."
        )


def check_negatives(names: Sequence[str], negatives: Sequence[str]) -> tuple[str, ...]:
    """The negative prompts left once the classes are taken out: a class may be named like a default negative
    ("background" as a class replaces that negative), but negatives chosen by hand must not name a class."""
    folded = {name.casefold() for name in names}
    if tuple(negatives) != DEFAULT_NEGATIVES:
        clash = [n for n in negatives if n.casefold() in folded]
        if clash:
            raise ValueError(
                f"{', '.join(clash)} is both a class and a negative prompt (--negatives): a mask it names would be "
                "labelled and dropped at once; leave it out of one of the two."
            )
    return tuple(n for n in negatives if n.casefold() not in folded)


def autolabel(
    images: str | Path | Dataset,
    classes: str | Sequence[str],
    out: str | Path,
    formats: str | Sequence[str] = FORMATS,
    config: RunConfig | None = None,
    negatives: Sequence[str] = DEFAULT_NEGATIVES,
    use_ray: bool = False,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    pipeline: Pipeline | None = None,
    limit: int | None = None,
    recursive: bool = False,
) -> AutolabelReport:
    """Label ``images`` (a folder, or a ``Dataset``) with ``classes`` and write ``formats`` under ``out``
    (``out/coco``, ``out/yolo``). ``config``: the run's settings (``load_config()``); ``pipeline``: one
    already built (notebooks), else the run's models, SAM loaded only for images not in the cache;
    ``limit``: only the folder's first ``limit`` image files (by name); ``recursive``: the folder's sub-folders
    too (hidden ones left out), exported in the same sub-folders (``images/street/0001.jpg``)."""
    started = time.perf_counter()
    config = config or load_config()  # a bad SAMCLIP_* setting is said now, before the images are read
    names, chosen = parse_classes(classes), parse_formats(formats)
    out = Path(out).expanduser()
    if not isinstance(images, Dataset) and Path(images).expanduser().is_dir():  # a missing folder: said below
        check_out_beside(Path(images).expanduser(), out)
    negatives = check_negatives(names, negatives)
    check_output(out, overwrite)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r}: give a whole number of images, at least 1 (or None for all).")
    if isinstance(images, Dataset):
        dataset = (
            images
            if limit is None
            else Dataset(images.name, images.samples[:limit], images.classes, images.skipped, images.notes)
        )
        left_out = len(images) - len(dataset)
    else:
        dataset = load_images(images, classes=names, recursive=recursive, limit=limit, progress=progress)
        left_out = max(0, len(image_files(Path(images).expanduser(), recursive)) - limit) if limit else 0
    for fmt in chosen:  # refused now, not after SAM has run on every image
        check_export_folder(dataset, out / fmt, overwrite)
    if pipeline is None:
        paths = checkpoint_paths(config, progress=progress)
        pipeline = Pipeline(sam_source(config, paths), load_clip_for(config, paths), config.pipeline, config.cache_dir)
    for name in names:  # the demo CLIP reads four shapes only: say so before the work, not after
        pipeline.clip.check_prompt(name)
    if use_ray:
        from .distributed import ModelSpec, process_dataset_on_ray

        process_dataset_on_ray(
            dataset,
            ModelSpec.from_config(config),
            config.pipeline,
            config.cache_dir,
            workers,
            progress=progress,
            address=config.ray_address,  # RAY_ADDRESS's cluster, else a private instance here
        )  # fills the shared cache; the results are read back below without running SAM
    results = pipeline.process_dataset(dataset, progress=progress)
    selection = replace(config.selection, negatives=negatives)
    predictions = InstancePredictions(results, pipeline.text, names, selection)
    labelled = Dataset(dataset.name, dataset.samples, names, dataset.skipped, dataset.notes)
    outputs = {}
    try:
        if "coco" in chosen:
            outputs["coco"] = write_coco_dataset(labelled, out / "coco", predictions=predictions, overwrite=overwrite)
        if "yolo" in chosen:
            outputs["yolo"] = write_yolo(labelled, out / "yolo", predictions=predictions, overwrite=overwrite)
    except KeyboardInterrupt as exc:  # each export is whole or not there; say which are new
        raise KeyboardInterrupt(", ".join(map(str, outputs.values()))) from exc
    objects = dict.fromkeys(names, 0)
    for found in predictions:
        for instance in found:
            objects[instance.label] += 1
    seconds = time.perf_counter() - started
    return AutolabelReport(
        images=len(labelled),
        objects=objects,
        skipped=list(dataset.skipped),
        outputs=outputs,
        seconds=seconds,
        sam_runs=pipeline.sam_runs,
        dataset=labelled,
        predictions=predictions,
        ray=use_ray,
        untouched=[out / fmt for fmt in FORMATS if fmt not in chosen and (out / fmt).exists()],
        left_out=left_out,
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of images (1 or more)")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m helpers.autolabel``: see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.autolabel",
        description="Label a folder of images with SAM + CLIP and export COCO / YOLO-seg datasets. Models and "
        "settings follow the SAMCLIP_* variables (SAMCLIP_PROFILE=demo: the small offline models); every image "
        "directly in --images is labelled (with --recursive, in its sub-folders too), or the first N with "
        "--max-images (SAMCLIP_MAX_IMAGES is for the notebooks' datasets).",
    )
    parser.add_argument("--images", type=Path, required=True, help="folder of images to label")
    parser.add_argument("--classes", required=True, help='comma-separated class names, e.g. "cat,dog"')
    parser.add_argument("--out", type=Path, required=True, help="output folder (coco/ and yolo/ inside)")
    parser.add_argument("--format", default="coco,yolo", help="coco, yolo or both (default coco,yolo)")
    parser.add_argument(
        "--negatives", default=",".join(DEFAULT_NEGATIVES), help='prompts that drop a mask (default "background")'
    )
    parser.add_argument(
        "--max-images",
        type=_positive,
        metavar="N",
        help="label only the first N images (by file name): try classes and settings on a few first; their SAM "
        "masks stay in the cache, so the whole folder afterwards does not compute them again",
    )
    parser.add_argument(
        "--recursive",
        action="store_true",
        help="label the images in the sub-folders of --images too (hidden ones left out); the exports keep the "
        "sub-folders (images/street/0001.jpg)",
    )
    parser.add_argument("--ray", action="store_true", help="fill the cache on Ray (RAY_ADDRESS, else a local one)")
    parser.add_argument("--workers", type=int, default=None, help="Ray workers (with --ray; default 2)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out, replacing the exports of the chosen formats (others are left as they are)",
    )
    args = parser.parse_args(argv)
    if args.workers is not None and not args.ray:
        parser.error("--workers counts Ray's workers: give --ray too, or leave --workers out.")
    remember_start_dir()  # relative paths in SAMCLIP_* are read from the folder this command started in
    negatives = [n.strip() for n in args.negatives.split(",") if n.strip()]
    with warnings.catch_warnings():  # a warning is one line of the command's output, not Python's file and source
        warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
        return _run(args, negatives)


def _run(args: argparse.Namespace, negatives: list[str]) -> int:
    try:
        report = autolabel(
            args.images,
            args.classes,
            args.out,
            args.format,
            None,
            negatives,
            args.ray,
            2 if args.workers is None else args.workers,
            args.overwrite,
            limit=args.max_images,
            recursive=args.recursive,
        )
    except (ValueError, FileExistsError, ImportError, DatasetError, CheckpointError, DownloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        written = f"only {exc} was written" if str(exc) else "nothing was exported"
        print(
            f"\ninterrupted: {written}; SAM's masks of the images done so far are in the cache, "
            "so the same command again goes on from there.",
            file=sys.stderr,
        )
        return 130
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
