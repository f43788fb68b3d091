"""`VideoPredictor`: starts tracking sessions on videos with a `SAM2VideoModel`."""
from __future__ import annotations

from typing import Any

from ...errors import InvalidInput
from ...io.images import DEFAULT_MAX_PIXELS
from ...io.video import open_video
from ...model.video import SAM2VideoModel
from .session import Session


class VideoPredictor:
    """Point/box/mask-prompted object tracking, matching the official `SAM2VideoPredictor` (post-processing on).

        model = segany.load_video_model("sam2.1_hiera_tiny")
        tracker = segany.VideoPredictor(model)
        session = tracker.start("clip.mp4")
        session.add_points(frame=0, obj_id=1, points=[[210, 350]], labels=[1])
        for result in session.propagate():
            result.index, result.obj_ids, result.masks

    `fill_hole_area`: background holes of at most this many low-res (256x256) pixels become foreground (the
    official video predictor's 8). `recent_frames`: per object, how many non-prompted frames' outputs are kept
    (None: all of them, as the official; see `segany.predict.video.memory`); at least 15, which is what one
    frame attends to. `feature_cache`: frames whose image features are kept (each ~17 MB in float32).
    """

    def __init__(self, model: SAM2VideoModel, *, fill_hole_area: int = 8, recent_frames: int | None = 16,
                 feature_cache: int = 2) -> None:
        if not isinstance(model, SAM2VideoModel):
            raise InvalidInput(
                f"VideoPredictor needs a video model from segany.load_video_model, got {type(model).__name__} "
                "(segany.load_model builds the image model only)", "model")
        least = model.spec.video.max_obj_ptrs_in_encoder - 1
        if recent_frames is not None and recent_frames < least:
            raise InvalidInput(f"recent_frames must be None or at least {least}", "recent_frames")
        self.model = model.eval()
        self.fill_hole_area = fill_hole_area
        self.recent_frames = recent_frames
        self.feature_cache = feature_cache

    @property
    def variant(self) -> str:
        return self.model.variant

    def start(self, video: Any, *, max_frames: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Session:
        """A session on `video`: a video file, a folder of frame images, a sequence or (T, H, W, 3) array of
        HxWx3 uint8 frames, or any iterable of them. Frames are decoded when first needed.

        `max_frames` / `max_pixels` (per frame) are limits; a longer or larger video is an `InvalidInput`.
        """
        frames = open_video(video, max_frames=max_frames, max_pixels=max_pixels)
        return Session(self.model, frames, fill_hole_area=self.fill_hole_area, recent_frames=self.recent_frames,
                       feature_cache=self.feature_cache)
