"""Track 2 objects through a synthetic clip with segany's `VideoPredictor`, beside transformers' `Sam2VideoModel`.

    python bench/bench_video.py [--variant tiny] [--frames 300] [--size 640x360] [--hf-frames 10] [--skip-hf]

The clip is a camera pan over a fixture photo (scaled up to cover the frame), made here and handed to segany
as a generator, so frames are produced, decoded and spooled lazily as tracking reaches them. Two objects are
prompted on frame 0 (a click and a box) and tracked to the end. Printed, all from this one run:
  - the CPU ISA torch dispatches to (`torch.backends.cpu.get_cpu_capability()`) and torch's thread count;
  - peak RSS after frame 10 and at the end: segany keeps only the memories attention needs, so it stays
    flat (the check fails the run if it grows by more than 150 MB);
  - seconds per tracked frame against one embed + one decode measured in the same process (a tracked frame
    is one embed plus, per object, memory attention, a decode and the memory encoder);
  - the FLOPs of one tracked frame with a full memory bank (frame 20) by stage (image encoder, memory attention,
    mask decoder, memory encoder; torch's `FlopCounterMode`), its GFLOP/s, and its FLOP ratio to one embed +
    decode beside the time ratio: the FLOP ratio is the floor the time ratio cannot go below at equal speed;
  - transformers' `Sam2VideoModel` on the same frames and the same random weights (converted), streamed
    frame by frame and interleaved with segany (frame t by one, then the other) for the first `--hf-frames`
    frames, compared with segany over those same frames; the largest logit gap between the two on frame 0
    shows they run the same network. Skipped with a printed reason when transformers cannot run it.
"""
from __future__ import annotations

import argparse
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import IMAGES, counting_flops, print_table  # noqa: E402

import segany  # noqa: E402
from segany.model.variants import VariantSpec, get_variant  # noqa: E402
from segany.model.weights import VIDEO_ONLY_PREFIXES, read_checkpoint  # noqa: E402

RSS_GROWTH_LIMIT_MB = 150.0
CLICK_XY = (300.0, 150.0)
BOX_XYXY = (60.0, 200.0, 260.0, 340.0)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ---- FLOPs --------------------------------------------------------------------------------------------------
# The model methods a tracked frame runs, by stage: one embed, then per object memory attention, a decode and
# the memory encoder.
FLOP_STAGES = (("image encoder", "embed_frame"), ("memory attention", "condition"), ("mask decoder", "heads"),
               ("memory encoder", "encode_memory"))
PROGRESS_EVERY = 10  # frames between progress lines
FLOP_FRAME = 20  # a frame whose bank is full (7 memories by frame 7, 16 pointers by frame 16)


class StageFlops:
    """While active, counts the FLOPs (torch `FlopCounterMode`, 2 per multiply-add) of each model stage called.

    The stage methods are wrapped on the model instance for the duration, so only this run's calls count.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.flops = {stage: 0 for stage, _ in FLOP_STAGES}

    def __enter__(self) -> StageFlops:
        for stage, method in FLOP_STAGES:
            setattr(self.model, method, self._counted(stage, getattr(self.model, method)))
        return self

    def __exit__(self, *exc) -> None:
        for _, method in FLOP_STAGES:
            delattr(self.model, method)  # the class's method shows through again

    def _counted(self, stage: str, method: Callable) -> Callable:
        def run(*args, **kwargs):
            with counting_flops() as counter:
                out = method(*args, **kwargs)
            self.flops[stage] += counter.get_total_flops()
            return out

        return run

    @property
    def total(self) -> int:
        return sum(self.flops.values())


def pan_clip(frames: int, size_wh: tuple[int, int], image: Path) -> Iterator[np.ndarray]:
    """Frame t is the size_wh window of the photo (scaled to cover twice the frame) at a bouncing pan offset."""
    w, h = size_wh
    photo = Image.open(image).convert("RGB")
    scale = max(2 * w / photo.width, 2 * h / photo.height)
    big = np.asarray(photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC))
    span_x, span_y = big.shape[1] - w, big.shape[0] - h
    for t in range(frames):
        x = abs((3 * t) % (2 * span_x) - span_x)
        y = abs((t % (2 * span_y)) - span_y)
        yield big[y : y + h, x : x + w].copy()


def random_video_checkpoint(variant: str) -> Path:
    """The variant's random checkpoint with the object-score bias the video goldens use (objects stay present)."""
    import subprocess
    import tempfile

    from _common import CHECKPOINT_TOOL, checkpoint_cache_dir

    path = checkpoint_cache_dir() / f"{variant}-seed0-video.pt"
    if not path.is_file():
        partial = Path(tempfile.mktemp(dir=path.parent, prefix=f".{path.name}."))
        subprocess.run([sys.executable, str(CHECKPOINT_TOOL), variant, str(partial), "--object-score-bias", "3.0"],
                       check=True, capture_output=True)
        partial.replace(path)
    return path


