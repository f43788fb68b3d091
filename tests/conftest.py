"""Shared fixtures: the ../shared reference data and checkpoints written by its tool.

Checkpoints are generated (seconds each) rather than stored: `random_sam2_checkpoint.py` fills every
tensor from (seed, key, shape), so the files are identical to those the goldens were computed from.
They are cached for the whole session in a temporary directory.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fixture_paths import CHECKPOINT_TOOL, FIXTURES, IMAGES, SHARED

# Servers started by tests (in-process or as subprocesses) keep their job database and files here,
# never in the user's ~/.local/share/segany.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="segany-tests-")
# Every model runs its encoder eagerly, so that results and timings do not depend on whether this CPU is one
# where `auto` picks OpenVINO (each new random checkpoint would convert for ~10 s and fill ~/.cache);
# tests/model/test_encoder_runtime.py asks for OpenVINO itself, with its own cache folder.
os.environ["SEGANY_ENCODER_RUNTIME"] = "eager"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, saying what is missing, when the shared reference data is not there."""
    missing = [path for path in (FIXTURES / "goldens", IMAGES, CHECKPOINT_TOOL) if not path.exists()]
    if missing:
        raise pytest.UsageError(
            f"the test fixtures are missing: {', '.join(map(str, missing))}. The suite needs the project's shared/ "
            f"folder (goldens, images, tools/random_sam2_checkpoint.py) beside the checkout as ../shared, or "
            f"SEGANY_SHARED=/path/to/shared (looked in {SHARED}); see README.md, 'Tests'.")


def write_random_checkpoint(variant: str, out: Path) -> Path:
    """Write `variant`'s deterministic random checkpoint (seed 0) with the shared tool."""
    subprocess.run([sys.executable, str(CHECKPOINT_TOOL), variant, str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """`make_checkpoint(variant) -> Path`, each variant written once per session."""
    folder = tmp_path_factory.mktemp("checkpoints")
    made: dict[str, Path] = {}

    def make(variant: str) -> Path:
        if variant not in made:
            made[variant] = write_random_checkpoint(variant, folder / f"{variant}.pt")
        return made[variant]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(make_checkpoint) -> Path:
    return make_checkpoint("sam2.1_hiera_tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    import torch

    import segany

    return segany.load_model("sam2.1_hiera_tiny", checkpoint=tiny_checkpoint, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_predictor(tiny_model):
    import segany

    return segany.Predictor(tiny_model)


@pytest.fixture(scope="session")
def image_paths() -> dict[str, Path]:
    return {p.name: p for p in sorted(IMAGES.glob("*.png"))}


@pytest.fixture(scope="session")
def chelsea_rgb(image_paths):
    """chelsea.png (300 x 451) decoded once for the session."""
    from segany.io.images import load_image

    return load_image(image_paths["chelsea.png"])


@pytest.fixture(scope="session")
def chelsea_embedding(tiny_predictor, chelsea_rgb):
    """The float32 tiny model's embedding of chelsea.png, computed once and shared (embeddings are immutable)."""
    return tiny_predictor.embed(chelsea_rgb)
