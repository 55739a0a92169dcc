"""Moved to ``helpers.models.tiny``; this path stays so that old imports keep working."""

import sys

from .models import tiny as _moved

sys.modules[__name__] = _moved
