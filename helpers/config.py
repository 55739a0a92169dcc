"""The run's settings: read once from ``SAMCLIP_*`` environment variables, validated, frozen.

This is the only module that reads the environment; everything else receives what it needs
as arguments. Profiles:
- ``full`` (default): real SAM and CLIP checkpoints, the chosen dataset.
- ``smoke``: tiny randomly initialised models built from the real classes and a few demo
  images, so the whole notebook suite runs in CI in minutes. Its results mean nothing, and
  everything it prints or draws says so.
- ``demo``: the small SAM and CLIP trained on the synthetic shapes (``helpers/demo/weights/``,
  sha256-checked, no download) with their own settings (``DEMO_SETTINGS``, ``DEMO_SELECTION`` below),
  on demo images of a seed no training or test uses: real results, offline, in minutes on a CPU.
  Banners and figure titles say which models these are.

Relative paths in the variables resolve against the folder the command was started in
(``SAMCLIP_START_DIR``, which ``make`` and ``python -m helpers.run_notebooks`` set), else the
project root, never against ``notebooks/`` where the kernel runs.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import torch

from .checkpoints.registry import REGISTRY
from .data.demo import DEMO_CLASSES
from .data.prepare import DATASETS
from .masks import FilterSettings
from .models.tiny import DEMO_SAM
from .pipeline import PipelineSettings
from .precision import PRECISIONS, check_precision
from .regions import RegionSettings
from .segmentation import SamSettings
from .selection import SelectionSettings

PROFILES = ("full", "smoke", "demo")
# Every SAMCLIP_* variable there is (docs/settings.md); another one is a typo, refused by load_config.
SETTINGS = (
    "SAMCLIP_PROFILE",
    "SAMCLIP_DEVICE",
    "SAMCLIP_SAM_MODEL",
    "SAMCLIP_CLIP_MODEL",
    "SAMCLIP_DATASET",
    "SAMCLIP_DATA_PATH",
    "SAMCLIP_CLASSES",
    "SAMCLIP_MAX_IMAGES",
    "SAMCLIP_PRECISION",
    "SAMCLIP_CHECKPOINT_DIR",
    "SAMCLIP_MIRROR",
    "SAMCLIP_SAM_CHECKPOINT",
    "SAMCLIP_CLIP_CHECKPOINT",
    "SAMCLIP_DRIVE_CACHE",
    "SAMCLIP_FINETUNE_DATA",
    "SAMCLIP_HOME",
    "SAMCLIP_START_DIR",
)
SAM_MODELS = ("auto", "vit_h", "vit_l", "vit_b")
SMOKE_TAG = "SMOKE TEST - random tiny models, results are meaningless"
DEMO_TAG = "DEMO - small SAM + CLIP trained on synthetic shapes, not the real models"
DEMO_SAM_MODEL, DEMO_CLIP_MODEL = DEMO_SAM, "clip_demo"  # helpers.models.tiny.build_sam_demo / build_clip_demo
# Demo images of a seed that neither training (its own random streams), its evaluation (101, 202, 303,
# 404, 505) nor any test (9090; 0-7, 77, 1000 elsewhere) uses: shapes the models have never seen. With
# 11 the first 8 ground-truth cut-outs hold all four shapes, so notebook 03 can build its 4-class mosaics.
DEMO_SEED = 11
DEMO_IMAGES = 12
# A random model scores every mask near zero: open the gates so masks come out at all.
SMOKE_SAM = SamSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.9)
DEFAULT_FILTERS = FilterSettings(min_area=100, max_inside=0.9)  # small masks and masks inside larger ones dropped

# The demo profile: the trained demo models (helpers.demo) and the settings they run with.
DEMO_WEIGHTS_DIR = Path(__file__).resolve().parent / "demo" / "weights"
DEMO_SAM_FILE = "sam_demo.pth"  # a state dict for models.tiny.build_sam_demo
DEMO_CLIP_FILE = "clip_demo.pt"  # a float16 state dict for models.tiny.build_clip_demo (clip.model.build_model)
DEMO_VOCABULARY = (*DEMO_CLASSES, "background")  # every word the demo CLIP was trained to read
DEMO_SHA256 = {  # the shipped files' sums, checked on every load (helpers.demo.models.demo_weight_path)
    DEMO_SAM_FILE: "69e881ba413bde93ccb3fe8ec35cfd4c5b02c34a7f4a0b7ae12e96eb0d654a83",
    DEMO_CLIP_FILE: "91c89ae197e0eacb27f663c220acff3706dcca52dd2d3faffdbba56c464f32a2",
}
# Where the shipped files were trained (6 Dec 2026, the default command; their train_summary.json predates its "cpu"
# record): the same bytes come out again only on a CPU of this type (docs/demo-models.md, "Byte for byte").
DEMO_TRAINED_ON = {"model": "AMD EPYC", "kernels": "AVX512", "threads": 2}
# 16 x 16 points suffice for shapes of radius >= 29 px on 320 x 240 images (every shape holds several
# grid points) and take a quarter of 32 x 32's time. One crop layer (SAM's own: the image again as 2 x 2
# overlapping crops, each at the model's full input size) shows the shapes 1.6x larger: best mask per shape
# 0.872 -> 0.918 on the tuning seeds (5 Dec models) for 4x the generator's time. IoU gate 0.5 and stability
# gate 0.7 were chosen on tuning seeds 6101 + 6102 (docs/demo-models.md, "Settings for the demo profile");
# SAM's own gates (0.88 / 0.95) keep no mask of this SAM. (The CLIP's SAM cut-outs are made with other, fixed
# settings: helpers.demo.train.CUTOUT_SAM_SETTINGS.)
DEMO_SAM_SETTINGS = SamSettings(points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.7, crop_n_layers=1)
# Each cut-out is also shown to CLIP mirrored and the two embeddings averaged: on the tuning seeds, with four ViT CLIPs,
# prompts for absent shapes answered 0.13-0.15 -> 0.08-0.12, one-class mosaics +0.01-0.12, pipeline IoU within 0.03;
# with the committed CLIP (6 Dec) the pipeline 0.875 -> 0.888 and the mosaics 0.79 -> 0.83 (docs/demo-models.md).
DEMO_SETTINGS = PipelineSettings(
    sam=DEMO_SAM_SETTINGS, filters=FilterSettings(min_area=100), regions=RegionSettings(mirror=True)
)
# This CLIP's cosine similarities run higher than OpenAI's (a wrong shape often scores 0.3-0.6), so the
# threshold is 0.4 rather than the pipeline's 0.25 (the best of 0.4-0.8 on demo seed 404; re-checked with the
# stability gate: 0.3-0.45 within 0.03 of each other on four seeds; with the committed CLIP 0.35-0.45 within 0.009
# on the tuning seeds, 0.4 answering half the absent-class prompts 0.35 does: docs/demo-models.md).
DEMO_SELECTION = SelectionSettings(mode="threshold", threshold=0.4, negatives=("background",))


class ConfigError(ValueError):
    """A ``SAMCLIP_*`` variable holds a value that cannot be used; the message names it."""


def project_root(start: Path | None = None) -> Path:
    """The checkout holding ``notebooks/`` and ``helpers/``, searched upwards from ``start``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "helpers").is_dir():
            return folder
    return here


