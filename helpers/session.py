"""What a notebook needs in one call: the run's settings, its checkpoints, dataset and pipeline.

``open_run()`` replaces the set-up every notebook used to repeat. SAM is handed to the
pipeline unloaded (``models.SamSource``): it is built only when an image misses the cache, so
notebooks 03 and 04 never load it when notebook 02 has run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .checkpoints.ensure import ensure_checkpoint
from .config import DEMO_VOCABULARY, RunConfig, load_config
from .data import Dataset, dataset_request, load_prepared
from .demo.models import DEMO_CLIP_FILE, DEMO_SAM_FILE, demo_weight_path
from .evaluation import classes_to_evaluate
from .models.loading import LoadedClip, LoadedSam, SamSource, load_clip, load_sam
from .models.tiny import write_tiny_checkpoints
from .pipeline import Pipeline


def checkpoint_paths(config: RunConfig, progress: bool = True) -> dict[str, Path]:
    """Verified checkpoint files for the run: found, downloaded (full), built (smoke), or the demo
    weights shipped in the package, checked against their registered sha256 (demo; no download)."""
    if config.is_smoke or config.is_demo:  # unless a file of your own is named (a fine-tuned CLIP)
        own = {"sam": config.sam_checkpoint, "clip": config.clip_checkpoint}
        for family, path in own.items():
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"SAMCLIP_{family.upper()}_CHECKPOINT={path} is not a file; fix or unset it.")
        if config.is_smoke:
            paths = write_tiny_checkpoints(config.checkpoint_dir)
        else:
            files = {"sam": DEMO_SAM_FILE, "clip": DEMO_CLIP_FILE}  # each checked against DEMO_SHA256
            paths = {f: demo_weight_path(name, config.checkpoint_dir) for f, name in files.items() if not own[f]}
        return {family: own[family] or paths[family] for family in own}
    common = dict(mirrors=config.mirrors, drive_cache=config.drive_cache, progress=progress)
    return {
        "sam": ensure_checkpoint(config.sam_model, config.checkpoint_dir, local_path=config.sam_checkpoint, **common),
        "clip": ensure_checkpoint(
            config.clip_model, config.checkpoint_dir, local_path=config.clip_checkpoint, **common
        ),
    }


def sam_source(config: RunConfig, paths: dict[str, Path]) -> SamSource:
    """The run's SAM, not loaded yet."""
    return SamSource(config.sam_model, paths["sam"], config.device)


def load_clip_for(config: RunConfig, paths: dict[str, Path]) -> LoadedClip:
    """The run's CLIP, loaded on the run's device (the shipped demo CLIP knows its few words: ``vocabulary``)."""
    clip = load_clip(paths["clip"], config.device, name=f"{config.clip_model}:{paths['clip'].name}")
    if config.is_demo and config.clip_checkpoint is None:
        clip.vocabulary = DEMO_VOCABULARY
    return clip


def load_models(config: RunConfig) -> tuple[LoadedSam, LoadedClip]:
    """SAM and CLIP for the run's profile, loaded on the run's device."""
    paths = checkpoint_paths(config)
    return load_sam(config.sam_model, paths["sam"], config.device), load_clip_for(config, paths)


@dataclass
class Run:
    """The run's settings, its prepared dataset, a pipeline on the run's cache, and the classes
    to evaluate (``absent``: the dataset's classes with no pixel in any image, left out)."""

    config: RunConfig
    dataset: Dataset
    pipeline: Pipeline
    classes: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)

    @property
    def text(self):
        """The text encoder (prompt embeddings, computed once per name)."""
        return self.pipeline.text


def open_run(config: RunConfig | None = None) -> Run:
    """Settings (``load_config()`` when not given), the dataset notebook 01 prepared (checked to
    be the one these settings ask for), and a pipeline with CLIP loaded and SAM loaded on demand."""
    config = config or load_config()
    dataset = load_prepared(config.dataset_dir, expected=dataset_request(config))
    paths = checkpoint_paths(config)
    pipeline = Pipeline(sam_source(config, paths), load_clip_for(config, paths), config.pipeline, config.cache_dir)
    classes, absent = classes_to_evaluate(dataset, config.classes)
    return Run(config, dataset, pipeline, classes, absent)


def run_record(run: Run, started: str, **measures) -> dict:
    """What tells this run apart from others: profile, dataset, device, models with the sha256 of
    their weights, settings, start time, plus ``measures`` (saved by ``runs.save_results``)."""
    config, pipe = run.config, run.pipeline
    return {
        "profile": config.profile,
        "started": started,
        "device": config.device,
        "dataset": {
            "name": run.dataset.name,
            "kind": config.dataset,
            "path": str(config.data_path) if config.data_path else None,
            "images": len(run.dataset),
            "classes_evaluated": run.classes,
            "classes_absent": run.absent,
            "skipped": len(run.dataset.skipped),
            **({"seed": config.demo_seed} if config.demo_seed and config.dataset == "demo" else {}),  # generated images
        },
        "models": {
            "sam": {"name": config.sam_model, "weights": pipe.sam.identity},
            "clip": {"name": config.clip_model, "weights": pipe.clip.identity},
        },
        "pipeline": config.pipeline,
        "selection": config.selection,
        **measures,
    }
