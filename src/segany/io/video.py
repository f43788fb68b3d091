"""Video frames, decoded lazily: a video file (PyAV), a folder of image files, or arrays.

`open_video(source)` returns a `FrameSource`: random access to HxWx3 uint8 RGB frames by index, decoding
only the frames asked for. Nothing holds the whole video in memory:
- video files are demuxed once (packets only, no decoding) to learn each frame's timestamp; a frame is
  then decoded from the nearest keyframe, with a small byte-bounded cache of recently decoded frames so
  that forward and backward passes do not re-decode every group of pictures;
- folders are listed once and each file is decoded when asked for;
- a sequence (list, tuple, 4-D array) is indexed; any other iterable is read as far as needed and the
  frames read so far are spooled to a temporary file, so a generator can be tracked backwards too.
Every failure is an `InvalidInput` with field "video", naming the frame.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from segany.errors import InvalidInput

from .images import DEFAULT_MAX_PIXELS, load_image, open_image

FIELD = "video"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Decoded frames kept by a video file source (bytes): enough for a group of pictures of 1080p video.
DEFAULT_DECODE_CACHE_BYTES = 96 * 1024 * 1024


class FrameSource:
    """Random access to a video's frames. Subclasses implement `_read(i)` and `count_up_to(n)`."""

    def __init__(self, max_frames: int | None, max_pixels: int | None) -> None:
        self.max_frames = max_frames
        self.max_pixels = max_pixels
        self._size_hw: tuple[int, int] | None = None

    @property
    def size_hw(self) -> tuple[int, int]:
        """(height, width) of every frame (the first frame's; others must match)."""
        if self._size_hw is None:
            self._size_hw = self[0].shape[:2]
        return self._size_hw

    def count_up_to(self, n: int) -> int:
        """min(n, number of frames), reading no further than needed to know it."""
        raise NotImplementedError

    def has(self, index: int) -> bool:
        return index >= 0 and self.count_up_to(index + 1) > index

    def __len__(self) -> int:
        """The number of frames (for a plain iterable: reads it to the end)."""
        return self.count_up_to(self.max_frames + 1 if self.max_frames is not None else 1 << 62)

    def __getitem__(self, index: int) -> np.ndarray:
        """Frame `index` as (H, W, 3) uint8 RGB."""
        if not self.has(index):
            raise InvalidInput(f"frame {index} is past the end of the video ({self.count_up_to(index)} frames)", "frame")
        frame = self._read(index)
        self._check_frame(index, frame)
        return frame

    def _read(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def _check_count(self, count: int) -> None:
        if self.max_frames is not None and count > self.max_frames:
            raise InvalidInput(f"the video has more than {self.max_frames} frames (the limit)", FIELD)

    def _check_frame(self, index: int, frame: np.ndarray) -> None:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InvalidInput(f"frame {index}: expected HxWx3 uint8, got {frame.dtype} {frame.shape}", FIELD)
        h, w = frame.shape[:2]
        if self.max_pixels is not None and h * w > self.max_pixels:
            raise InvalidInput(f"frame {index}: {w}x{h} has more pixels than the limit ({self.max_pixels})", FIELD)
        if self._size_hw is None:
            self._size_hw = (h, w)
        elif (h, w) != self._size_hw:
            raise InvalidInput(f"frame {index} is {w}x{h}, unlike the video's {self._size_hw[1]}x{self._size_hw[0]}", FIELD)

    def close(self) -> None:
        """Release files and decoders (also done when the source is garbage-collected)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FolderFrames(FrameSource):
    """Image files of a folder, in numeric order when every stem is a number (00000.jpg...), else natural order."""

    def __init__(self, folder: str | os.PathLike, max_frames: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(max_frames, max_pixels)
        files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise InvalidInput(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})", FIELD)
        if all(p.stem.isdigit() for p in files):
            files.sort(key=lambda p: int(p.stem))
        else:
            files.sort(key=_natural_key)
        self._check_count(len(files))
        self.files = files

    def count_up_to(self, n: int) -> int:
        return min(n, len(self.files))

    def _read(self, index: int) -> np.ndarray:
        path = self.files[index]
        try:
            # The official loader opens frames with PIL and converts to RGB without EXIF rotation.
            with open_image(path, max_pixels=self.max_pixels, field=FIELD, exif_transpose=False) as img:
                return np.asarray(img.convert("RGB"))
        except InvalidInput as exc:
            raise InvalidInput(f"frame {index} ({path.name}): {exc}", FIELD) from exc


class ArrayFrames(FrameSource):
    """A sequence of HxWx3 uint8 arrays (or anything `load_image` accepts), or one (T, H, W, 3) array."""

    def __init__(self, frames: Sequence[Any] | np.ndarray, max_frames: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(max_frames, max_pixels)
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise InvalidInput(f"a video array must be (T, H, W, 3), got shape {frames.shape}", FIELD)
        self._check_count(len(frames))
        self.frames = frames

    def count_up_to(self, n: int) -> int:
        return min(n, len(self.frames))

    def _read(self, index: int) -> np.ndarray:
        return _as_rgb(self.frames[index], index, self.max_pixels)


class IterableFrames(FrameSource):
    """Any iterable of frames, read on demand; frames read so far are spooled to a temporary file."""

    def __init__(self, frames: Iterable[Any], max_frames: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(max_frames, max_pixels)
        self._it: Iterator[Any] | None = iter(frames)
        self._spool = tempfile.TemporaryFile(prefix="segany-frames-")
        self._count = 0
        self._frame_bytes = 0

    def count_up_to(self, n: int) -> int:
        while self._count < n and self._it is not None:
            try:
                item = next(self._it)
            except StopIteration:
                self._it = None
                break
            frame = _as_rgb(item, self._count, self.max_pixels)
            self._check_frame(self._count, frame)
            self._check_count(self._count + 1)
            self._frame_bytes = frame.nbytes
            self._spool.seek(self._count * frame.nbytes)
            self._spool.write(np.ascontiguousarray(frame).tobytes())
            self._count += 1
        return min(n, self._count)

    def _read(self, index: int) -> np.ndarray:
        h, w = self._size_hw  # set by the first frame read in count_up_to
        self._spool.seek(index * self._frame_bytes)
        data = self._spool.read(self._frame_bytes)
        return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3).copy()

    def close(self) -> None:
        self._spool.close()
        self._it = None


class VideoFileFrames(FrameSource):
    """A video file decoded with PyAV (FFmpeg): frame i is the i-th frame in presentation order."""

    def __init__(self, path: str | os.PathLike, max_frames: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, cache_bytes: int = DEFAULT_DECODE_CACHE_BYTES) -> None:
        super().__init__(max_frames, max_pixels)
        av = _import_av()
        self.path = str(path)
        try:
            self._container = av.open(self.path)
        except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{path} is not a readable video ({exc})", FIELD) from exc
        if not self._container.streams.video:
            self._container.close()
            raise InvalidInput(f"{path} has no video stream", FIELD)
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        try:
            # Demuxing reads packets only (no decoding): it yields every frame's timestamp, hence the count.
            pts = sorted(p.pts for p in self._container.demux(self._stream) if p.pts is not None and p.size > 0)
        except av.FFmpegError as exc:
            self._container.close()
            raise InvalidInput(f"{path}: corrupt video container ({exc})", FIELD) from exc
        if not pts:
            self._container.close()
            raise InvalidInput(f"{path} has no video frames", FIELD)
        self._check_count(len(pts))
        self._pts = pts
        self._index_of = {p: i for i, p in enumerate(pts)}
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._decoder: Iterator[Any] | None = None
        self._next = -1  # index the running decoder yields next (-1: none running)

    def count_up_to(self, n: int) -> int:
        return min(n, len(self._pts))

    def _read(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        # Keep decoding forward when the target is a little ahead; otherwise seek to the keyframe before it.
        if not (0 <= self._next <= index < self._next + 64):
            self._seek(index)
        while True:
            frame_index, rgb = self._decode_next(index)
            self._remember(frame_index, rgb)
            if frame_index >= index:
                break
        if index not in self._cache:
            raise InvalidInput(f"frame {index} of {self.path} could not be decoded", FIELD)
        return self._cache[index]

    def _seek(self, index: int) -> None:
        av = _import_av()
        try:
            self._container.seek(self._pts[index], stream=self._stream, backward=True, any_frame=False)
        except av.FFmpegError as exc:
            raise InvalidInput(f"frame {index} of {self.path}: seek failed ({exc})", FIELD) from exc
        self._decoder = self._container.decode(self._stream)
        self._next = 0

    def _decode_next(self, target: int) -> tuple[int, np.ndarray]:
        av = _import_av()
        try:
            frame = next(self._decoder)  # type: ignore[arg-type]
        except StopIteration:
            self._next = -1
            raise InvalidInput(f"frame {target} of {self.path} could not be decoded (the stream ended)", FIELD) from None
        except (av.FFmpegError, ValueError) as exc:
            self._next = -1
            raise InvalidInput(f"frame {target} of {self.path} is corrupt ({exc})", FIELD) from exc
        index = self._index_of.get(frame.pts, self._next)
        self._next = index + 1
        return index, frame.to_ndarray(format="rgb24")

    def _remember(self, index: int, rgb: np.ndarray) -> None:
        self._cache[index] = rgb
        self._cache.move_to_end(index)
        while len(self._cache) > 1 and sum(a.nbytes for a in self._cache.values()) > self._cache_bytes:
            self._cache.popitem(last=False)

    def close(self) -> None:
        self._cache.clear()
        self._container.close()


def open_video(source: Any, *, max_frames: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> FrameSource:
    """A `FrameSource` for a video file or folder path, a sequence/4-D array of frames, or an iterable of frames.

    `max_frames` and `max_pixels` (per frame) are limits: a longer or larger video is an `InvalidInput`.
    """
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return FolderFrames(path, max_frames, max_pixels)
        if not path.is_file():
            raise InvalidInput(f"video {str(source)!r} is neither a file nor a folder", FIELD)
        return VideoFileFrames(path, max_frames, max_pixels)
    if isinstance(source, (bytes, bytearray)):
        raise InvalidInput("pass a video as a path, a folder of frames or frames, not bytes", FIELD)
    if isinstance(source, np.ndarray) or isinstance(source, Sequence):
        return ArrayFrames(source, max_frames, max_pixels)
    if isinstance(source, Iterable):
        return IterableFrames(source, max_frames, max_pixels)
    raise InvalidInput(f"expected a video file, a folder of frames or frames, got {type(source).__name__}", FIELD)


def _as_rgb(item: Any, index: int, max_pixels: int | None) -> np.ndarray:
    try:
        return load_image(item, max_pixels=max_pixels, field=FIELD)
    except InvalidInput as exc:
        raise InvalidInput(f"frame {index}: {exc}", FIELD) from exc


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:  # a core dependency; only broken installs get here
        raise InvalidInput("reading video files needs PyAV: pip install av", FIELD) from exc
    return av
