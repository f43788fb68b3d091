"""A tracking session over one video: prompts on any frame, propagation forwards or backwards.

Semantics follow the official `SAM2VideoPredictor` (sam2 1.1.0): each object is tracked on its own; a prompt
on a frame the object has not been tracked on starts it there (a conditioning frame, decoded without
memory); a prompt on a frame it has been tracked on corrects that frame (decoded with its memories and
previous mask, kept as an ordinary frame); prompts are encoded into memory when propagation starts; new
objects may be added at any time. See `memory.py` for what is kept between frames.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from segany.errors import InvalidPrompt
from segany.io.video import FrameSource
from segany.model.prompt_encoder import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT
from segany.model.video import NO_OBJ_SCORE, FrameFeatures, HeadOutput, SAM2VideoModel
from segany.predict.video.memory import FrameOutput, ObjectTrack
from segany.predict.video.postprocess import fill_holes, to_video_size
from segany.predict.video.results import FrameResult
from segany.runtime import release_free_memory


class Session:
    """Made by `VideoPredictor.start`; not thread-safe (one session, one caller at a time)."""

    def __init__(self, model: SAM2VideoModel, frames: FrameSource, *, fill_hole_area: int, recent_frames: int | None,
                 feature_cache: int) -> None:
        self.model = model
        self.frames = frames
        self.fill_hole_area = fill_hole_area
        self.recent_frames = recent_frames
        self._objects: OrderedDict[int, ObjectTrack] = OrderedDict()
        self._features: OrderedDict[int, FrameFeatures] = OrderedDict()
        self._feature_cache = max(1, feature_cache)
        self.size_hw = frames.size_hw  # decodes frame 0: a source that is not a video fails here

    # ---- facts ----------------------------------------------------------------------------------------
    @property
    def obj_ids(self) -> tuple[int, ...]:
        return tuple(self._objects)

    @property
    def num_frames(self) -> int:
        """The video's frame count (for a plain iterable of frames this reads it to the end)."""
        return len(self.frames)

    @property
    def state_nbytes(self) -> int:
        """Bytes held for tracking: memories, pointers, low-res masks and cached frame features."""
        return sum(o.nbytes for o in self._objects.values()) + sum(f.nbytes for f in self._features.values())

    # ---- prompts --------------------------------------------------------------------------------------
    def add_points(self, frame: int, obj_id: int, points: Any = None, labels: Any = None, *, box: Any = None,
                   clear: bool = True, normalize_coords: bool = True) -> FrameResult:
        """Clicks (and optionally a box) for one object on one frame -> every object's mask on that frame.

        points (N, 2) xy with labels (N,) (1 keeps, 0 excludes); box (4,) xyxy. Pixels of the video, or in
        [0, 1] when `normalize_coords` is False. `clear` False adds to the frame's earlier clicks (a box
        needs `clear`: it must come before any click).
        """
        self._check_frame(frame)
        obj_id = _check_obj_id(obj_id)
        coords, point_labels = self._prompt_points(points, labels, box, clear, normalize_coords)
        with torch.inference_mode():
            feats = self._frame_features(frame)  # a frame that cannot be decoded fails before any state changes
        track = self._track(obj_id)
        if not clear and frame in track.points:
            old_coords, old_labels = track.points[frame]
            coords, point_labels = torch.cat([old_coords, coords], 1), torch.cat([old_labels, point_labels], 1)
        track.points[frame] = (coords, point_labels)
        track.mask_frames.discard(frame)
        is_first = frame not in track.tracked
        reverse = False if is_first else track.tracked[frame]
        is_cond = is_first  # the official add_all_frames_to_correct_as_cond=False: corrections stay ordinary
        prev = track.output_at(frame, is_cond)
        mask_input = prev.pred_masks.clamp(-32.0, 32.0) if prev is not None else None
        with torch.inference_mode():
            pix = self.model.no_memory(feats.top) if is_first else self._conditioned(track, feats, frame, reverse)
            multimask = self.model.use_multimask(is_first, coords.shape[1])
            head = self.model.heads(pix, feats.high_res, coords, point_labels, mask_input, multimask)
            track.pending[is_cond][frame] = self._output(head)
            return self._consolidated(frame, is_cond)

    def add_box(self, frame: int, obj_id: int, box: Any, points: Any = None, labels: Any = None, *,
                normalize_coords: bool = True) -> FrameResult:
        """A box (4,) xyxy, with optional clicks, for one object on one frame (replacing its earlier prompts there)."""
        return self.add_points(frame, obj_id, points, labels, box=box, clear=True, normalize_coords=normalize_coords)

    def add_mask(self, frame: int, obj_id: int, mask: Any) -> FrameResult:
        """A mask (H, W) bool (any size; resized to the model frame) for one object -> every object's mask there.

        The mask is taken as that frame's output, as the official predictor does.
        """
        self._check_frame(frame)
        obj_id = _check_obj_id(obj_id)
        mask_t = self._prompt_mask(mask)
        with torch.inference_mode():
            feats = self._frame_features(frame)  # a frame that cannot be decoded fails before any state changes
        track = self._track(obj_id)
        track.mask_frames.add(frame)
        track.points.pop(frame, None)
        is_cond = frame not in track.tracked
        with torch.inference_mode():
            head = self.model.mask_as_output(feats, mask_t)
            track.pending[is_cond][frame] = self._output(head)
            return self._consolidated(frame, is_cond)

    def clear_prompts(self, frame: int, obj_id: int) -> FrameResult:
        """Drop one object's prompts on one frame (its output there becomes an ordinary tracked frame's)."""
        self._check_frame(frame)
        track = self._existing(obj_id)
        self._clear_prompts(track, frame)
        is_cond = any(frame in t.pending[True] for t in self._objects.values())
        with torch.inference_mode():
            return self._consolidated(frame, is_cond)

    def remove_object(self, obj_id: int) -> list[FrameResult]:
        """Forget an object; returns the frames where it had prompts, re-consolidated for the others."""
        track = self._existing(obj_id)
        if len(self._objects) == 1:
            self.reset()
            return []
        frames = sorted(track.prompted_frames)
        del self._objects[obj_id]
        results = []
        with torch.inference_mode():
            for frame in frames:
                is_cond = any(frame in t.pending[True] for t in self._objects.values())
                results.append(self._consolidated(frame, is_cond))
        return results

    def reset(self) -> None:
        """Forget every object and prompt (cached frame features are kept)."""
        self._objects.clear()

    # ---- tracking -------------------------------------------------------------------------------------
    def propagate(self, start: int | None = None, reverse: bool = False,
                  max_frames: int | None = None) -> Iterator[FrameResult]:
        """Track every object from `start` (default: the earliest prompted frame) to the end, or to frame 0 when
        `reverse`, yielding each frame's result as it is computed (nothing is kept for the caller).

        `max_frames` bounds the frames yielded (the official `max_frame_num_to_track=N` yields N + 1).
        """
        self._merge_prompts()
        if start is None:
            start = min(t for track in self._objects.values() for t in track.cond)
        self._check_frame(start, "start")
        if max_frames is not None and max_frames < 1:
            raise InvalidPrompt("max_frames must be at least 1", "max_frames")
        return self._propagate(start, reverse, max_frames)

    def _propagate(self, start: int, reverse: bool, max_frames: int | None) -> Iterator[FrameResult]:
        frame, done = start, 0
        if reverse and start == 0:
            return  # as the official: nothing to track backwards from frame 0
        bank_sizes: tuple[int, ...] = ()
        while frame >= 0 and self.frames.has(frame) and (max_frames is None or done < max_frames):
            with torch.inference_mode():
                outs = []
                for track in self._objects.values():
                    out = track.cond.get(frame)
                    if out is None:
                        out = self._track_frame(track, frame, reverse)
                        track.keep_recent(frame, out)
                    track.tracked[frame] = reverse
                    outs.append(out)
                result = self._result(frame, outs)
            # While a bank fills, each frame attends to a few more tokens than the last, and its attention
            # temporaries no longer fit the holes the previous frame's left: the heap would keep ~30 MB a
            # frame (measured: +190 MB over frames 10-16 of a 2-object clip). Once the bank is full the sizes
            # repeat and the heap reuses its blocks, so it is trimmed only when a bank changed size.
            sizes = tuple(len(track.cond) + len(track.recent) for track in self._objects.values())
            if sizes != bank_sizes:
                release_free_memory()
                bank_sizes = sizes
            yield result
            frame += -1 if reverse else 1
            done += 1

    def _track_frame(self, track: ObjectTrack, frame: int, reverse: bool) -> FrameOutput:
        feats = self._frame_features(frame)
        pix = self._conditioned(track, feats, frame, reverse)
        head = self.model.heads(pix, feats.high_res, None, None, None, self.model.use_multimask(False, 0))
        out = self._output(head)
        memory = self.model.encode_memory(feats.top, head.high_res, head.object_score, binarize=False)
        out.memory = memory.to(torch.bfloat16)
        return out

    def _merge_prompts(self) -> None:
        """Encode pending prompt outputs into memory and move them into the bank (official preflight)."""
        if not self._objects:
            raise InvalidPrompt("no object has a prompt yet: add points, a box or a mask first", "obj_id")
        with torch.inference_mode():
            for obj_id, track in self._objects.items():
                for is_cond in (False, True):
                    for frame, out in track.pending[is_cond].items():
                        if out.memory is None:
                            high_res = F.interpolate(out.pred_masks, size=(self.model.spec.image_size,) * 2,
                                                     mode="bilinear", align_corners=False)
                            top = self._frame_features(frame).top
                            # Prompted frames are encoded from what the user saw: the thresholded mask.
                            memory = self.model.encode_memory(top, high_res, out.object_score, binarize=True)
                            out.memory = memory.to(torch.bfloat16)
                        if is_cond:
                            track.cond[frame] = out
                        else:
                            track.keep_recent(frame, out)
                    track.pending[is_cond].clear()
                if not track.cond:
                    raise InvalidPrompt(f"object {obj_id} has no prompt left: add one, or remove the object", "obj_id")
                for frame in track.cond:
                    track.recent.pop(frame, None)

    # ---- steps shared by prompts and tracking ---------------------------------------------------------
    def _conditioned(self, track: ObjectTrack, feats: FrameFeatures, frame: int, reverse: bool) -> torch.Tensor:
        # Pointers need min(num_frames, max_obj_ptrs) and whether frames up to max_obj_ptrs ahead exist: a
        # source of unknown length (an iterable) is read no further than that.
        reach = self.model.spec.video.max_obj_ptrs_in_encoder
        num_frames = self.frames.count_up_to(max(reach, frame + reach))
        ctx = track.context(frame, reverse, num_frames, self.model.spec.video)
        return self.model.condition(feats.top, ctx.memories, ctx.pointers, ctx.max_ptr_distance)

    def _output(self, head: HeadOutput) -> FrameOutput:
        return FrameOutput(fill_holes(head.low_res, self.fill_hole_area), head.obj_ptr, head.object_score)

    def _frame_features(self, frame: int) -> FrameFeatures:
        feats = self._features.get(frame)
        if feats is not None:
            self._features.move_to_end(frame)
            return feats
        x = self.model.preprocess_frame(self.frames[frame])
        feats = self.model.embed_frame(x)
        self._features[frame] = feats
        while len(self._features) > self._feature_cache:
            self._features.popitem(last=False)
        return feats

    def _consolidated(self, frame: int, is_cond: bool) -> FrameResult:
        """Every object's newest output on `frame` (official `_consolidate_temp_output_across_obj`)."""
        return self._result(frame, [t.output_at(frame, is_cond) for t in self._objects.values()])

    def _result(self, frame: int, outs: list[FrameOutput | None]) -> FrameResult:
        h, w = self.size_hw
        logits = torch.full((len(outs), 1, h, w), NO_OBJ_SCORE)
        scores = torch.full((len(outs),), NO_OBJ_SCORE)
        for i, out in enumerate(outs):
            if out is not None:
                logits[i : i + 1] = to_video_size(out.pred_masks, (h, w)).cpu()
                scores[i] = float(out.object_score)
        return FrameResult(frame, self.obj_ids, logits[:, 0].numpy(), scores.numpy())

    # ---- bookkeeping ----------------------------------------------------------------------------------
    def _track(self, obj_id: int) -> ObjectTrack:
        if obj_id not in self._objects:
            self._objects[obj_id] = ObjectTrack(self.recent_frames)
        return self._objects[obj_id]

    def _existing(self, obj_id: Any) -> ObjectTrack:
        obj_id = _check_obj_id(obj_id)
        if obj_id not in self._objects:
            known = ", ".join(map(str, self._objects)) or "none"
            raise InvalidPrompt(f"unknown object id {obj_id} (known: {known})", "obj_id")
        return self._objects[obj_id]

    def _clear_prompts(self, track: ObjectTrack, frame: int) -> None:
        track.points.pop(frame, None)
        track.mask_frames.discard(frame)
        track.pending[True].pop(frame, None)
        track.pending[False].pop(frame, None)
        out = track.cond.pop(frame, None)
        if out is not None:  # no longer prompted: its output stays, as an ordinary frame's
            track.keep_recent(frame, out)
            track.tracked.pop(frame, None)

    def _check_frame(self, frame: Any, field: str = "frame") -> None:
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise InvalidPrompt(f"{field} must be a frame index (int), got {type(frame).__name__}", field)
        if frame < 0 or not self.frames.has(int(frame)):
            count = self.frames.count_up_to(int(frame) + 1) if frame >= 0 else None
            where = f"the video has {count} frames" if count is not None else "frames count from 0"
            raise InvalidPrompt(f"{field} {frame} is outside the video ({where})", field)

    def _prompt_points(self, points: Any, labels: Any, box: Any, clear: bool,
                       normalize_coords: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated prompt as (1, N, 2) float32 coordinates in the model frame and (1, N) int32 labels."""
        if (points is None) != (labels is None):
            raise InvalidPrompt("points and labels must be given together", "labels" if labels is None else "points")
        if points is None and box is None:
            raise InvalidPrompt("give points (with labels) or a box", "points")
        coords = np.zeros((0, 2), np.float32)
        point_labels = np.zeros((0,), np.int32)
        if points is not None:
            coords = _array(points, np.float32, "points")
            point_labels = _array(labels, np.int64, "labels")
            if coords.ndim != 2 or coords.shape[1] != 2:
                raise InvalidPrompt(f"points must be (N, 2) xy, got shape {coords.shape}", "points")
            if point_labels.shape != (coords.shape[0],):
                raise InvalidPrompt(
                    f"labels must be ({coords.shape[0]},), one per point, got shape {point_labels.shape}", "labels")
            if not np.isin(point_labels, (0, 1)).all():
                raise InvalidPrompt("labels must be 1 (keep) or 0 (exclude)", "labels")
        if box is not None:
            if not clear:
                raise InvalidPrompt("a box replaces the frame's prompts: it cannot be added with clear=False", "box")
            corners = _array(box, np.float32, "box")
            if corners.size != 4:
                raise InvalidPrompt(f"box must be (4,) x0, y0, x1, y1, got shape {corners.shape}", "box")
            coords = np.concatenate([corners.reshape(2, 2), coords])
            point_labels = np.concatenate([np.array([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT]), point_labels])
        if not np.isfinite(coords).all():
            raise InvalidPrompt("coordinates must be finite", "points" if box is None else "box")
        xy = torch.from_numpy(coords).unsqueeze(0)
        if normalize_coords:
            h, w = self.size_hw
            xy = xy / torch.tensor([w, h])
        xy = xy * self.model.spec.image_size
        labels_t = torch.from_numpy(point_labels.astype(np.int32)).unsqueeze(0)
        return xy.to(self.model.device), labels_t.to(self.model.device)

    def _prompt_mask(self, mask: Any) -> torch.Tensor:
        """(H, W) mask -> (1, 1, S, S) float 0/1 in the model frame (antialiased resize, >= 0.5)."""
        arr = _array(mask, None, "mask")
        if arr.ndim != 2:
            raise InvalidPrompt(f"mask must be (H, W), got shape {arr.shape}", "mask")
        t = torch.from_numpy(arr.astype(bool)).to(self.model.device)[None, None].float()
        s = self.model.spec.image_size
        if t.shape[-2:] != (s, s):
            t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            t = (t >= 0.5).float()
        return t


def _check_obj_id(obj_id: Any) -> int:
    if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)):
        raise InvalidPrompt(f"obj_id must be an int, got {type(obj_id).__name__}", "obj_id")
    return int(obj_id)


def _array(value: Any, dtype: Any, field: str) -> np.ndarray:
    try:
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        return arr.astype(dtype) if dtype is not None else arr
    except (TypeError, ValueError) as exc:
        raise InvalidPrompt(f"{field} is not numeric: {exc}", field) from exc
