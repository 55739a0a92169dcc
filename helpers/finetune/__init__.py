"""Fine-tuning CLIP on your own classes (the SLIP experiment, notebook 05): class-folder data, the
contrastive loss, settings, the training loop (``finetune_clip``) and before/after measures."""

from .data import (
    FinetuneDataError,
    check_items,
    image_batch,
    keep_splittable,
    load_finetune_folders,
    region_cutouts,
    rename_classes,
    split_items,
)
from .evaluate import (
    compare_before_after,
    history_table,
    linear_probe_accuracy,
    live_plot,
    plot_history,
    sam_clip_measures,
    save_history,
    show_batch,
    tile_top1_accuracy,
    zero_shot_accuracy,
)
from .loss import Captions, contrastive_loss
from .run import FinetuneRun, FinetuneWarning, finetune_clip, run_summary, save_finetuned
from .settings import FinetuneSettings, format_lr, select_trainable

__all__ = [
    "Captions",
    "FinetuneDataError",
    "FinetuneRun",
    "FinetuneSettings",
    "FinetuneWarning",
    "check_items",
    "compare_before_after",
    "contrastive_loss",
    "finetune_clip",
    "history_table",
    "format_lr",
    "image_batch",
    "keep_splittable",
    "linear_probe_accuracy",
    "live_plot",
    "load_finetune_folders",
    "plot_history",
    "region_cutouts",
    "rename_classes",
    "sam_clip_measures",
    "run_summary",
    "save_finetuned",
    "save_history",
    "select_trainable",
    "show_batch",
    "split_items",
    "tile_top1_accuracy",
    "zero_shot_accuracy",
]