def choose_device(device: str = "auto") -> str:
    """``auto`` picks ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"SAMCLIP_DEVICE={device!r} is not a device; use auto, cpu, cuda or cuda:N.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"SAMCLIP_DEVICE={device!r} was asked for but no CUDA GPU is visible; use cpu or auto.")
    if device.startswith("cuda:"):
        index, count = device.removeprefix("cuda:"), torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise ConfigError(f"SAMCLIP_DEVICE={device!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return device


def default_sam_model(device: str) -> str:
    """vit_h on a GPU; vit_b on CPU, where vit_h takes minutes per image."""
    return "vit_h" if device.startswith("cuda") else "vit_b"


@dataclass(frozen=True)
class RunConfig:
    """Everything a notebook needs to know about the current run (see the README's Settings)."""

    profile: str = "full"
    device: str = "cpu"
    sam_model: str = "vit_b"
    clip_model: str = "ViT-B/32"
    dataset: str = "demo"
    data_path: Path | None = None  # absolute; None: data/<dataset> in the project
    classes: tuple[str, ...] = ()  # empty: the classes present in the dataset
    max_images: int | None = None
    demo_seed: int = 0  # the seed of the generated demo images (the demo profile: DEMO_SEED)
    root: Path = field(default_factory=project_root)
    checkpoint_dir: Path | None = None  # None: checkpoints/, outputs/smoke/checkpoints, helpers/demo/weights
    mirrors: tuple[str, ...] = ()
    sam_checkpoint: Path | None = None
    clip_checkpoint: Path | None = None
    drive_cache: Path | None = None
    finetune_data: Path | None = None  # class folders for notebook 05 (None: object crops of the dataset)
    ray_address: str | None = None  # RAY_ADDRESS: the Ray cluster helpers.distributed joins (None: a local one)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"SAMCLIP_PROFILE={self.profile!r} is not a profile; use one of {', '.join(PROFILES)}.")
        if self.dataset not in DATASETS:
            raise ConfigError(f"SAMCLIP_DATASET={self.dataset!r} is not known; use one of {', '.join(DATASETS)}.")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"SAMCLIP_MAX_IMAGES={self.max_images} must be a whole number of at least 1.")
        if self.checkpoint_dir is None:
            default = self.output_dir / "checkpoints" if self.is_smoke else self.root / "checkpoints"
            object.__setattr__(self, "checkpoint_dir", DEMO_WEIGHTS_DIR if self.is_demo else default)

    @property
    def is_smoke(self) -> bool:
        return self.profile == "smoke"

    @property
    def is_demo(self) -> bool:
        """The trained demo models on the synthetic shapes (``helpers.demo``)."""
        return self.profile == "demo"

    @property
    def output_dir(self) -> Path:
        return self.root / "outputs" / self.profile

    @property
    def dataset_dir(self) -> Path:
        return self.output_dir / "dataset"

    @property
    def cache_dir(self) -> Path:
        return self.output_dir / "cache"

    @property
    def figure_dir(self) -> Path:
        """Figures of this dataset, kept apart from other datasets' figures."""
        return self.output_dir / "figures" / self.dataset

    @property
    def results_dir(self) -> Path:
        return self.output_dir / "results"

    def title(self, text: str) -> str:
        """Figure title; smoke runs are labelled so nobody mistakes them for results, demo runs so
        nobody mistakes the small shape models for the real SAM and CLIP."""
        if self.is_smoke:
            return f"[{SMOKE_TAG}]\n{text}"
        return f"[{DEMO_TAG}]\n{text}" if self.is_demo else text


