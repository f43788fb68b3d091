"""Lazy video frame sources: folders, video files (PyAV), sequences and one-shot iterables."""
from __future__ import annotations

import numpy as np
import pytest

from segany.errors import InvalidInput
from segany.io.video import ArrayFrames, FolderFrames, IterableFrames, VideoFileFrames, open_video
from video_support import pan_frames, write_folder, write_mp4

FRAMES = pan_frames(12, size_wh=(64, 48))


def _decode_all(path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return write_mp4(tmp_path_factory.mktemp("mp4") / "clip.mp4", FRAMES)


def test_folder_sorts_numerically_and_decodes_on_demand(tmp_path):
    for i, name in enumerate(["2.png", "10.png", "1.png"]):
        write_folder(tmp_path, [FRAMES[i]])  # writes 00000.png
        (tmp_path / "00000.png").rename(tmp_path / name)
    source = open_video(tmp_path)
    assert isinstance(source, FolderFrames)
    assert [p.name for p in source.files] == ["1.png", "2.png", "10.png"]
    assert len(source) == 3 and source.size_hw == (48, 64)
    np.testing.assert_array_equal(source[2], FRAMES[1])  # 10.png was written from frame 1


def test_folder_natural_order_for_other_names(tmp_path):
    for name, rgb in (("frame_10.jpg", FRAMES[0]), ("frame_9.jpg", FRAMES[1]), ("frame_100.jpg", FRAMES[2])):
        from PIL import Image

        Image.fromarray(rgb).save(tmp_path / name)
    assert [p.name for p in FolderFrames(tmp_path).files] == ["frame_9.jpg", "frame_10.jpg", "frame_100.jpg"]


def test_folder_corrupt_frame_in_the_middle_names_it(tmp_path):
    write_folder(tmp_path, FRAMES[:3])
    (tmp_path / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    source = open_video(tmp_path)
    np.testing.assert_array_equal(source[0], FRAMES[0])
    with pytest.raises(InvalidInput, match="frame 1") as err:
        source[1]
    assert err.value.field == "video"
    np.testing.assert_array_equal(source[2], FRAMES[2])


def test_folder_frames_of_another_size_are_refused(tmp_path):
    write_folder(tmp_path, [FRAMES[0], FRAMES[1][:40]])
    source = open_video(tmp_path)
    source[0]
    with pytest.raises(InvalidInput, match="frame 1 is 64x40"):
        source[1]


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(InvalidInput, match="no image files"):
        open_video(tmp_path)
    with pytest.raises(InvalidInput, match="neither a file nor a folder"):
        open_video(tmp_path / "nope.mp4")


def test_video_file_random_access_matches_sequential_decoding(mp4):
    expected = _decode_all(mp4)
    source = open_video(mp4)
    assert isinstance(source, VideoFileFrames)
    assert len(source) == len(FRAMES) == len(expected)
    assert source.size_hw == (48, 64)
    # Forwards, backwards and jumping: each must be the frame sequential decoding gives at that index.
    for i in [0, 1, 2, 11, 5, 4, 3, 10, 0]:
        np.testing.assert_array_equal(source[i], expected[i], err_msg=f"frame {i}")
    # H.264 is lossy, but the frames are the clip's.
    assert np.abs(source[6].astype(int) - FRAMES[6].astype(int)).mean() < 8
    with pytest.raises(InvalidInput, match="past the end"):
        source[12]


def test_video_file_limits_and_non_videos(mp4, tmp_path):
    with pytest.raises(InvalidInput, match="more than 5 frames"):
        open_video(mp4, max_frames=5)
    with pytest.raises(InvalidInput, match="more pixels"):
        open_video(mp4, max_pixels=1000)[0]
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    with pytest.raises(InvalidInput, match="not a readable video") as err:
        open_video(text)
    assert err.value.field == "video"


def test_sequence_and_array_sources():
    source = open_video(FRAMES[:4])
    assert isinstance(source, ArrayFrames) and len(source) == 4
    np.testing.assert_array_equal(source[3], FRAMES[3])
    stacked = open_video(np.stack(FRAMES[:4]))
    np.testing.assert_array_equal(stacked[2], FRAMES[2])
    with pytest.raises(InvalidInput, match=r"\(T, H, W, 3\)"):
        open_video(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InvalidInput, match="frame 1"):
        open_video([FRAMES[0], np.zeros((48, 64), np.float32)])[1]


def test_iterable_is_read_only_as_far_as_needed_and_can_go_back():
    pulled = []

    def frames():
        for i, rgb in enumerate(FRAMES):
            pulled.append(i)
            yield rgb

    source = open_video(frames())
    assert isinstance(source, IterableFrames)
    assert source.size_hw == (48, 64)
    assert pulled == [0]
    np.testing.assert_array_equal(source[4], FRAMES[4])
    assert pulled == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(source[1], FRAMES[1])  # from the spool, not the generator
    assert pulled == [0, 1, 2, 3, 4]
    assert source.count_up_to(7) == 7 and len(pulled) == 7
    assert len(source) == 12 and not source.has(12)
    source.close()


def test_iterable_limit():
    with pytest.raises(InvalidInput, match="more than 3 frames"):
        len(open_video(iter(FRAMES), max_frames=3))
