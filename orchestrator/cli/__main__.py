"""``python -m orchestrator.cli``: the same command as ``unlearn-audit``."""

import sys

from orchestrator.cli.main import main

sys.exit(main())
