"""`segany track`: follow prompted objects through a video; per-frame PNG masks, COCO video annotations, overlay.

Output folder (`--out DIR`):
    DIR/masks/<obj_id>/<frame:05d>.png   0/255 mask of each object on each tracked frame
    DIR/annotations.json                 YouTube-VIS style COCO: one annotation per object with per-frame
                                         COCO RLE `segmentations`, `areas` and `bboxes` (null where not
                                         tracked); rewritten atomically as tracking goes, so an interrupted
                                         run leaves a valid file holding the frames done so far
    --overlay FILE.mp4                   the tracked frames with coloured masks, in time order (drawn from
                                         the PNGs once tracking ends or is interrupted)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from segany.cli import options as opts

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
SAVE_EVERY_S = 5.0  # annotations.json is rewritten at least this often while tracking


def parse_point_prompt(text: str) -> tuple[int, int, float, float, int]:
    """`FRAME:OBJ:X,Y[:LABEL]` -> (frame, obj_id, x, y, label)."""
    parts = text.split(":")
    try:
        if len(parts) not in (3, 4):
            raise ValueError
        frame, obj = int(parts[0]), int(parts[1])
        x, y = (float(v) for v in parts[2].split(","))
        label = int(parts[3]) if len(parts) == 4 else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FRAME:OBJ:X,Y[:LABEL], got {text!r}") from None
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(f"point label must be 1 (keep) or 0 (exclude), got {label}")
    return frame, obj, x, y, label


def parse_box_prompt(text: str) -> tuple[int, int, tuple[float, float, float, float]]:
    """`FRAME:OBJ:X0,Y0,X1,Y1` -> (frame, obj_id, box_xyxy)."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        frame, obj = int(parts[0]), int(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FRAME:OBJ:X0,Y0,X1,Y1, got {text!r}") from None
    return frame, obj, opts.parse_box(parts[2])