# ---- segany -------------------------------------------------------------------------------------------------
def prompt_frame0(session, size_wh: tuple[int, int]):
    """Object 1: a click; object 2: a box (both placed relative to the frame size); returns frame 0's result."""
    w, h = size_wh
    session.add_points(0, 1, [[CLICK_XY[0] * w / 640, CLICK_XY[1] * h / 360]], [1])
    return session.add_box(0, 2, [v * (w / 640 if i % 2 == 0 else h / 360) for i, v in enumerate(BOX_XYXY)])


def track(model, hf: HfTracker | None, frames: int, hf_frames: int, size_wh: tuple[int, int],
          image: Path) -> dict:
    """Track the clip with segany; transformers, when given, steps through the same frames in turn (frame t
    by segany, then by transformers) for its first `hf_frames`, so load drifting on a shared machine hits both."""
    session = segany.VideoPredictor(model).start(pan_clip(frames, size_wh, image))
    first = prompt_frame0(session, size_wh)
    hf_clip = pan_clip(hf_frames, size_wh, image) if hf is not None else iter(())
    times: list[float] = []
    hf_times: list[float] = []
    rss_at_10 = None
    results = session.propagate()
    flop_frame = min(FLOP_FRAME, frames - 1)
    flops = StageFlops(model)
    for t in range(frames):
        start = time.perf_counter()
        if t == flop_frame:  # counted, not timed: the counter's dispatch costs time
            with flops:
                result = next(results)
        else:
            result = next(results)
            times.append(time.perf_counter() - start)
        rgb = next(hf_clip, None)
        if rgb is not None:
            hf_times.append(hf.step(rgb))  # type: ignore[union-attr]
        if result.index == 10:
            rss_at_10 = peak_rss_mb()
        if t % PROGRESS_EVERY == 0 and len(times) > 1:  # a long run that is cut short still leaves numbers
            print(f"  frame {t}: {statistics.median(times[1:]):.2f} s/frame (median so far), peak RSS "
                  f"{peak_rss_mb():.1f} MB", flush=True)
    # Frame 0 is the prompted frame (no tracking): left out of the per-frame times.
    return {"first": first, "times": times[1:], "hf_times": hf_times[1:], "rss_10": rss_at_10, "rss_end": peak_rss_mb(),
            "state_mb": session.state_nbytes / 2**20, "frames": frames, "flops": flops, "flop_frame": flop_frame}


def embed_and_decode(model, rgb: np.ndarray, repeats: int) -> tuple[float, float, StageFlops]:
    """Median seconds of one frame embed (preprocess + image encoder) and one prompt decode on it, and the
    FLOPs of one of each (counted on an extra, untimed repeat)."""
    embeds, decodes = [], []
    flops = StageFlops(model)
    coords = torch.tensor([[[CLICK_XY[0] / 640 * 1024, CLICK_XY[1] / 360 * 1024]]])
    labels = torch.ones(1, 1, dtype=torch.int32)
    with torch.inference_mode():
        for _ in range(repeats):
            t = time.perf_counter()
            feats = model.embed_frame(model.preprocess_frame(rgb))
            embeds.append(time.perf_counter() - t)
            pix = model.no_memory(feats.top)
            t = time.perf_counter()
            model.heads(pix, feats.high_res, coords, labels, None, True)
            decodes.append(time.perf_counter() - t)
        with flops:
            feats = model.embed_frame(model.preprocess_frame(rgb))
            model.heads(model.no_memory(feats.top), feats.high_res, coords, labels, None, True)
    return statistics.median(embeds), statistics.median(decodes), flops


