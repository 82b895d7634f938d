"""python -m bprop: the same as the bprop console script."""

import sys

from bprop.cli import main

sys.exit(main())
