"""`segany` commands: help, exit statuses, `segment` and `auto` through the console script."""
from __future__ import annotations

import inspect
import json
import signal
import socket
import subprocess
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import segany
from segany.cli.main import build_parser, main
from segany_cli_helpers import IMAGES, MODEL_FLAGS, build_tiny_owlv2, run_segany, start_segany

COMMANDS = ("segment", "auto", "batch", "serve", "bench")


@pytest.fixture
def keep_signals():
    """`main` installs SIGINT/SIGTERM handlers for its commands; put pytest's back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("one") / "chelsea.png"
    Image.open(IMAGES / "chelsea.png").convert("RGB").resize((90, 60)).save(path)
    return path


def _subcommand_parser(name: str):
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[name]  # argparse keeps subparsers only here


def test_help_lists_commands_and_exit_statuses():
    result = run_segany("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
    assert "exit status" in result.stdout and "130" in result.stdout


def test_command_help_shows_defaults():
    result = run_segany("batch", "--help")
    assert result.returncode == 0
    text = "".join(result.stdout.split())  # argparse wraps lines anywhere, even inside --point-grids
    assert "--points-per-sideINTgridofpointsperimageside(ignoredwith--point-grids)(default:32)" in text
    assert "(default:auto)" in text and "(default:0.8)" in text and "--use-m2m,--no-use-m2m" in text
    assert "(default:sam2.1_hiera_tiny)" in text and "(default:2)" in text


def test_every_command_takes_the_model_options():
    for command in COMMANDS:
        flags = {f for action in _subcommand_parser(command)._actions for f in action.option_strings}
        assert {"--model", "--checkpoint", "--device", "--dtype"} <= flags, command


def test_every_mask_generator_argument_has_an_option():
    names = [n for n in inspect.signature(segany.MaskGenerator.__init__).parameters if n not in ("self", "predictor", "output_mode")]
    for command in ("auto", "batch"):
        parser = _subcommand_parser(command)
        flags = {f for action in parser._actions for f in action.option_strings}
        for name in names:
            assert "--" + name.replace("_", "-") in flags, (command, name)
        defaults = {a.dest: a.default for a in parser._actions}
        for name in names:
            expected = inspect.signature(segany.MaskGenerator.__init__).parameters[name].default
            assert defaults[name] == expected, name


@pytest.mark.parametrize(
    "argv",
    [
        ["nosuch"],
        ["segment", "IMAGE", "--point", "1,2,3,4"],
        ["segment", "IMAGE", "--point", "1,2,7"],
        ["segment", "IMAGE", "--box", "5,5,1,1"],
        ["batch", "folder"],  # --out is required
        ["batch", "folder", "--out", "x.json", "--mode", "nosuch"],
        ["auto", "IMAGE", "--points-per-side", "many"],
        ["segment", "IMAGE", "--point", "1,2", "--dtype", "float64"],
    ],
)
def test_argument_errors_exit_2(argv, capsys, keep_signals):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["segment", "{image}"], "give at least one --point, --box or --text"),
        (["segment", "{image}", "--text", "a cat", "--point", "1,2"], "cannot be combined"),
        (["segment", "{image}", "--point", "1,2", "--box", "0,0,5,5", "--box", "1,1,6,6"], "at most one --box"),
        (["segment", "{tmp}/missing.png", "--point", "1,2"], "is not a file"),
        (["segment", "{image}", "--point", "1,2", "--model", "sam9_huge"], "unknown model"),
        (["segment", "{image}", "--point", "1,2", "--checkpoint", "{tmp}/missing.pt"], "is not a file"),
        (["segment", "{image}", "--text", " . . "], "no phrase"),
        (["auto", "{image}", "--points-per-side", "0"], "points_per_side"),
        (["auto", "{image}", "--pred-iou-thresh", "1.5"], "pred_iou_thresh"),
        (["batch", "{tmp}/empty", "--out", "{tmp}/o.json"], "holds no image"),
        (["batch", "{tmp}/nowhere", "--out", "{tmp}/o.json"], "no such file"),
        (["batch", "{image}", "--out", "{tmp}/o.json", "--mode", "boxes"], "needs --boxes"),
        (["batch", "{image}", "--out", "{tmp}/o.json", "--mode", "text"], "needs --text"),
        (["batch", "{image}", "--out", "{tmp}/o.json", "--text", "a cat"], "--text needs --mode text"),
        (["batch", "{image}", "--out", "{tmp}/no/o.json"], "does not exist"),
        (["batch", "{image}", "--out", "{tmp}/not_coco.json"], "--overwrite"),
        (["bench", "nosuch"], "unknown benchmark"),
    ],
)
def test_usage_errors_exit_2_with_a_message(argv, message, tmp_path, small_image, capsys, keep_signals):
    (tmp_path / "empty").mkdir()
    (tmp_path / "not_coco.json").write_text('{"hello": 1}')
    code = main([a.format(image=small_image, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "error:" in err


def test_failures_exit_1(tmp_path, small_image, capsys, keep_signals):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    assert main(["segment", str(broken), "--point", "1,2"]) == 1
    assert "segany segment: error:" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["segment", str(small_image), "--point", "1,2", "--checkpoint", str(garbage), "--device", "cpu"]) == 1
    assert "segany segment: error:" in capsys.readouterr().err


def test_usage_error_status_through_the_console_script(small_image):
    result = run_segany("segment", small_image)
    assert result.returncode == 2 and "give at least one --point" in result.stderr


def test_segment_overlay_through_the_console_script(tmp_path, small_image, tiny_checkpoint):
    out = tmp_path / "overlay.png"
    result = run_segany("segment", small_image, "--point", "40,30", "--box", "10,10,80,50", "--format", "overlay",
                        "--out", out, "--checkpoint", tiny_checkpoint, *MODEL_FLAGS)
    assert result.returncode == 0, result.stderr
    assert f"1 mask(s) -> {out}" in result.stderr
    original = np.asarray(Image.open(small_image).convert("RGB"))
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape == original.shape
    assert (picture != original).any(axis=2).mean() > 0.01  # masks and prompts were drawn
    assert tuple(picture[30, 40]) == (40, 220, 40)  # the positive click, drawn in green


def test_segment_json_multimask_through_the_console_script(small_image, tiny_checkpoint):
    result = run_segany("segment", small_image, "--point", "40,30", "--point", "5,5,0", "--multimask",
                        "--checkpoint", tiny_checkpoint, *MODEL_FLAGS)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # JSON formats go to stdout by default
    assert (document["width"], document["height"], document["model"]) == (90, 60, "sam2.1_hiera_tiny")
    masks = document["masks"]
    assert len(masks) == 3 and [m["prompt"] for m in masks] == [0, 0, 0]
    scores = [m["score"] for m in masks]
    assert scores == sorted(scores, reverse=True)
    for entry in masks:
        rle = entry["rle"] | {"counts": entry["rle"]["counts"].encode()}
        assert int(mask_utils.area(rle)) == entry["area"]
        assert list(mask_utils.toBbox(rle)) == entry["bbox"]
        assert isinstance(entry["polygons"], list)


def test_segment_text_through_the_console_script(tmp_path, small_image, tiny_checkpoint):
    detector = build_tiny_owlv2(tmp_path / "owl")
    out = tmp_path / "found.json"
    result = run_segany("segment", small_image, "--text", "cat. mug.", "--detector", detector, "--box-threshold", "0",
                        "--format", "polygon", "--out", out, "--checkpoint", tiny_checkpoint, *MODEL_FLAGS)
    assert result.returncode == 0, result.stderr
    masks = json.loads(out.read_text())["masks"]
    assert len(masks) == 4  # the tiny detector's 2x2 patches, all above threshold 0
    assert {m["label"] for m in masks} <= {"cat", "mug"}
    for entry in masks:
        assert 0 < entry["detector_score"] < 1 and len(entry["box_xyxy"]) == 4 and "rle" not in entry
    high = run_segany("segment", small_image, "--text", "cat", "--detector", detector, "--box-threshold", "1",
                      "--checkpoint", tiny_checkpoint, *MODEL_FLAGS)
    assert high.returncode == 0, high.stderr
    assert json.loads(high.stdout)["masks"] == [] and "no box" in high.stderr


def test_auto_through_the_console_script(tmp_path, small_image, tiny_checkpoint):
    out = tmp_path / "auto.json"
    result = run_segany("auto", small_image, "--points-per-side", "3", "--pred-iou-thresh", "0",
                        "--stability-score-thresh", "0", "--box-nms-thresh", "1.0", "--max-masks", "4",
                        "--format", "rle", "--out", out, "--checkpoint", tiny_checkpoint, *MODEL_FLAGS)
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    masks = document["masks"]
    assert 1 <= len(masks) <= 4  # max-masks caps the 27 candidates the 3x3 grid makes
    for entry in masks:
        assert {"score", "bbox", "area", "rle", "stability_score", "point_coords", "crop_box"} <= set(entry)
        assert "polygons" not in entry and entry["crop_box"] == [0.0, 0.0, 90.0, 60.0]


def test_serve_delegates_to_the_http_server():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = start_segany("serve", "--host", "127.0.0.1", "--port", port, "--no-preload", "--log-level", "warning")
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        assert response.json() == {"status": "ok"}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
    assert process.returncode == 0
