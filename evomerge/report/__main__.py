"""`python -m evomerge.report RUN_DIR [RUN_DIR ...]`."""

import sys

from evomerge.report.summary import main

sys.exit(main())
