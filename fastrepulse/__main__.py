"""`python -m fastrepulse generate ...`: the same as the `fastrepulse` command."""

import sys

from fastrepulse.cli import main

sys.exit(main())
