"""Where the shared reference data lives (../shared beside the checkout, or $SEGANY_SHARED).

A module of its own because several folders have a `conftest.py`, so `from conftest import ...` would
depend on which one pytest imported last.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGANY_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
GOLDENS = FIXTURES / "goldens"
IMAGES = FIXTURES / "images"
CHECKPOINT_TOOL = SHARED / "tools" / "random_sam2_checkpoint.py"
