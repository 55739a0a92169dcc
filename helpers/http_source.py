"""Moved to ``helpers.checkpoints.http_source``; this path stays so that old imports keep working."""

import sys

from .checkpoints import http_source as _moved

sys.modules[__name__] = _moved
