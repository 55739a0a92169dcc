"""Moved to ``helpers.demo.models``; this path stays so that old imports keep working."""

import sys

from .demo import models as _moved

sys.modules[__name__] = _moved
