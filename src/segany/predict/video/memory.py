"""One tracked object's prompts and memory bank, and which memories a frame attends to.

The official predictor keeps every frame's outputs for the whole session. Here an object keeps:
- its conditioning frames' outputs (frames it was first prompted on), for good;
- the outputs of the `recent` most recently tracked (or corrected) other frames, oldest evicted first:
  at least the 6 previous memories and 15 previous object pointers a frame attends to, so a pass in
  one direction, and a correction within `recent` frames of where tracking last ran, see exactly what
  the official predictor would;
- which frames it has been tracked on and in which direction (a few bytes a frame), because that
  decides whether a new prompt starts the object or corrects it.
Memories are stored in bfloat16, as the official predictor stores them.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from ...model.variants import VideoSpec


@dataclass
class FrameOutput:
    """One object's output on one frame."""

    pred_masks: torch.Tensor  # (1, 1, 256, 256) float32 low-res logits, small holes filled
    obj_ptr: torch.Tensor  # (1, 256) float32
    object_score: torch.Tensor  # (1, 1) float32 logit
    memory: torch.Tensor | None = None  # (1, mem_dim, 64, 64) bfloat16; None until encoded

    @property
    def nbytes(self) -> int:
        tensors = [self.pred_masks, self.obj_ptr, self.object_score] + ([self.memory] if self.memory is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class MemoryContext:
    """What a frame attends to: memories as (frames back, memory) and pointers as (distance, pointer)."""

    memories: list[tuple[int, torch.Tensor]]
    pointers: list[tuple[int, torch.Tensor]]
    max_ptr_distance: int


class ObjectTrack:
    """Prompts and memory bank of one object (the official per-object slices of the inference state)."""

    def __init__(self, recent: int | None) -> None:
        self.points: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # frame -> (coords (1, N, 2), labels (1, N))
        self.mask_frames: set[int] = set()  # frames with a mask prompt
        # Outputs of prompts not yet merged into the bank (merged when propagation starts), by is_cond.
        self.pending: dict[bool, dict[int, FrameOutput]] = {True: {}, False: {}}
        self.cond: dict[int, FrameOutput] = {}
        self.recent: OrderedDict[int, FrameOutput] = OrderedDict()
        self.tracked: dict[int, bool] = {}  # frame -> tracked in reverse
        self.capacity = recent

    def keep_recent(self, frame: int, out: FrameOutput) -> None:
        """Store a non-conditioning output, evicting the least recently stored beyond capacity."""
        self.recent.pop(frame, None)
        self.recent[frame] = out
        while self.capacity is not None and len(self.recent) > self.capacity:
            self.recent.popitem(last=False)

    def output_at(self, frame: int, is_cond: bool) -> FrameOutput | None:
        """The newest output on `frame`: a pending one of the same kind first, then the bank's."""
        out = self.pending[is_cond].get(frame)
        if out is None:
            out = self.cond.get(frame)
        if out is None:
            out = self.recent.get(frame)
        return out

    @property
    def prompted_frames(self) -> set[int]:
        return set(self.points) | self.mask_frames

    @property
    def nbytes(self) -> int:
        outs = list(self.cond.values()) + list(self.recent.values())
        outs += list(self.pending[True].values()) + list(self.pending[False].values())
        return sum(o.nbytes for o in outs)

    def context(self, frame: int, reverse: bool, num_frames: int, spec: VideoSpec) -> MemoryContext:
        """The memories and object pointers frame `frame` attends to (official `_prepare_memory_conditioned_features`).

        `num_frames` is the video's length, or any number >= max_obj_ptrs_in_encoder when the length is
        not known yet (it only enters through min(num_frames, max_obj_ptrs_in_encoder)).
        """
        selected, unselected = select_closest_cond_frames(frame, self.cond, spec.max_cond_frames_in_attn)
        memories: list[tuple[int, torch.Tensor]] = [(0, out.memory) for out in selected.values()]  # type: ignore[misc]
        stride = spec.memory_temporal_stride
        step = 1 if reverse else -1  # towards the frames tracked before this one
        for back in range(spec.num_maskmem - 1, 0, -1):
            if back == 1:
                prev = frame + step
            elif not reverse:  # every stride-th frame before, counted from the nearest one
                prev = ((frame - 2) // stride) * stride - (back - 2) * stride
            else:
                prev = -(-(frame + 2) // stride) * stride + (back - 2) * stride
            out = self.recent.get(prev) or unselected.get(prev)
            if out is not None:
                memories.append((back, out.memory))  # type: ignore[arg-type]

        max_ptrs = min(num_frames, spec.max_obj_ptrs_in_encoder)
        if spec.only_obj_ptrs_in_the_past_for_eval:
            ptr_cond = {t: o for t, o in selected.items() if (t >= frame if reverse else t <= frame)}
        else:
            ptr_cond = selected
        sign = -1 if reverse else 1
        pointers = [((frame - t) * sign if spec.use_signed_tpos_enc_to_obj_ptrs else abs(frame - t), o.obj_ptr)
                    for t, o in ptr_cond.items()]
        for distance in range(1, max_ptrs):
            t = frame + distance if reverse else frame - distance
            if t < 0 or t >= num_frames:
                break
            out = self.recent.get(t) or unselected.get(t)
            if out is not None:
                pointers.append((distance, out.obj_ptr))
        return MemoryContext(memories, pointers, max(max_ptrs - 1, 1))


def select_closest_cond_frames(
    frame: int, cond: dict[int, FrameOutput], max_count: int | None
) -> tuple[dict[int, FrameOutput], dict[int, FrameOutput]]:
    """(selected, unselected) conditioning frames: all of them when `max_count` is None or not exceeded, else
    the closest before, the closest at/after, then the temporally closest others up to `max_count`."""
    if max_count is None or len(cond) <= max_count:
        return cond, {}
    selected: dict[int, FrameOutput] = {}
    before = max((t for t in cond if t < frame), default=None)
    if before is not None:
        selected[before] = cond[before]
    after = min((t for t in cond if t >= frame), default=None)
    if after is not None:
        selected[after] = cond[after]
    rest = sorted((t for t in cond if t not in selected), key=lambda t: abs(t - frame))
    for t in rest[: max(max_count - len(selected), 0)]:
        selected[t] = cond[t]
    return selected, {t: o for t, o in cond.items() if t not in selected}
