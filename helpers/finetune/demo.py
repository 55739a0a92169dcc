"""The fine-tuning experiment of the demo profile: classes the demo CLIP has never read.

The demo CLIP learned the shapes under their English names ("circle", ...). Here a user calls
them by German names it never saw (``DEMO_FINETUNE_NAMES``), so zero-shot it is at chance: the
SLIP situation (CLIP and Pokemon names) in a model that trains in seconds. The training pictures
are cut out by their exact masks in the pipeline's region mode (``region_cutouts``), from
generated images of seeds no other part of the project uses. ``DEMO_FINETUNE_SETTINGS`` were
chosen on ``TUNING_SEEDS`` and are reported on ``REPORT_SEEDS`` (benchmarks/bench_finetune_demo.py,
docs/finetuning.md); notebook 05 runs ``DEMO_FINETUNE_SEED``, one of the reported seeds.
"""

from __future__ import annotations

from ..data import Dataset, LabelledImage, make_demo_dataset
from ..regions import RegionSettings
from .data import region_cutouts, rename_classes
from .settings import FinetuneSettings

DEMO_FINETUNE_NAMES = {"circle": "kreis", "square": "quadrat", "triangle": "dreieck", "star": "stern"}
DEMO_FINETUNE_IMAGES = 120  # generated images: about 300 cut-outs, 240 to train on, 60 held out
TUNING_SEEDS = (2601, 2602)  # the settings below were chosen on these ...
REPORT_SEEDS = (2611, 2612, 2613)  # ... and are reported on these
DEMO_FINETUNE_SEED = REPORT_SEEDS[0]  # notebook 05's images, split and shuffling
HELD_OUT_OFFSET = 50  # fresh held-out images of a seed: seed + this (the benchmark's second test set)
# The grid: learning_rate in (3e-4, 1e-3, 3e-3), the whole model, 12 epochs, batch 32, cosine after a 10 % warm-up;
# chosen: the highest mean zero-shot accuracy on cut-outs of fresh images over TUNING_SEEDS (3e-3: 0.949; 1e-3:
# 0.938; 3e-4: 0.912; docs/finetuning.md).
DEMO_FINETUNE_SETTINGS = FinetuneSettings(
    epochs=12,
    batch_size=32,
    learning_rate=3e-3,
    weight_decay=0.0,
    scheduler="cosine",
    warmup_share=0.1,
    trainable="all",
    seed=DEMO_FINETUNE_SEED,
)


def demo_finetune_items(
    images: int = DEMO_FINETUNE_IMAGES,
    seed: int = DEMO_FINETUNE_SEED,
    regions: RegionSettings = RegionSettings(),
    names: dict[str, str] = DEMO_FINETUNE_NAMES,
) -> tuple[list[LabelledImage], list[str]]:
    """Cut-outs of ``images`` generated demo images (``seed``) in the pipeline's region mode,
    labelled by ``names``; returns (items, sorted class names)."""
    items = region_cutouts(make_demo_dataset(images, seed=seed), regions, names=names)
    return items, sorted({item.label for item in items})


def renamed_demo(dataset: Dataset, names: dict[str, str] = DEMO_FINETUNE_NAMES) -> Dataset:
    """A demo dataset under the fine-tuning names, for the mean-IoU rows of the table."""
    return rename_classes(dataset, names)
