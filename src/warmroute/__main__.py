"""`python -m warmroute …`: the `warmroute` command (how `serve` and the bench start children)."""

from __future__ import annotations

import sys

from warmroute.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
