"""Load SAM and CLIP through their own libraries, on any device.

SAM: ``segment_anything.sam_model_registry`` builds the network; the state dict is read with
``map_location`` so a checkpoint saved on a GPU loads on a CPU. CLIP: the original OpenAI
archives go through ``clip.load(path, jit=False)``; plain state dicts (the open_clip copy of the
OpenAI weights, or our tiny test models) go through ``clip.model.build_model``.
"""

from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import clip
import torch
from clip.model import CLIP, build_model
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from .checkpoints import CheckpointError, UnknownModelError, ensure_checkpoint, get_checkpoint
from .config import RunConfig
from .tiny_models import DEMO_SAM, TINY_SAM, build_sam_demo, build_sam_tiny, write_tiny_checkpoints

SAM_BUILDERS: dict[str, Callable[..., Sam]] = {**sam_model_registry, TINY_SAM: build_sam_tiny, DEMO_SAM: build_sam_demo}
_SAM_WIDTH_TO_TYPE = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}


@dataclass
class LoadedSam:
    model: Sam
    name: str  # identifies the weights in cache keys

    @property
    def device(self) -> torch.device:
        return self.model.device


@dataclass
class LoadedClip:
    model: CLIP
    preprocess: Callable
    name: str
    device: str


def load_sam(model_type: str, checkpoint: str | Path, device: str = "cpu") -> LoadedSam:
    """Build ``model_type`` with segment_anything's builder and load ``checkpoint`` into it."""
    if model_type not in SAM_BUILDERS:
        raise UnknownModelError(f"Unknown SAM model type {model_type!r}; choose one of {sorted(SAM_BUILDERS)}.")
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(
            f"SAM checkpoint {path} does not exist. Run notebooks/00_download_checkpoints.ipynb "
            f"or `python -m helpers.checkpoints {model_type}` first."
        )
    sam = SAM_BUILDERS[model_type]()
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        sam.load_state_dict(state)
    except RuntimeError as exc:
        width = state.get("image_encoder.patch_embed.proj.weight", torch.empty(0)).shape[:1]
        guess = _SAM_WIDTH_TO_TYPE.get(width[0]) if width else None
        hint = f" It looks like a {guess} checkpoint." if guess else ""
        raise CheckpointError(
            f"{path.name} does not fit SAM {model_type!r}.{hint} Pass the model type that matches the file."
        ) from exc
    sam.to(device).eval()
    return LoadedSam(sam, f"{model_type}:{path.name}:{path.stat().st_size}")


def is_torchscript_archive(path: Path) -> bool:
    """OpenAI's .pt files are TorchScript archives (a zip with a ``code/`` folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def open_clip_to_clip_state_dict(state: dict) -> dict:
    """Turn an open_clip / timm copy of OpenAI CLIP weights into ``build_model``'s key names.

    The OpenAI models in open_clip keep OpenAI's parameter names; the differences are a
    possible ``state_dict``/``module.`` wrapping and buffers that CLIP rebuilds itself.
    """
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {key.removeprefix("module."): value for key, value in state.items()}
    state = {key: value for key, value in state.items() if not key.endswith("attn_mask")}
    required = ("token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight", "logit_scale")
    missing = [key for key in required if key not in state]
    if missing or not any(key.startswith("visual.") for key in state):
        raise CheckpointError(
            f"Not an OpenAI-CLIP compatible state dict (missing {missing or ['visual.*']}). "
            "Use an OpenAI .pt archive or the open_clip copy of the OpenAI weights."
        )
    return state


def load_clip(checkpoint: str | Path, device: str = "cpu", name: str | None = None) -> LoadedClip:
    """Load CLIP from an OpenAI archive or a plain (open_clip-style) state dict, in float32."""
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(
            f"CLIP checkpoint {path} does not exist. Run notebooks/00_download_checkpoints.ipynb "
            "or `python -m helpers.checkpoints ViT-B/32` first."
        )
    if is_torchscript_archive(path):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning)
            model, preprocess = clip.load(str(path), device=device, jit=False)
    else:
        state = open_clip_to_clip_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        try:
            model = build_model(state)
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{path.name} could not be turned into a CLIP model: {exc}") from exc
        preprocess = clip.clip._transform(model.visual.input_resolution)
    # float32 everywhere, so that CPU and GPU scores agree.
    model = model.float().to(device).eval()
    return LoadedClip(model, preprocess, name or f"{path.name}:{path.stat().st_size}", device)


def checkpoint_paths(config: RunConfig, progress: bool = True) -> dict[str, Path]:
    """Verified checkpoint files for the run: downloaded (full) or built (smoke) when missing."""
    if config.is_smoke:
        return write_tiny_checkpoints(config.checkpoint_dir)
    return {
        "sam": ensure_checkpoint(config.sam_model, config.checkpoint_dir, progress=progress),
        "clip": ensure_checkpoint(config.clip_model, config.checkpoint_dir, progress=progress),
    }


def load_models(config: RunConfig) -> tuple[LoadedSam, LoadedClip]:
    """SAM and CLIP for the run's profile, on the run's device."""
    paths = checkpoint_paths(config)
    sam_type = config.sam_model if config.is_smoke else get_checkpoint(config.sam_model).name
    sam = load_sam(sam_type, paths["sam"], config.device)
    return sam, load_clip(paths["clip"], config.device, name=f"{config.clip_model}:{paths['clip'].name}")
