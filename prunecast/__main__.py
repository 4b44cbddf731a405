"""``python -m prunecast``: the command line, also as torchrun launches it (``torchrun -m prunecast``)."""

import sys

from prunecast.cli import main

sys.exit(main())
