"""`python -m segany ...`: the same as the `segany` command."""
from __future__ import annotations

import sys

from segany.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
