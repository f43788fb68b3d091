"""Shared helpers of the video tests: checkpoints with the video goldens' object-score bias, the video manifest,
synthetic clips (a pan over a fixture photo, like the goldens) and writing them as mp4 or PNG folders.

A plain module (not a conftest) so that tests in several folders import the same functions.
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from fixture_paths import CHECKPOINT_TOOL, GOLDENS, IMAGES

# The video goldens were made with this bias on the object-score head: plain random weights score slightly
# below zero, and every object would be "absent" (README.md, "Video goldens").
OBJECT_SCORE_BIAS = "3.0"
_FOLDER = Path(tempfile.mkdtemp(prefix="segany-video-tests-"))


@functools.lru_cache(maxsize=None)
def video_checkpoint(variant: str) -> Path:
    """`variant`'s random checkpoint (seed 0, biased object scores), written once per test process."""
    out = _FOLDER / f"{variant}.video.pt"
    subprocess.run([sys.executable, str(CHECKPOINT_TOOL), variant, str(out), "--object-score-bias", OBJECT_SCORE_BIAS],
                   check=True, capture_output=True)
    return out


@functools.lru_cache(maxsize=None)
def video_model(variant: str = "sam2.1_hiera_tiny"):
    """The float32 CPU video model on that checkpoint, loaded once per test process (it is read-only)."""
    import torch

    import segany

    return segany.load_video_model(variant, checkpoint=video_checkpoint(variant), device="cpu", dtype=torch.float32)


def video_manifest() -> dict:
    return json.loads((GOLDENS / "video_manifest.json").read_text())["videos"]


def pan_frames(count: int, size_wh: tuple[int, int] = (160, 120), step_xy: tuple[int, int] = (4, 2),
               image: str = "astronaut.png") -> list[np.ndarray]:
    """`count` HxWx3 uint8 frames: frame t is the size_wh window of a fixture photo at t * step_xy."""
    rgb = np.asarray(Image.open(IMAGES / image).convert("RGB"))
    w, h = size_wh
    return [rgb[t * step_xy[1] : t * step_xy[1] + h, t * step_xy[0] : t * step_xy[0] + w].copy() for t in range(count)]


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """Encode frames as H.264 (yuv420p) with PyAV; frame sizes must be even."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_folder(folder: Path, frames: list[np.ndarray], suffix: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(frames):
        Image.fromarray(rgb).save(folder / f"{i:05d}{suffix}")
    return folder


def replay_script(session, spec: dict, npz, steps: int | None = None, frames_cap: int | None = None):
    """Replay a video_manifest.json script on `session`: its first `steps` steps (all when None), each
    propagation cut to `frames_cap` frames. Yields (k, step, FrameResult) for every output, in order; the
    golden logits of each are `npz[golden_key(k, step, result)]`."""
    for k, step in enumerate(spec["steps"][:steps]):
        op = step["op"]
        if op == "propagate":
            for result in session.propagate(start=step.get("start"), reverse=step.get("reverse", False),
                                            max_frames=frames_cap):
                yield k, step, result
        elif op == "points":
            yield k, step, session.add_points(step["frame"], step["obj"], step["points"], step["labels"],
                                              clear=step.get("clear", True))
        elif op == "box":
            yield k, step, session.add_box(step["frame"], step["obj"], step["box"])
        elif op == "mask":
            yield k, step, session.add_mask(step["frame"], step["obj"], npz[f"step{k}_input_mask"])
        else:
            raise ValueError(f"unknown op {op!r} in the video manifest")


def golden_key(k: int, step: dict, result) -> str:
    """The npz key of the official logits (N_obj, H, W) for output `result` of step `k`."""
    return f"step{k}_frame{result.index}_logits" if step["op"] == "propagate" else f"step{k}_logits"
