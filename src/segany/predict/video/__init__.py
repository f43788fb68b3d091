"""Video object tracking: `VideoPredictor` starts `Session`s that yield `FrameResult`s."""
from .predictor import VideoPredictor
from .results import FrameResult
from .session import Session

__all__ = ["FrameResult", "Session", "VideoPredictor"]