# ---- transformers -------------------------------------------------------------------------------------------
# Video-only keys: official name -> Sam2VideoModel name (the image keys go through bench_predictor.official_to_hf).
_HF_VIDEO_RENAMES = (
    (r"^no_mem_pos_enc$", "no_memory_positional_encoding"),
    (r"^maskmem_tpos_enc$", "memory_temporal_positional_encoding"),
    (r"^no_obj_ptr$", "no_object_pointer"),
    (r"^no_obj_embed_spatial$", "occlusion_spatial_embedding_parameter"),
    (r"^obj_ptr_tpos_proj\.", "temporal_positional_encoding_projection_layer."),
    (r"^obj_ptr_proj\.layers\.0\.", "object_pointer_proj.proj_in."),
    (r"^obj_ptr_proj\.layers\.1\.", "object_pointer_proj.layers.0."),
    (r"^obj_ptr_proj\.layers\.2\.", "object_pointer_proj.proj_out."),
    (r"\.out_proj\.", ".o_proj."),
    (r"^memory_attention\.layers\.(\d+)\.norm(\d)\.", r"memory_attention.layers.\1.layer_norm\2."),
    (r"^memory_attention\.norm\.", "memory_attention.layer_norm."),
    (r"^memory_encoder\.mask_downsampler\.encoder\.12\.", "memory_encoder.mask_downsampler.final_conv."),
    (r"^memory_encoder\.pix_feat_proj\.", "memory_encoder.feature_projection."),
    (r"^memory_encoder\.out_proj\.", "memory_encoder.projection."),
    (r"^memory_encoder\.o_proj\.", "memory_encoder.projection."),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.gamma$", r"memory_encoder.memory_fuser.layers.\1.scale"),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.dwconv\.", r"memory_encoder.memory_fuser.layers.\1.depthwise_conv."),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.norm\.", r"memory_encoder.memory_fuser.layers.\1.layer_norm."),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.pwconv(\d)\.", r"memory_encoder.memory_fuser.layers.\1.pointwise_conv\2."),
)


