"""``python -m benchmarks``: see :func:`benchmarks.cli.main`."""

import sys

from .cli import main

sys.exit(main())