def add_track_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `segany track` on the `segany` sub-command parsers."""
    parser = subparsers.add_parser(
        "track", help="track prompted objects through a video: PNG masks, COCO video annotations, overlay",
        description="Track objects through a video (a file, or a folder of frame images) from point, box and mask "
                    "prompts on any frames. Coordinates are video pixels; frames count from 0.",
        epilog=__doc__.split("\n", 2)[2], formatter_class=opts.SeganyHelpFormatter, allow_abbrev=False)
    parser.set_defaults(handler=run)
    parser.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failures")
    parser.add_argument("video", metavar="VIDEO", help="video file (anything FFmpeg reads) or a folder of frames")
    parser.add_argument("--point", action="append", type=parse_point_prompt, metavar="FRAME:OBJ:X,Y[:LABEL]",
                        help="a click on object OBJ in frame FRAME; LABEL 1 (default) keeps, 0 excludes; repeatable")
    parser.add_argument("--box", action="append", type=parse_box_prompt, metavar="FRAME:OBJ:X0,Y0,X1,Y1",
                        help="a box around object OBJ in frame FRAME; repeatable")
    parser.add_argument("--prompts", default=None, metavar="FILE",
                        help='JSON list of {"frame", "obj_id", and "points" + "labels", "box" and/or "mask" (a PNG '
                             'path, nonzero = object)}, applied in order before --point/--box')
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--overlay", default=None, metavar="FILE.mp4",
                        help="also write the tracked frames with coloured masks as a video, in time order "
                             "(also with --reverse)")
    parser.add_argument("--start", type=int, default=None, help="frame to track from (default: the first prompted frame)")
    parser.add_argument("--reverse", action="store_true", help="track backwards, towards frame 0")
    parser.add_argument("--max-frames", type=int, default=None, help="track at most this many frames (default: all)")
    parser.add_argument("--fps", type=float, default=None, help="overlay frame rate (default: the video's, else 25)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")
    opts.add_model_options(parser, image_encoder=False)  # tracking runs the encoder eagerly (encoder_runtime.py)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `segany track`; returns the exit status (KeyboardInterrupt propagates after saving)."""
    import segany
    from segany import runtime
    from segany.errors import InvalidInput

    try:
        opts.check_model_option(args.model, args.checkpoint)
        prompts = _collect_prompts(args)
        if not Path(args.video).exists():
            raise InvalidInput(f"video {args.video!r} does not exist", "video")
        if args.max_frames is not None and args.max_frames < 1:
            raise InvalidInput("--max-frames must be at least 1", "max_frames")
    except InvalidInput as error:
        print(f"segany track: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.threads:
        runtime.limit_cpu_threads(args.threads)
    model = segany.load_video_model(args.model, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype)
    session = segany.VideoPredictor(model).start(args.video)
    try:
        for prompt in prompts:
            _apply(session, prompt)
    except InvalidInput as error:
        print(f"segany track: error: {error}", file=sys.stderr)
        return EXIT_USAGE

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    writer = _Annotations(out / "annotations.json", args.video, session.size_hw, session.num_frames)
    overlay = _Overlay(Path(args.overlay), session.size_hw, args.fps or _video_fps(args.video)) if args.overlay else None
    results = session.propagate(start=args.start, reverse=args.reverse, max_frames=args.max_frames)
    start = args.start if args.start is not None else min(p["frame"] for p in prompts)
    total = _expected_frames(session.num_frames, start, args)
    progress = _progress(total, args.progress)
    tracked: list[int] = []  # frame indices in the order tracked (descending with --reverse)
    try:
        for result in results:
            _write_pngs(out / "masks", result)
            writer.add(result)
            tracked.append(result.index)
            progress.update(1)
    finally:  # Ctrl-C included: what was tracked is saved, and the overlay file is closed properly
        progress.close()
        writer.save()
        if overlay is not None:
            try:
                # Drawn afterwards from the PNGs just written, in time order whatever the tracking direction;
                # holding the masks in memory until the end would grow with the video.
                for index in sorted(tracked):
                    overlay.add(session.frames[index], _read_pngs(out / "masks", session.obj_ids, index))
            finally:
                overlay.close()
    print(f"segany track: {writer.frames_done} frames, {len(writer.objects)} objects -> {out}", file=sys.stderr)
    return EXIT_OK


# ---- prompts ---------------------------------------------------------------------------------------------
def _collect_prompts(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Prompts in application order: the --prompts file, then --point/--box grouped per (frame, object)."""
    from segany.errors import InvalidInput

    prompts: list[dict[str, Any]] = []
    if args.prompts:
        try:
            loaded = json.loads(Path(args.prompts).read_text())
        except (OSError, ValueError) as error:
            raise InvalidInput(f"--prompts {args.prompts!r}: {error}", "prompts") from None
        if not isinstance(loaded, list) or not all(isinstance(p, dict) and "frame" in p and "obj_id" in p for p in loaded):
            raise InvalidInput('--prompts must be a JSON list of objects with "frame" and "obj_id"', "prompts")
        base = Path(args.prompts).parent
        for p in loaded:
            if "mask" in p:
                p = {**p, "mask": str(base / p["mask"])}
            prompts.append(p)
    grouped: dict[tuple[int, int], dict[str, Any]] = {}
    for frame, obj, x, y, label in args.point or []:
        entry = grouped.setdefault((frame, obj), {"frame": frame, "obj_id": obj, "points": [], "labels": []})
        entry.setdefault("points", []).append([x, y])
        entry.setdefault("labels", []).append(label)
    for frame, obj, box in args.box or []:
        grouped.setdefault((frame, obj), {"frame": frame, "obj_id": obj})["box"] = list(box)
    prompts += list(grouped.values())
    if not prompts:
        raise InvalidInput("give at least one prompt: --point, --box or --prompts", "prompts")
    return prompts


def _apply(session: Any, prompt: dict[str, Any]) -> None:
    from segany.io.masks import png_to_mask

    frame, obj = prompt["frame"], prompt["obj_id"]
    if "mask" in prompt:
        session.add_mask(frame, obj, png_to_mask(Path(prompt["mask"]).read_bytes()))
    if prompt.get("points") or prompt.get("box") is not None:
        session.add_points(frame, obj, prompt.get("points") or None, prompt.get("labels") if prompt.get("points") else None,
                           box=prompt.get("box"))


# ---- outputs ---------------------------------------------------------------------------------------------
def _write_pngs(folder: Path, result: Any) -> None:
    from segany.io.masks import mask_to_png

    for obj_id, mask in result.to_dict().items():
        target = folder / str(obj_id)
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{result.index:05d}.png").write_bytes(mask_to_png(mask))


def _read_pngs(folder: Path, obj_ids: tuple[int, ...], index: int) -> Any:
    """(N, H, W) bool masks of frame `index`, objects in `obj_ids` order, as `_write_pngs` wrote them."""
    import numpy as np

    from segany.io.masks import png_to_mask

    return np.stack([png_to_mask((folder / str(obj_id) / f"{index:05d}.png").read_bytes(), max_pixels=None)
                     for obj_id in obj_ids])


class _Annotations:
    """YouTube-VIS style COCO video annotations, kept as per-object per-frame lists and saved atomically."""

    def __init__(self, path: Path, video: str, size_hw: tuple[int, int], num_frames: int) -> None:
        self.path = path
        self.video = video
        self.size_hw = size_hw
        self.num_frames = num_frames
        self.objects: dict[int, dict[str, list[Any]]] = {}
        self.frames_done = 0
        self._saved_at = time.monotonic()

    def add(self, result: Any) -> None:
        from segany.io.masks import mask_to_bbox_xyxy
        from segany.io.rle import coco_encode

        for obj_id, mask in result.to_dict().items():
            entry = self.objects.setdefault(obj_id, {k: [None] * self.num_frames for k in ("segmentations", "areas", "bboxes")})
            area = int(mask.sum())
            entry["segmentations"][result.index] = coco_encode(mask) if area else None
            entry["areas"][result.index] = area if area else None
            if area:
                x0, y0, x1, y1 = (float(v) for v in mask_to_bbox_xyxy(mask))
                entry["bboxes"][result.index] = [x0, y0, x1 - x0, y1 - y0]
        self.frames_done += 1
        if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        from segany.io.files import write_bytes_atomic

        h, w = self.size_hw
        document = {
            "info": {"description": "segany track", "tracked_frames": self.frames_done},
            "videos": [{"id": 1, "name": Path(self.video).name, "width": w, "height": h, "length": self.num_frames}],
            "categories": [{"id": 1, "name": "object"}],
            "annotations": [
                {"id": obj_id, "video_id": 1, "category_id": 1, "iscrowd": 0, "width": w, "height": h, **entry}
                for obj_id, entry in self.objects.items()
            ],
        }
        write_bytes_atomic(self.path, json.dumps(document).encode())
        self._saved_at = time.monotonic()


class _Overlay:
    """The video's frames with coloured masks, H.264 in an mp4 (odd sizes are padded by a pixel)."""

    def __init__(self, path: Path, size_hw: tuple[int, int], fps: float) -> None:
        import av
        from fractions import Fraction

        self._av = av
        self._container = av.open(str(path), "w")
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        h, w = size_hw
        self._stream.height, self._stream.width = h + h % 2, w + w % 2
        self._stream.pix_fmt = "yuv420p"

    def add(self, rgb: Any, masks: Any) -> None:
        """Append one frame: rgb (H, W, 3) uint8 and its (N, H, W) bool masks, one colour per object."""
        import numpy as np

        from segany.io.masks import overlay_masks

        drawn = overlay_masks(rgb, masks) if len(masks) else rgb
        h, w = drawn.shape[:2]
        if (h % 2, w % 2) != (0, 0):
            drawn = np.pad(drawn, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(np.ascontiguousarray(drawn), format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


def _video_fps(video: str) -> float:
    if Path(video).is_dir():
        return 25.0
    import av

    with av.open(video) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else 25.0


def _expected_frames(num_frames: int, start: int, args: argparse.Namespace) -> int:
    left = (start + 1 if start > 0 else 0) if args.reverse else num_frames - start
    return min(left, args.max_frames) if args.max_frames else left


def _progress(total: int | None, wanted: bool | None) -> Any:
    from tqdm import tqdm

    show = sys.stderr.isatty() if wanted is None else wanted
    return tqdm(total=total, desc="track", unit="frame", disable=not show, file=sys.stderr)
