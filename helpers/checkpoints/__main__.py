"""``python -m helpers.checkpoints``: download the run's checkpoints, or ``--verify`` a folder."""

from .cli import main

raise SystemExit(main())
