"""The memory bank: what a frame attends to (official `_prepare_memory_conditioned_features`) and what is kept."""
from __future__ import annotations

import pytest
import torch

from segany.model.variants import VIDEO_2_0, VIDEO_2_1
from segany.predict.video.memory import FrameOutput, ObjectTrack, select_closest_cond_frames


def _out(frame: int) -> FrameOutput:
    """An output whose tensors carry the frame index, so the test can tell which frame was picked."""
    return FrameOutput(torch.full((1, 1, 4, 4), float(frame)), torch.full((1, 256), float(frame)), torch.ones(1, 1),
                       torch.full((1, 64, 2, 2), float(frame)))


def _track(cond: list[int], recent: list[int], capacity: int | None = 16) -> ObjectTrack:
    track = ObjectTrack(capacity)
    for t in cond:
        track.cond[t] = _out(t)
    for t in recent:
        track.keep_recent(t, _out(t))
    return track


def _frames(pairs) -> list[tuple[int, int]]:
    return [(key, int(tensor.flatten()[0])) for key, tensor in pairs]


def test_forward_frame_attends_to_cond_frames_and_six_previous():
    track = _track(cond=[0], recent=list(range(1, 20)), capacity=None)
    ctx = track.context(20, reverse=False, num_frames=100, spec=VIDEO_2_1)
    # (frames back, frame): the conditioning frame first, then frames 14..19, oldest first.
    assert _frames(ctx.memories) == [(0, 0), (6, 14), (5, 15), (4, 16), (3, 17), (2, 18), (1, 19)]
    # Pointers: the conditioning frame at signed distance 20, then the 15 previous frames.
    assert _frames(ctx.pointers) == [(20, 0)] + [(d, 20 - d) for d in range(1, 16)]
    assert ctx.max_ptr_distance == 15


def test_reverse_frame_looks_forward_and_only_at_past_pointers():
    track = _track(cond=[0, 30], recent=[21, 22, 23, 24], capacity=None)
    ctx = track.context(20, reverse=True, num_frames=31, spec=VIDEO_2_1)
    assert _frames(ctx.memories) == [(0, 0), (0, 30), (4, 24), (3, 23), (2, 22), (1, 21)]
    # Only conditioning frames "in the past" of a reverse pass (t >= 20) give pointers; distances are signed
    # along the tracking direction, so frame 30 is 10 frames "back".
    assert _frames(ctx.pointers) == [(10, 30), (1, 21), (2, 22), (3, 23), (4, 24)]


def test_short_video_normalises_pointer_distances_by_its_length():
    track = _track(cond=[0], recent=[1, 2])
    ctx = track.context(3, reverse=False, num_frames=5, spec=VIDEO_2_0)
    assert ctx.max_ptr_distance == 4  # min(num_frames, 16) - 1
    assert _frames(ctx.pointers) == [(3, 0), (1, 2), (2, 1)]  # 2.0 uses unsigned distances


def test_recent_outputs_are_bounded_and_rewritten_frames_move_to_the_end():
    track = _track(cond=[0], recent=list(range(1, 21)), capacity=16)
    assert list(track.recent) == list(range(5, 21))
    track.keep_recent(7, _out(7))  # a corrected frame is the newest again
    track.keep_recent(21, _out(21))
    assert list(track.recent)[-2:] == [7, 21] and 5 not in track.recent and len(track.recent) == 16
    assert track.nbytes == sum(o.nbytes for o in [*track.cond.values(), *track.recent.values()])


def test_output_lookup_prefers_pending_then_cond_then_recent():
    track = _track(cond=[3], recent=[4])
    pending = _out(99)
    track.pending[False][4] = pending
    assert track.output_at(4, is_cond=False) is pending
    assert track.output_at(4, is_cond=True) is track.recent[4]
    assert track.output_at(3, is_cond=False) is track.cond[3]
    assert track.output_at(5, is_cond=False) is None


@pytest.mark.parametrize("frame,expected", [(10, {8, 12}), (0, {0, 4}), (13, {12, 8})])
def test_select_closest_cond_frames(frame, expected):
    cond = {t: _out(t) for t in (0, 4, 8, 12)}
    selected, unselected = select_closest_cond_frames(frame, cond, 2)
    assert set(selected) == expected and set(unselected) == set(cond) - expected
    assert select_closest_cond_frames(frame, cond, None) == (cond, {})
