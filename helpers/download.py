"""Moved to ``helpers.checkpoints.download``; this path stays so that old imports keep working."""

import sys

from .checkpoints import download as _moved

sys.modules[__name__] = _moved
