"""``python -m gkp ...``: the ``gkp`` command (``torchrun -m gkp run ...`` starts a run of several processes)."""

from gkp.application.cli import main

raise SystemExit(main())
