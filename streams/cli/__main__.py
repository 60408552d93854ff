"""``python -m streams.cli``: the ``stripe-streams`` command."""

import sys

from streams.cli import main

sys.exit(main())
