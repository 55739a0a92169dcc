"""Text-prompted segmentation with SAM + CLIP: the logic behind the notebooks."""
__version__ = "0.1.0"
