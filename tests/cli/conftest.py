"""Fixtures of the command-line tests: small images, and one batch run interrupted twice then finished.

The tiny model embeds an image in seconds (much more on a loaded 2-core machine), so tests share runs
through session fixtures and keep images few and small.
"""
from __future__ import annotations

import json
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from segany_cli_helpers import (
    FAST_AUTO, IMAGES, MODEL_FLAGS, interrupt_after, journal_lines, run_segany, start_segany,
)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Three small photos (one in a subfolder), a corrupt JPEG and a non-image file."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "sub").mkdir()
    Image.open(IMAGES / "chelsea.png").convert("RGB").resize((96, 64)).save(folder / "a_chelsea.jpg", quality=95)
    Image.open(IMAGES / "coffee.png").convert("RGB").resize((90, 60)).save(folder / "c_coffee.png")
    Image.open(IMAGES / "astronaut.png").convert("RGB").resize((64, 64)).save(folder / "sub" / "d_astronaut.png")
    (folder / "b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"truncated jpeg" * 3)
    (folder / "notes.txt").write_text("not an image")
    return folder


@dataclass
class ResumedRun:
    """The three runs of one batch: stopped by Ctrl-C, killed, then finished."""

    out: Path
    first: subprocess.CompletedProcess  # SIGINT after one image
    after_first: dict[str, Any]  # the COCO file as the interrupted run left it
    killed_journal: list[dict[str, Any]]  # journal left by the SIGKILLed second run
    last: subprocess.CompletedProcess  # the run that finished
    final: dict[str, Any]


@pytest.fixture(scope="session")
def resumed_run(tmp_path_factory, image_folder, tiny_checkpoint) -> ResumedRun:
    out = tmp_path_factory.mktemp("resume") / "annotations.json"
    args = ["batch", image_folder, "--out", out, "--checkpoint", tiny_checkpoint, *MODEL_FLAGS, *FAST_AUTO]

    first = start_segany(*args, "--no-progress")
    interrupt_after(first, out, images_done=1, sig=signal.SIGINT)
    stdout, stderr = first.communicate(timeout=300)
    first_result = subprocess.CompletedProcess(first.args, first.returncode, stdout, stderr)
    after_first = json.loads(out.read_text())

    second = start_segany(*args, "--no-progress")
    interrupt_after(second, out, images_done=1, sig=signal.SIGKILL)
    second.communicate(timeout=300)
    killed_journal = journal_lines(out)

    last = run_segany(*args, "--progress")
    return ResumedRun(out, first_result, after_first, killed_journal, last, json.loads(out.read_text()))
