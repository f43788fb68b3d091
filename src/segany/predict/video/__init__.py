"""Video object tracking: `VideoPredictor` starts `Session`s that yield `FrameResult`s."""
from segany.predict.video.predictor import VideoPredictor
from segany.predict.video.results import FrameResult
from segany.predict.video.session import Session

__all__ = ["FrameResult", "Session", "VideoPredictor"]
