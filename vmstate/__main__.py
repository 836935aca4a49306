"""``python -m vmstate``: the command line (see vmstate/cli/)."""

import sys

from vmstate.cli import main

sys.exit(main())
