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

from ..checkpoints.download import file_sha256
from ..checkpoints.ensure import CheckpointError, UnknownModelError, open_clip_to_clip_state_dict
from .tiny import DEMO_SAM, TINY_SAM, build_sam_demo, build_sam_tiny

SAM_BUILDERS: dict[str, Callable[..., Sam]] = {**sam_model_registry, TINY_SAM: build_sam_tiny, DEMO_SAM: build_sam_demo}
_SAM_WIDTH_TO_TYPE = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}


def weights_identity(kind: str, path: str | Path) -> str:
    """What names a model in cache keys: its type and the sha256 of its weights file (remembered
    beside the file), so new weights saved under an old name never reuse old results."""
    return f"{kind}:{file_sha256(path)}"


@dataclass
class LoadedSam:
    """A SAM ready to run, with its names for people and for cache keys."""

    model: Sam
    name: str  # the model type and file, for people
    identity: str = ""  # the model type and the sha256 of its weights, for cache keys

    @property
    def device(self) -> torch.device:
        return self.model.device


@dataclass(frozen=True)
class SamSource:
    """A SAM checkpoint not loaded yet: its identity is known without loading (the cache keys
    need only that), and ``load()`` builds it when an image is not in the cache."""

    model_type: str
    checkpoint: Path
    device: str = "cpu"

    @property
    def identity(self) -> str:
        return weights_identity(self.model_type, self.checkpoint)

    def load(self) -> LoadedSam:
        return load_sam(self.model_type, self.checkpoint, self.device)


@dataclass
class LoadedClip:
    """A CLIP ready to run: the model, its image preprocessing, names for people and cache keys."""

    model: CLIP
    preprocess: Callable
    name: str
    device: str
    identity: str = ""  # "clip:" and the sha256 of the weights, for cache keys
    vocabulary: tuple[str, ...] = ()  # the only words it was trained on (the demo CLIP); empty: any text

    def check_prompt(self, prompt: str) -> None:
        """A warning when this CLIP was trained on a few words (``vocabulary``) and ``prompt`` is none of them."""
        if self.vocabulary and prompt.strip().casefold() not in self.vocabulary:
            warnings.warn(
                f"{prompt!r} is not a word this CLIP ({self.name}) was trained on: it knows "
                f"{', '.join(self.vocabulary)} only, so expect no mask or a wrong one. The real CLIP "
                "(SAMCLIP_PROFILE=full) reads any text.",
                stacklevel=3,
            )


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
    return LoadedSam(sam, f"{model_type}:{path.name}", weights_identity(model_type, path))


def is_torchscript_archive(path: Path) -> bool:
    """OpenAI's .pt files are TorchScript archives (a zip with a ``code/`` folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


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
    return LoadedClip(model, preprocess, name or path.name, device, weights_identity("clip", path))
