"""`python -m tests.bench`: see tests/bench/cli.py and docs/performance.md."""

import sys

from tests.bench.cli import main

sys.exit(main())
