"""Many images on a Ray cluster: one SAM + CLIP per worker, results in the shared cache (``driver``;
the worker side is ``worker``). ``python -m helpers.distributed`` runs the prepared dataset."""

from .driver import connect, process_dataset_on_ray
from .worker import DistributedResults, Failure, ModelSpec, RunStats, image_items, peak_rss_mb

__all__ = [
    "DistributedResults",
    "Failure",
    "ModelSpec",
    "RunStats",
    "connect",
    "image_items",
    "peak_rss_mb",
    "process_dataset_on_ray",
]