def official_to_hf_video(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from bench_predictor import official_to_hf

    out = official_to_hf(official)
    for key, value in official.items():
        if not any(key.startswith(p) if p.endswith(".") else key == p for p in VIDEO_ONLY_PREFIXES):
            continue
        new = key
        downsampler = re.match(r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.(.*)$", key)
        if downsampler and downsampler.group(1) != "12":  # conv, LayerNorm2d, GELU repeated: index // 3, kind index % 3
            i = int(downsampler.group(1))
            new = f"memory_encoder.mask_downsampler.layers.{i // 3}.{'conv' if i % 3 == 0 else 'layer_norm'}.{downsampler.group(2)}"
        else:
            for pattern, repl in _HF_VIDEO_RENAMES:
                new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def build_hf_video_model(spec: VariantSpec, checkpoint: Path):
    from bench_predictor import hf_config
    from transformers import Sam2VideoConfig, Sam2VideoModel

    image_cfg = hf_config(spec)
    cfg = Sam2VideoConfig(vision_config=image_cfg.vision_config.to_dict(),
                          prompt_encoder_config=image_cfg.prompt_encoder_config.to_dict(),
                          mask_decoder_config=image_cfg.mask_decoder_config.to_dict(),
                          enable_occlusion_spatial_embedding=spec.video.no_obj_embed_spatial,
                          enable_temporal_pos_encoding_for_object_pointers=spec.video.add_tpos_enc_to_obj_ptrs)
    model = Sam2VideoModel._from_config(cfg, attn_implementation="sdpa")
    missing, unexpected = model.load_state_dict(official_to_hf_video(read_checkpoint(checkpoint)), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto Sam2VideoModel: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval().requires_grad_(False)


class HfTracker:
    """transformers' `Sam2VideoModel` fed the same preprocessed frames one by one (streaming session), with the
    same two prompts on frame 0."""

    def __init__(self, hf_model, seg_model, size_wh: tuple[int, int]) -> None:
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        w, h = size_wh
        self.model, self.seg_model, self.size_wh = hf_model, seg_model, size_wh
        self.session = Sam2VideoInferenceSession(video=None, video_height=h, video_width=w, inference_device="cpu",
                                                 inference_state_device="cpu", video_storage_device="cpu",
                                                 dtype=torch.float32)
        s = 1024.0  # prompts in the model frame, as HF's processor would send them
        click = torch.tensor([[[[CLICK_XY[0] / 640 * s, CLICK_XY[1] / 360 * s]]]])
        box = torch.tensor([[[[BOX_XYXY[0] / 640 * s, BOX_XYXY[1] / 360 * s],
                              [BOX_XYXY[2] / 640 * s, BOX_XYXY[3] / 360 * s]]]])
        for obj_id, coords, labels in ((1, click, [[[1]]]), (2, box, [[[2, 3]]])):
            idx = self.session.obj_id_to_idx(obj_id)
            self.session.add_point_inputs(idx, 0, {"point_coords": coords,
                                                   "point_labels": torch.tensor(labels, dtype=torch.int32)})
        self.session.obj_with_new_inputs = [1, 2]
        self.first: np.ndarray | None = None

    def step(self, rgb: np.ndarray) -> float:
        """Track the next frame; returns its seconds (preprocessing included, as on segany's side)."""
        with torch.inference_mode():
            start = time.perf_counter()
            out = self.model(inference_session=self.session, frame=self.seg_model.preprocess_frame(rgb)[0])
            seconds = time.perf_counter() - start
        if self.first is None:
            h, w = self.size_wh[1], self.size_wh[0]
            self.first = torch.nn.functional.interpolate(out.pred_masks.float(), size=(h, w), mode="bilinear",
                                                         align_corners=False)[:, 0].numpy()
        return seconds


def print_flops(frame: StageFlops, index: int, image: StageFlops, per_frame_s: float, time_ratio: float) -> None:
    """FLOPs of one tracked frame by stage, and its FLOP ratio to one embed + decode beside the time ratio."""
    rows = [[stage, flops / 1e9, 100.0 * flops / frame.total] for stage, flops in frame.flops.items()]
    rows.append(["tracked frame", frame.total / 1e9, 100.0])
    print(f"FLOPs of tracked frame {index} (torch FlopCounterMode, 2 FLOPs per multiply-add, all objects):")
    print_table(["stage", "GFLOP", "% of frame"], rows)
    reference = image.flops["image encoder"] + image.flops["mask decoder"]
    print(f"one embed + one decode: {image.flops['image encoder'] / 1e9:.1f} + {image.flops['mask decoder'] / 1e9:.1f} "
          f"GFLOP; tracked frame / (embed + decode): FLOPs {frame.total / reference:.2f}x, time {time_ratio:.2f}x; "
          f"tracked frame at {frame.total / per_frame_s / 1e9:.1f} GFLOP/s (median s/frame)")


# ---- main ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="tiny", help="tiny, small, base_plus, large (SAM 2.1) or a full variant name")
    ap.add_argument("--frames", type=int, default=300, help="frames to track (at least 12: RSS is read at frame 10)")
    ap.add_argument("--size", default="640x360", help="frame size WxH")
    ap.add_argument("--hf-frames", type=int, default=10,
                    help="frames transformers tracks, at most 10 (it keeps every frame and output)")
    ap.add_argument("--skip-hf", action="store_true", help="time segany only")
    ap.add_argument("--image", default=str(IMAGES / "astronaut.png"), help="photo the pan runs over")
    args = ap.parse_args(argv)
    if args.frames < 12:
        ap.error("--frames must be at least 12")
    w, h = (int(v) for v in args.size.lower().split("x"))
    name = args.variant if args.variant.startswith("sam2") else f"sam2.1_hiera_{args.variant}"
    spec = get_variant(name)
    if spec is None:
        ap.error(f"unknown variant {args.variant!r}")
    checkpoint = random_video_checkpoint(spec.name)
    print(f"segany video benchmark: {spec.name}, {args.frames} frames of {w}x{h}, 2 objects, float32, "
          f"CPU ISA {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch threads", flush=True)

    model = segany.load_video_model(spec.name, checkpoint=checkpoint, device="cpu", dtype=torch.float32)
    one_frame = next(pan_clip(1, (w, h), Path(args.image)))
    embed_s, decode_s, image_flops = embed_and_decode(model, one_frame, repeats=3)
    hf, hf_note = None, ""
    if not args.skip_hf:
        try:
            hf = HfTracker(build_hf_video_model(spec, checkpoint), model, (w, h))
        except Exception as exc:  # noqa: BLE001  (any failure of the peer only skips the comparison)
            hf_note = f"transformers Sam2VideoModel skipped: {type(exc).__name__}: {exc}"
    # transformers keeps every frame: it runs only before the frame-10 RSS reading, so segany's growth is its own.
    hf_frames = min(args.hf_frames, 10) if hf is not None else 0
    ours = track(model, hf, args.frames, hf_frames, (w, h), Path(args.image))
    per_frame = statistics.median(ours["times"])
    rows = [["segany", ours["frames"], per_frame, per_frame / (embed_s + decode_s), ours["rss_10"], ours["rss_end"],
             ours["rss_end"] - ours["rss_10"]]]
    if hf is not None and ours["hf_times"]:
        n = len(ours["hf_times"])
        hf_frame = statistics.median(ours["hf_times"])
        same = statistics.median(ours["times"][:n])  # early frames attend to fewer memories: the same frames
        # transformers fills no holes: compare with segany's frame 0 without hole filling.
        plain = prompt_frame0(segany.VideoPredictor(model, fill_hole_area=0).start([one_frame]), (w, h))
        gap = float(np.abs(np.clip(hf.first, -32, 32) - np.clip(plain.logits, -32, 32)).max())
        rows.append([f"segany, frames 1-{n}", n + 1, same, same / (embed_s + decode_s), None, None, None])
        rows.append([f"transformers, frames 1-{n}", n + 1, hf_frame, hf_frame / (embed_s + decode_s), None, None, None])
        hf_note = (f"frame-0 logit gap segany vs transformers: {gap:.4f}; transformers/segany per frame on the same "
                   f"frames, interleaved: {hf_frame / same:.2f} (> 1: segany faster)")
    print(f"one embed {embed_s:.3f} s + one decode {decode_s:.3f} s (same run); segany tracking state at the end: "
          f"{ours['state_mb']:.1f} MB")
    print_table(["tracker", "frames", "s/frame (median)", "x (embed+decode)", "peak RSS @10 MB", "peak RSS end MB",
                 "growth MB"], rows)
    if hf_note:
        print(hf_note)
    print_flops(ours["flops"], ours["flop_frame"], image_flops, per_frame, per_frame / (embed_s + decode_s))
    growth = ours["rss_end"] - ours["rss_10"]
    if growth > RSS_GROWTH_LIMIT_MB:
        print(f"FAIL: peak RSS grew by {growth:.0f} MB between frame 10 and the end (limit {RSS_GROWTH_LIMIT_MB:.0f})")
        return 1
    print(f"peak RSS flat: +{growth:.1f} MB from frame 10 to frame {ours['frames'] - 1} (limit +{RSS_GROWTH_LIMIT_MB:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
