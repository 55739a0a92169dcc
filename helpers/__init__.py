"""Text-prompted segmentation with SAM + CLIP: the logic behind the notebooks."""

import warnings

# openai-clip 1.0.1 imports pkg_resources (hence the setuptools<82 pin); its deprecation
# notice would open every notebook, and says nothing the user can act on.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

__version__ = "0.1.0"
