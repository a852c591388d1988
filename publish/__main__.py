"""`python -m publish render|new ...`: the fallback entry when the `lab` command is not installed."""

import sys

from publish.cli import main

sys.exit(main())
