"""Parity with the official SAM2VideoPredictor on the scripted sessions of video_manifest.json (float32).

Each video's script (points, box, mask, corrections, forward and reverse propagation) is replayed in one
session and every output is compared with the stored logits and object scores. The replay costs one
memory-attention pass per object and frame (seconds each on a small CPU), so by default each script is
replayed up to its first correction with propagation cut to QUICK_FRAMES frames; SEGANY_VIDEO_PARITY=full
replays everything (a few minutes per video on 2 cores).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import segany
from fixture_paths import GOLDENS
from video_support import golden_key, replay_script, video_manifest, video_model

LOGITS_ATOL = 0.05  # tolerances stated in ../shared/fixtures/README.md ("Video goldens")
# The tracker binarises each output and stores its memory in bfloat16, as the official one does, so a last-bit
# float32 difference can move a later frame's logits around one low-res pixel (see `fused.plain`), and the
# kernels behind the same ops sum in another order on another CPU. Seen on a 2-core AMD EPYC: 2 pixels of one
# frame at 0.054, while every other logit of the script stayed within 0.004 (the goldens' float16 storage).
# So a few pixels of an output (OUTLIER_SHARE) may pass LOGITS_ATOL, up to OUTLIER_ATOL; the signs must still agree.
OUTLIER_SHARE = 1e-4
OUTLIER_ATOL = 0.1
LOGITS_CLIP = 32.0
SIGN_AGREEMENT = 0.999
SCORE_ATOL = 0.01

FULL = os.environ.get("SEGANY_VIDEO_PARITY", "").lower() == "full"
QUICK_FRAMES = 5  # frames 0..4: enough for each script's first correction (frame 4 / 3) and its mask (frame 2)
# How far the quick replay goes: (steps, frames per propagation). The 2.0 script only checks its first pass.
QUICK = {"pan_astronaut": (5, QUICK_FRAMES), "pan_coffee": (3, 3)}

VIDEOS = video_manifest()


def _compare(where: str, result, ref_logits: np.ndarray, obj_ids: list[int], failures: list[str]) -> None:
    if list(result.obj_ids) != obj_ids:
        failures.append(f"{where}: objects {result.obj_ids} != {obj_ids}")
        return
    ours = np.clip(result.logits, -LOGITS_CLIP, LOGITS_CLIP)
    ref = np.clip(ref_logits.astype(np.float32), -LOGITS_CLIP, LOGITS_CLIP)
    if ours.shape != ref.shape:
        failures.append(f"{where}: shape {ours.shape} != {ref.shape}")
        return
    diff = np.abs(ours - ref)
    outliers = int((diff > LOGITS_ATOL).sum())
    if outliers > OUTLIER_SHARE * diff.size or diff.max() > OUTLIER_ATOL:
        failures.append(f"{where}: logits differ by up to {diff.max():.4f} ({outliers} beyond {LOGITS_ATOL})")
    for i, obj in enumerate(obj_ids):
        agreement = float(np.mean((ours[i] > 0) == (ref[i] > 0)))
        if agreement < SIGN_AGREEMENT:
            failures.append(f"{where} object {obj}: signs agree on {agreement:.5f} of pixels")


def _replay(name: str, spec: dict) -> tuple[list[str], int]:
    """Run the script; returns (failures, outputs compared)."""
    npz = np.load(GOLDENS / spec["arrays"])
    steps, frames_cap = (len(spec["steps"]), None) if FULL else QUICK[name]
    # Every frame's features stay cached (the clips are a few frames): the replay embeds each frame once.
    tracker = segany.VideoPredictor(video_model(spec["variant"]), feature_cache=spec["frames"])
    session = tracker.start(GOLDENS / spec["frames_dir"])
    failures: list[str] = []
    compared = 0
    seen: dict[int, list[int]] = {}  # propagate step -> frames it yielded
    for k, step, result in replay_script(session, spec, npz, steps, frames_cap):
        f = result.index
        if step["op"] == "propagate":
            seen.setdefault(k, []).append(f)
            where = f"step{k} {step['name']} frame {f}"
            for i, obj in enumerate(result.obj_ids):
                ref = step["object_score_logits"][f"{obj}:{f}"]
                if abs(float(result.object_scores[i]) - ref) > SCORE_ATOL:
                    failures.append(f"step{k} frame {f} object {obj}: score {result.object_scores[i]:.4f} != {ref:.4f}")
        else:
            assert f == step["out_frame"]
            where = f"step{k} {step['op']}"
        _compare(where, result, npz[golden_key(k, step, result)], step["out_obj_ids"], failures)
        compared += 1
    for k, step in enumerate(spec["steps"][:steps]):
        if step["op"] == "propagate":
            expected = step["out_frames"][: frames_cap or None]
            if seen.get(k, []) != expected:
                failures.append(f"step{k}: yielded frames {seen.get(k, [])}, expected {expected}")
    return failures, compared


@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_session_matches_official(name):
    failures, compared = _replay(name, VIDEOS[name])
    assert compared > 0
    assert not failures, f"{len(failures)} of the outputs differ:\n" + "\n".join(failures)
