"""Small real video files for the video server tests, written with PyAV (MPEG-4 Part 2 in MP4)."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def clip_frames(count: int, size_hw: tuple[int, int] = (120, 160)) -> list[np.ndarray]:
    """`count` (H, W, 3) uint8 frames of a white square moving right over a dark textured background."""
    height, width = size_hw
    rng = np.random.default_rng(0)
    background = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    frames = []
    for i in range(count):
        frame = background.copy()
        x = 20 + 6 * i
        frame[30:70, x:x + 40] = 230
        frames.append(frame)
    return frames


def write_clip(path: Path, count: int = 8, size_hw: tuple[int, int] = (120, 160)) -> Path:
    """An MP4 of `clip_frames(count, size_hw)` at 10 fps; every frame a keyframe, so one bad frame stays one."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = size_hw
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 1
        for frame in clip_frames(count, size_hw):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def corrupt_frame(source: Path, target: Path, index: int) -> Path:
    """A copy of `source` whose frame `index` (its packet's bytes) is overwritten with junk."""
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        packets = [(p.pos, p.size) for p in container.demux(stream) if p.size > 0]
    data = bytearray(source.read_bytes())
    pos, size = packets[index]
    data[pos:pos + size] = b"\xff" * size
    target.write_bytes(bytes(data))
    return target
