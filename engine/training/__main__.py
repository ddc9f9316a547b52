"""``python -m gagavatar.engine.training``: see :mod:`.cli`."""
from .cli import main

raise SystemExit(main())
