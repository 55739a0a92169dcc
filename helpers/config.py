"""Run profile, project paths and device choice, read once from environment variables.

Two profiles exist:
- ``full`` (default): real SAM and CLIP checkpoints, the chosen dataset.
- ``smoke``: tiny randomly initialised models built from the real classes and a few demo
  images, so the whole notebook suite runs in CI in minutes. Its results mean nothing, and
  everything it prints or draws says so.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .precision import check_precision

PROFILE_ENV = "SAMCLIP_PROFILE"
PROFILES = ("full", "smoke")
SMOKE_TAG = "SMOKE TEST - random tiny models, results are meaningless"


def in_colab() -> bool:
    return "google.colab" in sys.modules


def project_root() -> Path:
    """The checkout holding ``notebooks/`` (searched upwards from the working directory).

    ``SAMCLIP_HOME`` overrides it; with no checkout found, the working directory is used.
    """
    if os.environ.get("SAMCLIP_HOME"):
        return Path(os.environ["SAMCLIP_HOME"]).expanduser().resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "helpers").is_dir():
            return folder
    return here


def choose_device(device: str = "auto") -> str:
    """``auto`` picks ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} was asked for but no CUDA GPU is visible; use 'cpu' or 'auto'.")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_sam_model(device: str) -> str:
    """vit_h on a GPU; vit_b on CPU, where vit_h takes minutes per image."""
    return "vit_h" if device.startswith("cuda") else "vit_b"


@dataclass
class RunConfig:
    """Everything a notebook needs to know about the current run."""

    profile: str
    device: str
    sam_model: str
    clip_model: str
    dataset: str
    classes: list[str]
    max_images: int | None
    root: Path
    sam_overrides: dict = field(default_factory=dict)
    precision: str = "float32"  # SAM's image encoder and CLIP's: float32, bfloat16 or float16

    @property
    def is_smoke(self) -> bool:
        return self.profile == "smoke"

    @property
    def output_dir(self) -> Path:
        return self.root / "outputs" / self.profile

    @property
    def checkpoint_dir(self) -> Path:
        if os.environ.get("SAMCLIP_CHECKPOINT_DIR"):
            return Path(os.environ["SAMCLIP_CHECKPOINT_DIR"]).expanduser()
        if self.is_smoke:
            return self.output_dir / "checkpoints"
        return self.root / "checkpoints"

    @property
    def dataset_dir(self) -> Path:
        return self.output_dir / "dataset"

    @property
    def cache_dir(self) -> Path:
        return self.output_dir / "cache"

    @property
    def figure_dir(self) -> Path:
        return self.output_dir / "figures"

    def title(self, text: str) -> str:
        """Figure title; smoke runs are labelled so nobody mistakes them for results."""
        return f"[{SMOKE_TAG}]\n{text}" if self.is_smoke else text


def _env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    return [part.strip() for part in value.split(",") if part.strip()] if value else default


def load_config() -> RunConfig:
    """Read the run's settings from ``SAMCLIP_*`` environment variables (see README)."""
    profile = os.environ.get(PROFILE_ENV, "full").strip().lower()
    if profile not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={profile!r} is not a profile; use one of {PROFILES}.")
    device = choose_device(os.environ.get("SAMCLIP_DEVICE", "auto"))
    smoke = profile == "smoke"
    max_images = os.environ.get("SAMCLIP_MAX_IMAGES")
    config = RunConfig(
        profile=profile,
        device=device,
        sam_model="sam_tiny" if smoke else os.environ.get("SAMCLIP_SAM_MODEL", "auto"),
        clip_model="clip_tiny" if smoke else os.environ.get("SAMCLIP_CLIP_MODEL", "ViT-B/32"),
        dataset=os.environ.get("SAMCLIP_DATASET", "demo"),
        classes=_env_list("SAMCLIP_CLASSES", []),
        max_images=int(max_images) if max_images else (4 if smoke else None),
        root=project_root(),
        precision=check_precision(os.environ.get("SAMCLIP_PRECISION", "float32").strip().lower(), device),
    )
    if config.sam_model == "auto":
        config.sam_model = default_sam_model(device)
    if smoke:
        # A random model scores every mask near zero: open the gates so masks come out at all.
        config.sam_overrides = dict(
            points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.9
        )
    return config


def banner(config: RunConfig) -> str:
    """One block of text that every notebook prints first."""
    lines = [
        f"profile={config.profile}  device={config.device}  SAM={config.sam_model}  "
        f"CLIP={config.clip_model}  dataset={config.dataset}  precision={config.precision}"
    ]
    if config.is_smoke:
        rule = "!" * 78
        lines = [rule, f"!! {SMOKE_TAG}", "!! (set SAMCLIP_PROFILE=full or unset it for real runs)", rule, *lines]
    return "\n".join(lines)