def _path(environ: Mapping[str, str], name: str, base: Path) -> Path | None:
    value = environ.get(name, "").strip()
    return (base / Path(value).expanduser()).resolve() if value else None


def _choice(environ: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = environ.get(name, "").strip() or default
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; use one of: {', '.join(allowed)}.")
    return value


def load_config(environ: Mapping[str, str] | None = None) -> RunConfig:
    """Read and check the run's settings from ``SAMCLIP_*`` variables (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    for name in sorted(k for k in env if k.upper().startswith("SAMCLIP_") and k not in SETTINGS):
        near = difflib.get_close_matches(name.upper(), SETTINGS, n=1, cutoff=0.85)
        raise ConfigError(
            f"{name} is not a setting{f' (did you mean {near[0]}?)' if near else ''}; the settings are "
            f"{', '.join(SETTINGS)} (docs/settings.md). Unset it: it would be ignored."
        )
    root = Path(env["SAMCLIP_HOME"]).expanduser().resolve() if env.get("SAMCLIP_HOME") else project_root()
    base = Path(env["SAMCLIP_START_DIR"]).resolve() if env.get("SAMCLIP_START_DIR") else root
    profile = env.get("SAMCLIP_PROFILE", "").strip().lower() or "full"
    if profile not in PROFILES:
        raise ConfigError(f"SAMCLIP_PROFILE={profile!r} is not a profile; use one of {', '.join(PROFILES)}.")
    smoke, demo = profile == "smoke", profile == "demo"
    device = choose_device(env.get("SAMCLIP_DEVICE", "").strip() or "auto")
    raw_max = env.get("SAMCLIP_MAX_IMAGES", "").strip()
    if raw_max and not raw_max.isdigit():
        raise ConfigError(f"SAMCLIP_MAX_IMAGES={raw_max!r} is not a whole number; use e.g. SAMCLIP_MAX_IMAGES=10.")
    precision = _choice(env, "SAMCLIP_PRECISION", "float32", PRECISIONS)
    try:
        check_precision(precision, device)
    except ValueError as exc:
        raise ConfigError(f"SAMCLIP_PRECISION={precision}: {exc}") from None
    sam_model = _choice(env, "SAMCLIP_SAM_MODEL", "auto", SAM_MODELS)
    clip_names = tuple(name for name, c in REGISTRY.items() if c.family == "clip")
    clip_model = _choice(env, "SAMCLIP_CLIP_MODEL", "ViT-B/32", clip_names)
    classes = tuple(dict.fromkeys(p.strip() for p in env.get("SAMCLIP_CLASSES", "").split(",") if p.strip()))
    if smoke:
        sam_model, clip_model = "sam_tiny", "clip_tiny"
    elif demo:
        sam_model, clip_model = DEMO_SAM_MODEL, DEMO_CLIP_MODEL
    elif sam_model == "auto":
        sam_model = default_sam_model(device)
    default_images = 4 if smoke else (DEMO_IMAGES if demo else None)
    if demo:
        pipeline = _demo_pipeline(precision)
    else:
        sam = SMOKE_SAM if smoke else SamSettings()
        pipeline = PipelineSettings(sam=sam, filters=DEFAULT_FILTERS, precision=precision)
    return RunConfig(
        profile=profile,
        device=device,
        sam_model=sam_model,
        clip_model=clip_model,
        dataset=_choice(env, "SAMCLIP_DATASET", "demo", DATASETS),
        data_path=_path(env, "SAMCLIP_DATA_PATH", base),
        classes=classes,
        max_images=int(raw_max) if raw_max else default_images,
        demo_seed=DEMO_SEED if demo else 0,
        root=root,
        checkpoint_dir=_path(env, "SAMCLIP_CHECKPOINT_DIR", base),
        mirrors=tuple(_mirror(m, base) for m in env.get("SAMCLIP_MIRROR", "").split()),
        sam_checkpoint=_path(env, "SAMCLIP_SAM_CHECKPOINT", base),
        clip_checkpoint=_path(env, "SAMCLIP_CLIP_CHECKPOINT", base),
        drive_cache=_path(env, "SAMCLIP_DRIVE_CACHE", base),
        finetune_data=_path(env, "SAMCLIP_FINETUNE_DATA", base),
        ray_address=env.get("RAY_ADDRESS", "").strip() or None,
        pipeline=pipeline,
        selection=DEMO_SELECTION if demo else SelectionSettings(),
    )


def _demo_pipeline(precision: str) -> PipelineSettings:
    """``DEMO_SETTINGS`` itself (the object, so a change there reaches every demo run), with only the
    precision replaced when ``SAMCLIP_PRECISION`` asks for another."""
    return DEMO_SETTINGS if precision == DEMO_SETTINGS.precision else replace(DEMO_SETTINGS, precision=precision)


def _mirror(value: str, base: Path) -> str:
    """A mirror URL as it is; a local folder made absolute."""
    if "://" in value and not value.startswith("file://"):
        return value
    return str((base / Path(value.removeprefix("file://")).expanduser()).resolve())


def remember_start_dir() -> None:
    """Record the folder this command started in, so kernels (which run in ``notebooks/``)
    resolve relative paths against it; an outer command's value is kept."""
    os.environ.setdefault("SAMCLIP_START_DIR", os.getcwd())


def banner(config: RunConfig) -> str:
    """One block of text that every notebook prints first."""
    lines = [
        f"profile={config.profile}  device={config.device}  SAM={config.sam_model}  CLIP={config.clip_model}  "
        f"dataset={config.dataset}  precision={config.pipeline.precision}"
    ]
    for kind, path in (("SAM", config.sam_checkpoint), ("CLIP", config.clip_checkpoint)):
        if path:  # a file of one's own (a fine-tuned CLIP) replaces the profile's weights: say which
            lines.append(f"{kind} weights: {path} (SAMCLIP_{kind}_CHECKPOINT)")
    if config.data_path:
        unread = " (not read: SAMCLIP_DATASET=demo generates its images; set it to coco, camvid, yolo or labelmaps)"
        lines.append(f"data={config.data_path}" + (unread if config.dataset == "demo" else ""))
    if config.is_smoke:
        rule = "!" * 78
        lines = [rule, f"!! {SMOKE_TAG}", "!! (set SAMCLIP_PROFILE=full or unset it for real runs)", rule, *lines]
    if config.is_demo:
        rule, shapes = "=" * 78, config.demo_seed and config.dataset == "demo"
        lines = [
            rule,
            f"== {DEMO_TAG}",
            f"== weights: {config.checkpoint_dir} (sha256-checked, no download)"
            + (" but for the files below" if config.sam_checkpoint or config.clip_checkpoint else ""),
            f"== images: demo shapes of seed {config.demo_seed}, unseen in training"
            if shapes
            else f"== images: the dataset's first {config.max_images} (SAMCLIP_MAX_IMAGES=N for another number)",
            "== (set SAMCLIP_PROFILE=full or unset it for the real SAM and CLIP)",
            rule,
            *lines,
        ]
    return "\n".join(lines)
