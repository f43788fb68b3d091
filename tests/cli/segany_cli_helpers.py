"""Helpers for the command-line tests: the installed `segany` console script and interrupting runs.

Every command runs as a real subprocess of the console script installed in the venv, with the tiny model's
deterministic random checkpoint. The tiny model embeds an image in seconds (much more on a loaded 2-core
machine), so tests share runs through session fixtures and keep images few and small.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


SHARED = Path(os.environ.get("SEGANY_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
IMAGES = SHARED / "fixtures" / "images"
# Automatic masks that keep something even with random weights, on a grid small enough to decode fast.
FAST_AUTO = ["--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
# One thread: results are bit-identical between runs and with Ray workers (which get one CPU each here).
MODEL_FLAGS = ["--dtype", "float32", "--device", "cpu", "--threads", "1"]


def segany_command() -> list[str]:
    """The console script installed next to this interpreter (the venv's `segany`), else `python -m segany`."""
    script = Path(sys.executable).with_name("segany")
    if script.is_file():
        return [str(script)]
    found = shutil.which("segany")
    return [found] if found else [sys.executable, "-m", "segany"]


def run_segany(*args: Any, timeout: float = 600, cwd: Path | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `segany ARGS...` to completion; stdout and stderr captured as text."""
    return subprocess.run([*segany_command(), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


def start_segany(*args: Any, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([*segany_command(), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd)


def journal_lines(out: Path) -> list[dict[str, Any]]:
    journal = out.with_name(out.name + ".journal")
    if not journal.exists():
        return []
    entries = []
    for line in journal.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            pass  # a line being written right now
    return entries


def interrupt_after(process: subprocess.Popen, out: Path, images_done: int, sig: int, timeout: float = 600) -> None:
    """Send `sig` to a running batch as soon as its journal holds `images_done` finished images."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum("image" in entry for entry in journal_lines(out)) >= images_done:
            process.send_signal(sig)
            return
        if process.poll() is not None:
            raise AssertionError(f"batch ended before it could be interrupted: {process.communicate()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("batch made no progress")


GOOD_IMAGES = ("a_chelsea.jpg", "c_coffee.png", "sub/d_astronaut.png")
BROKEN_IMAGE = "b_broken.jpg"


def build_tiny_owlv2(folder: Path) -> Path:
    """A randomly initialised OWLv2 small enough to build in a second, with a lowercase-letters CLIP vocabulary."""
    import pytest

    transformers = pytest.importorskip("transformers")
    import torch
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz."
    tokens = [*letters, *(c + "</w>" for c in letters), "ca", "cat</w>", "mu", "mug</w>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\nm u\nmu g</w>\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    processor = transformers.Owlv2Processor(
        image_processor=Owlv2ImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    end = vocab["<|endoftext|>"]
    config = transformers.Owlv2Config(
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": end - 1,
                     "eos_token_id": end, "pad_token_id": end},
        vision_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16},
        projection_dim=16,
    )
    torch.manual_seed(1)
    transformers.Owlv2ForObjectDetection(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
