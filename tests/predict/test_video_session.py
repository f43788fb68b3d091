"""The tracking session API: prompts, propagation, objects added later, remove/reset, errors, frame sources.

Model runs cost seconds per frame on a small CPU, so one short clip (4 frames of 64x48) is tracked a few
times; parity with the official predictor is tested in test_video_parity.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import segany
from segany.errors import InvalidInput, InvalidPrompt
from video_support import pan_frames, video_checkpoint, video_model, write_folder, write_mp4

FRAMES = pan_frames(4, size_wh=(64, 48), step_xy=(6, 4))
CLICK = [[30.0, 20.0]]


@pytest.fixture(scope="module")
def tracker():
    return segany.VideoPredictor(video_model(), feature_cache=len(FRAMES))


@pytest.fixture(scope="module")
def tracked(tracker, tmp_path_factory):
    """A session on an mp4: object 1 clicked on frame 0, then tracked through all frames."""
    path = write_mp4(tmp_path_factory.mktemp("clip") / "clip.mp4", FRAMES)
    session = tracker.start(path)
    first = session.add_points(0, 1, CLICK, [1])
    results = list(session.propagate())
    return session, first, results


def test_prompt_result_is_every_object_at_video_resolution(tracked):
    _, first, _ = tracked
    assert first.index == 0 and first.obj_ids == (1,)
    assert first.logits.shape == (1, 48, 64) and first.logits.dtype == np.float32
    assert first.masks.dtype == bool and first.object_scores.shape == (1,)
    assert first.to_dict()[1].shape == (48, 64)


def test_propagation_streams_every_frame_once(tracked):
    session, first, results = tracked
    assert [r.index for r in results] == [0, 1, 2, 3]
    # The prompted frame's output is the prompt's (a conditioning frame is not re-decoded).
    np.testing.assert_array_equal(results[0].logits, first.logits)
    assert all(r.obj_ids == (1,) for r in results)
    assert session.num_frames == 4


def test_object_added_after_tracking_started_and_corrections(tracked):
    session, _, results = tracked
    # A new object on frame 2: the result carries object 1's tracked output there unchanged.
    added = session.add_box(2, 7, [5, 5, 40, 30])
    assert added.obj_ids == (1, 7)
    np.testing.assert_allclose(added.logits[0], results[2].logits[0], atol=1e-5)
    # A correction of object 1 on a tracked frame uses its memories: object 7 is carried over.
    corrected = session.add_points(3, 1, [[10.0, 10.0]], [0], clear=False)
    assert corrected.obj_ids == (1, 7) and (corrected.logits[1] == -1024).all()  # 7 not tracked on frame 3 yet
    back = list(session.propagate(start=3, reverse=True, max_frames=2))
    assert [r.index for r in back] == [3, 2]
    assert back[1].obj_ids == (1, 7)
    np.testing.assert_array_equal(back[1].logits[1], added.logits[1])  # frame 2 is object 7's prompt
    # Removing object 1 re-reports the frames it had prompts on, for the objects left.
    updated = session.remove_object(1)
    assert [r.index for r in updated] == [0, 3] and all(r.obj_ids == (7,) for r in updated)
    with pytest.raises(InvalidPrompt, match="unknown object id 1") as err:
        session.remove_object(1)
    assert err.value.field == "obj_id"
    assert session.remove_object(7) == [] and session.obj_ids == ()
    with pytest.raises(InvalidPrompt, match="no object has a prompt"):
        next(session.propagate())


def test_bounded_state(tracked):
    session, _, _ = tracked
    # 4 frames of features (the cache size here) plus a few frames of memories: tens of MB, not the video.
    assert session.state_nbytes < 120 * 2**20


@pytest.mark.parametrize("call,field", [
    (lambda s: s.add_points(4, 1, CLICK, [1]), "frame"),
    (lambda s: s.add_points(-1, 1, CLICK, [1]), "frame"),
    (lambda s: s.add_points(0, "a", CLICK, [1]), "obj_id"),
    (lambda s: s.add_points(0, 1, [30, 20], [1]), "points"),
    (lambda s: s.add_points(0, 1, CLICK, [1, 0]), "labels"),
    (lambda s: s.add_points(0, 1, CLICK, [2]), "labels"),
    (lambda s: s.add_points(0, 1, CLICK, None), "labels"),
    (lambda s: s.add_points(0, 1), "points"),
    (lambda s: s.add_box(0, 1, [1, 2, 3]), "box"),
    (lambda s: s.add_points(0, 1, box=[1, 2, 3, 4], clear=False), "box"),
    (lambda s: s.add_mask(0, 1, np.zeros((2, 48, 64), bool)), "mask"),
    (lambda s: s.remove_object(5), "obj_id"),
    (lambda s: s.clear_prompts(0, 5), "obj_id"),
    (lambda s: s.propagate(), "obj_id"),
])
def test_invalid_requests_name_the_field(tracker, call, field):
    session = tracker.start(FRAMES)  # decodes frame 0 only; none of these runs the model
    with pytest.raises(InvalidPrompt) as err:
        call(session)
    assert err.value.field == field
    assert isinstance(err.value, ValueError)
    assert session.obj_ids == ()


def test_not_a_video_and_not_a_video_model(tracker, tmp_path):
    (tmp_path / "clip.mp4").write_text("hello")
    with pytest.raises(InvalidInput, match="not a readable video"):
        tracker.start(tmp_path / "clip.mp4")
    with pytest.raises(InvalidInput, match="load_video_model") as err:
        segany.VideoPredictor(video_model().image)
    assert err.value.field == "model"


def test_corrupt_frame_in_the_middle_fails_when_reached(tracker, tmp_path):
    folder = write_folder(tmp_path / "frames", FRAMES[:3])
    (folder / "00002.png").write_bytes(b"garbage")
    session = tracker.start(folder)
    with pytest.raises(InvalidInput, match="frame 2") as err:
        session.add_points(2, 1, CLICK, [1])
    assert err.value.field == "video"
    assert session.obj_ids == ()  # nothing was recorded for the failed prompt


def test_folder_and_iterable_sources_give_the_same_masks(tracker, tmp_path):
    folder = write_folder(tmp_path / "frames", FRAMES)
    from_folder = tracker.start(folder).add_points(1, 3, CLICK, [1])
    session = tracker.start(iter(FRAMES))
    from_iter = session.add_points(1, 3, CLICK, [1])
    np.testing.assert_allclose(from_folder.logits, from_iter.logits, atol=1e-5)
    assert from_iter.logits.shape == (1, 48, 64)
    # A mask prompt is taken as the output: +10 inside, -10 outside (resized back to the video).
    mask = np.zeros((48, 64), bool)
    mask[10:30, 20:50] = True
    result = session.add_mask(1, 4, mask)
    assert result.obj_ids == (3, 4) and float(result.object_scores[1]) == 10.0
    assert (result.masks[1] == mask).mean() > 0.98


def test_video_weights_load_strictly(tmp_path):
    official = torch.load(video_checkpoint("sam2.1_hiera_tiny"), map_location="cpu", weights_only=True)["model"]
    del official["memory_attention.layers.0.linear1.weight"]
    official["memory_encoder.extra"] = torch.zeros(1)
    broken = tmp_path / "broken.pt"
    torch.save({"model": official}, broken)
    with pytest.raises(segany.CheckpointError, match="1 missing keys: memory_attention.layers.0.linear1.weight.*"
                                                     "1 unexpected keys: memory_encoder.extra"):
        segany.load_video_model("sam2.1_hiera_tiny", checkpoint=broken, device="cpu", dtype=torch.float32)
    # The image path still ignores the video keys of the same file.
    model = segany.load_model("sam2.1_hiera_tiny", checkpoint=video_checkpoint("sam2.1_hiera_tiny"), device="cpu",
                              dtype=torch.float32)
    assert isinstance(model, segany.SAM2ImageModel)
