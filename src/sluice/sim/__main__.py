"""``python -m sluice.sim``: many seeds (see :func:`sluice.sim.command.main`)."""

import sys

from sluice.sim.command import main

sys.exit(main())
