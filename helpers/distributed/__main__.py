"""``python -m helpers.distributed``: the prepared dataset through Ray into the shared cache."""

from .driver import main

raise SystemExit(main())
