"""Moved to ``helpers.demo.train``; ``python -m helpers.train_demo`` and old imports keep working."""

import sys

from .demo import train as _moved

if __name__ == "__main__":
    _moved.main()
sys.modules[__name__] = _moved
