"""The fast automatic mask generator: SAM's ``SamAutomaticMaskGenerator`` with the same masks, in
bounded memory (``generator``), built from a batched prompt decoder, exact gate statistics and an allocator policy."""

from .generator import ENGINE_VERSION, GateCounts, check_rgb_image, generate_mask_set, generate_mask_set_with_counts

__all__ = ["ENGINE_VERSION", "GateCounts", "check_rgb_image", "generate_mask_set", "generate_mask_set_with_counts"]
