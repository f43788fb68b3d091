"""`segany track` on a tiny mp4 with a random checkpoint: PNG masks, COCO video annotations, overlay video."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segany.cli.main import main
from segany.io.rle import coco_decode
from video_support import pan_frames, video_checkpoint, write_mp4

FRAMES = pan_frames(3, size_wh=(64, 48), step_xy=(6, 4))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_mp4(tmp_path_factory.mktemp("clip") / "clip.mp4", FRAMES)


def test_track_writes_masks_annotations_and_overlay(clip, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["track", str(clip), "--model", "sam2.1_hiera_tiny", "--checkpoint", str(video_checkpoint("sam2.1_hiera_tiny")),
                   "--device", "cpu", "--dtype", "float32", "--point", "0:1:30,20", "--point", "0:1:5,5:0",
                   "--box", "0:2:5,5,40,30", "--max-frames", "2", "--out", str(out), "--overlay", str(tmp_path / "o.mp4"),
                   "--no-progress"])
    assert status == 0, capsys.readouterr().err
    doc = json.loads((out / "annotations.json").read_text())
    assert doc["videos"][0] == {"id": 1, "name": "clip.mp4", "width": 64, "height": 48, "length": 3}
    assert [a["id"] for a in doc["annotations"]] == [1, 2]
    for ann in doc["annotations"]:
        assert len(ann["segmentations"]) == 3 and ann["segmentations"][2] is None  # frame 2 was not tracked
        for frame in (0, 1):
            png = np.array(Image.open(out / "masks" / str(ann["id"]) / f"{frame:05d}.png")) > 0
            rle = ann["segmentations"][frame]
            decoded = coco_decode(rle) if rle is not None else np.zeros((48, 64), bool)
            np.testing.assert_array_equal(decoded, png)
            assert (ann["areas"][frame] or 0) == int(png.sum())
    assert not (out / "masks" / "1" / "00002.png").exists()

    import av

    with av.open(str(tmp_path / "o.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 2 and frames[0].shape == (48, 64, 3)


@pytest.mark.parametrize("argv,message", [
    (["--point", "0:1:30"], "FRAME:OBJ:X,Y"),
    (["--box", "0:1:5,5,1,1"], "X1 must be >= X0"),
])
def test_bad_prompts_are_usage_errors(clip, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["track", str(clip), "--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_prompt_outside_the_video_is_a_usage_error(clip, tmp_path, capsys):
    status = main(["track", str(clip), "--checkpoint", str(video_checkpoint("sam2.1_hiera_tiny")), "--device", "cpu",
                   "--dtype", "float32", "--point", "9:1:30,20", "--out", str(tmp_path / "out")])
    assert status == 2 and "outside the video" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_no_prompt_is_a_usage_error(clip, tmp_path, capsys):
    assert main(["track", str(clip), "--out", str(tmp_path / "out")]) == 2
    assert "at least one prompt" in capsys.readouterr().err


def test_reverse_overlay_is_in_time_order(clip, tmp_path, capsys):
    """Tracking backwards from frame 2 yields frames 2, 1, 0; the overlay video still runs 0, 1, 2, each frame
    drawn with its own masks (those of the PNGs of the same index)."""
    import av

    from segany.io.masks import overlay_masks

    out = tmp_path / "out"
    status = main(["track", str(clip), "--checkpoint", str(video_checkpoint("sam2.1_hiera_tiny")), "--device", "cpu",
                   "--dtype", "float32", "--point", "2:1:30,20", "--box", "2:2:5,5,40,30", "--reverse",
                   "--out", str(out), "--overlay", str(tmp_path / "o.mp4"), "--no-progress"])
    assert status == 0, capsys.readouterr().err
    doc = json.loads((out / "annotations.json").read_text())
    assert doc["info"]["tracked_frames"] == 3
    expected = []
    for frame in range(3):
        masks = np.stack([np.array(Image.open(out / "masks" / str(obj) / f"{frame:05d}.png")) > 0 for obj in (1, 2)])
        assert masks.any(axis=(1, 2)).all(), "every object should be drawn on every frame"
        expected.append(overlay_masks(FRAMES[frame], masks).astype(np.float32))
        for obj, mask in zip((1, 2), masks):  # the COCO annotations are keyed by frame index too
            ann = next(a for a in doc["annotations"] if a["id"] == obj)
            np.testing.assert_array_equal(coco_decode(ann["segmentations"][frame]), mask)
    with av.open(str(tmp_path / "o.mp4")) as container:
        written = [f.to_ndarray(format="rgb24").astype(np.float32) for f in container.decode(video=0)]
    assert len(written) == 3
    for i, frame in enumerate(written):
        # H.264 blurs the frame a little; the right overlay is still far closer than any other frame's.
        errors = [float(np.abs(frame - e).mean()) for e in expected]
        assert int(np.argmin(errors)) == i, f"overlay frame {i} looks like frame {int(np.argmin(errors))}: {errors}"
        assert errors[i] < float(np.abs(frame - FRAMES[i]).mean()), "the masks are drawn"
