"""Time segany's `embed` and `predict` against Hugging Face transformers' `Sam2Model` in the same process.

    python bench/bench_predictor.py [--variants tiny,base_plus] [--dtypes float32,bfloat16] [--repeats N] [--skip-hf]

Both models get the same deterministic random SAM 2.1 checkpoint (../shared/tools/random_sam2_checkpoint.py,
seed 0): segany loads it as an official `.pt`, and `official_to_hf` maps its keys onto `Sam2Model`. Before
timing, both decode one prompt and the IoU scores are compared, so the two run the same network.

What is timed (median of --repeats after one warm-up call; segany and HF calls alternate):
  embed       segany `Predictor.embed(rgb uint8 array)`; HF: the same preprocessing written here (HF's fast
              image processor needs torchvision, which this environment cannot import) + `get_image_embeddings`.
  predict-1   one positive point, multimask output, masks upsampled to the image size and thresholded.
  predict-64  64 boxes in one batch, single-mask output, same post-processing (the `/prompt` row divides by 64).
HF gets `attn_implementation="sdpa"` and, for bfloat16, its weights cast with `.to(torch.bfloat16)`
(`--hf-bf16 autocast` runs float32 weights under CPU autocast instead; on a loaded 2-core machine the two
timed the same). Ratio = HF / segany: > 1 means segany is faster.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import segany
from segany.model.variants import VariantSpec, get_variant
from segany.model.weights import VIDEO_ONLY_PREFIXES, cpu_supports_bf16, read_checkpoint

from _common import IMAGES, print_table, random_checkpoint, time_interleaved

SHORT_NAMES = {"tiny": "sam2.1_hiera_tiny", "small": "sam2.1_hiera_small",
               "base_plus": "sam2.1_hiera_base_plus", "large": "sam2.1_hiera_large"}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BATCH = 64
# fp32 IoU scores of the two models agree this closely when the weights were mapped correctly.
SCORE_TOLERANCE = 1e-3

# ---- checkpoint conversion -------------------------------------------------------------------------

# (official prefix regex, HF prefix), first match wins.
_PREFIXES = (
    (r"image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"no_mem_embed$", "no_memory_embedding"),
    (r"sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "prompt_encoder.shared_embedding.positional_embedding"),
    (r"sam_prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"sam_prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"sam_prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"sam_prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"sam_prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"sam_prompt_encoder\.", "prompt_encoder."),
    (r"sam_mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"sam_mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"sam_mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"sam_mask_decoder\.", "mask_decoder."),
)
# Official MLPs keep all linears in `layers.i`; HF names the first `proj_in`, the last `proj_out`.
_MLP = re.compile(
    r"(^|\.)(mlp|output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.layers\.(\d+)\."
)


def _rename_mlp(match: re.Match) -> str:
    depth = 2 if match.group(2) == "mlp" else 3  # block MLPs have 2 linears, the decoder heads 3
    i = int(match.group(3))
    name = "proj_in" if i == 0 else "proj_out" if i == depth - 1 else f"layers.{i - 1}"
    return f"{match.group(1)}{match.group(2)}.{name}."


def official_to_hf(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official SAM 2 image-path keys -> `Sam2Model` state dict. Video-only entries are dropped."""
    out: dict[str, torch.Tensor] = {}
    point_rows: dict[int, torch.Tensor] = {}
    for key, value in official.items():
        if any(key.startswith(p) if p.endswith(".") else key == p for p in VIDEO_ONLY_PREFIXES):
            continue
        point = re.fullmatch(r"sam_prompt_encoder\.point_embeddings\.(\d+)\.weight", key)
        if point:  # four (1, 256) tables in the official model, one (4, 256) table in HF
            point_rows[int(point.group(1))] = value
            continue
        new = key
        for pattern, repl in _PREFIXES:
            if re.match(pattern, key):
                new = re.sub("^" + pattern, repl, key)
                break
        new = new.replace(".patch_embed.proj.", ".patch_embed.projection.")
        new = re.sub(r"\.norm(\d)\.", r".layer_norm\1.", new)
        new = new.replace(".norm_final_attn.", ".layer_norm_final_attn.").replace(".out_proj.", ".o_proj.")
        out[_MLP.sub(_rename_mlp, new)] = value
    out["prompt_encoder.point_embed.weight"] = torch.cat([point_rows[i] for i in sorted(point_rows)])
    # HF keeps a second copy of the Fourier matrix for the image-wide positional encoding.
    out["shared_image_embedding.positional_embedding"] = out["prompt_encoder.shared_embedding.positional_embedding"]
    return out


def hf_config(spec: VariantSpec):
    """A `Sam2Config` with the same trunk, neck, prompt encoder and decoder as segany's `spec`."""
    from transformers import Sam2Config
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    h = spec.hiera
    n = len(h.stages)
    backbone = Sam2HieraDetConfig(
        hidden_size=h.embed_dim, num_attention_heads=h.num_heads, image_size=[spec.image_size] * 2,
        blocks_per_stage=list(h.stages), embed_dim_per_stage=h.channels,
        num_attention_heads_per_stage=[int(h.num_heads * h.head_mul**i) for i in range(n)],
        window_size_per_stage=list(h.window_spec), global_attention_blocks=list(h.global_att_blocks),
        window_positional_embedding_background_size=list(h.window_pos_embed_bkg_spatial_size),
        num_query_pool_stages=h.q_pool, query_stride=list(h.q_stride), mlp_ratio=h.mlp_ratio,
    )
    grid = spec.image_size // 16
    vision = Sam2VisionConfig(
        backbone_config=backbone, backbone_channel_list=spec.backbone_channel_list, fpn_hidden_size=spec.d_model,
        backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2], fpn_top_down_levels=[2, 3],
    )
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": spec.d_model, "image_size": spec.image_size, "patch_size": 16},
        mask_decoder_config={"hidden_size": spec.d_model},
    )


def build_hf_model(spec: VariantSpec, checkpoint, dtype: torch.dtype):
    """`Sam2Model` with `checkpoint`'s weights (strict), eval mode, in `dtype`."""
    from transformers import Sam2Model

    model = Sam2Model._from_config(hf_config(spec), attn_implementation="sdpa")
    model.load_state_dict(official_to_hf(read_checkpoint(checkpoint)), strict=True)
    return model.eval().requires_grad_(False).to(dtype)


# ---- the timed calls -------------------------------------------------------------------------------

def preprocess_for_hf(rgb: np.ndarray, size: int, dtype: torch.dtype) -> torch.Tensor:
    """HxWx3 uint8 -> (1, 3, size, size) `pixel_values`: [0, 1], antialiased bilinear resize, ImageNet norm."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)


def upsample_masks(low_res: torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
    """(B, C, 256, 256) logits -> (B, C, H, W) bool, as segany's predict does for its output."""
    return (F.interpolate(low_res.float(), size=size_hw, mode="bilinear", align_corners=False) > 0).numpy()


@dataclass(frozen=True)
class Prompts:
    """The benchmark's prompts for one image: one click and a batch of boxes."""

    point_xy: np.ndarray  # (1, 2) pixels of the original image
    boxes_xyxy: np.ndarray  # (BATCH, 4) pixels of the original image
    size_hw: tuple[int, int]

    def to_model_frame(self, xy: np.ndarray, image_size: int) -> torch.Tensor:
        """Pixel coordinates (..., 2k) -> the image_size x image_size model frame (HF takes them there)."""
        h, w = self.size_hw
        scale = np.array([image_size / w, image_size / h] * (xy.shape[-1] // 2), dtype=np.float32)
        return torch.from_numpy(xy.astype(np.float32) * scale)


def make_prompts(size_hw: tuple[int, int], seed: int = 0) -> Prompts:
    """A click near the centre and BATCH seeded random boxes (10-30% of each side) inside an image of size_hw."""
    h, w = size_hw
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, 0.7 * w, BATCH)
    y0 = rng.uniform(0, 0.7 * h, BATCH)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0.1, 0.3, BATCH) * w, y0 + rng.uniform(0.1, 0.3, BATCH) * h], axis=1)
    return Prompts(np.array([[0.45 * w, 0.4 * h]], np.float32), boxes.astype(np.float32), size_hw)


def segany_calls(predictor: segany.Predictor, rgb: np.ndarray, prompts: Prompts) -> dict[str, Callable]:
    """The timed segany calls by op name; the predict calls return their IoU scores for the score check."""
    emb = predictor.embed(rgb)
    return {
        "embed": lambda: predictor.embed(rgb),
        "predict-1": lambda: predictor.predict(emb, point_coords=prompts.point_xy, point_labels=np.array([1]),
                                               multimask_output=True).scores,
        "predict-64": lambda: predictor.predict(emb, box=prompts.boxes_xyxy, multimask_output=False).scores,
    }


def hf_calls(
    model, rgb: np.ndarray, prompts: Prompts, image_size: int, autocast: torch.dtype | None
) -> dict[str, Callable]:
    """The timed HF calls; `autocast` None runs the model in its own dtype, else under CPU autocast to it."""
    dtype = next(model.parameters()).dtype

    def mode():
        if autocast is None:
            return torch.inference_mode()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast("cpu", dtype=autocast))
        return stack

    def embed():
        with mode():
            return model.get_image_embeddings(preprocess_for_hf(rgb, image_size, dtype))

    embeddings = embed()
    point = prompts.to_model_frame(prompts.point_xy, image_size)[None, None]  # (1, 1, 1, 2)
    boxes = prompts.to_model_frame(prompts.boxes_xyxy, image_size)[None]  # (1, 64, 4)

    def predict(**prompt) -> np.ndarray:
        with mode():
            out = model(image_embeddings=embeddings, **prompt)
            upsample_masks(out.pred_masks[0], prompts.size_hw)
            return out.iou_scores[0].float().numpy()

    return {
        "embed": embed,
        "predict-1": lambda: predict(input_points=point, input_labels=torch.ones(1, 1, 1, dtype=torch.int32),
                                     multimask_output=True)[0],
        "predict-64": lambda: predict(input_boxes=boxes, multimask_output=False),
    }


def bench_one(variant: str, dtype: torch.dtype, rgb: np.ndarray, repeats: int, skip_hf: bool,
              hf_autocast: bool = False) -> list[list]:
    """Table rows for one variant and dtype: check both models agree, then time each op."""
    spec = get_variant(variant)
    checkpoint = random_checkpoint(variant)
    prompts = make_prompts(rgb.shape[:2])
    predictor = segany.Predictor(segany.load_model(variant, checkpoint=checkpoint, device="cpu", dtype=dtype))
    ours = segany_calls(predictor, rgb, prompts)
    theirs = None
    if not skip_hf:
        autocast = dtype if hf_autocast and dtype != torch.float32 else None
        hf_model = build_hf_model(spec, checkpoint, torch.float32 if autocast else dtype)
        theirs = hf_calls(hf_model, rgb, prompts, spec.image_size, autocast)

    score_gap: dict[str, float | None] = {"embed": None, "predict-1": None, "predict-64": None}
    for op in ("predict-1", "predict-64"):
        if theirs is not None:
            score_gap[op] = float(np.abs(ours[op]().reshape(-1) - theirs[op]().reshape(-1)).max())
    if dtype == torch.float32 and theirs is not None and score_gap["predict-1"] > SCORE_TOLERANCE:
        print(f"WARNING {variant}: float32 IoU scores differ by {score_gap['predict-1']:.2e}; "
              "the HF model does not run the same weights", file=sys.stderr)

    rows = []
    name = variant.replace("sam2.1_hiera_", "")
    dtype_name = str(dtype).replace("torch.", "")
    if predictor.model.compiled_encoder is not None:  # load_model's encoder_runtime picked OpenVINO here
        dtype_name += " openvino"
    for op in ("embed", "predict-1", "predict-64"):
        contenders = {"segany": ours[op]} if theirs is None else {"segany": ours[op], "hf": theirs[op]}
        timings = time_interleaved(contenders, repeats)
        ms = timings["segany"].median_ms
        hf_ms = timings["hf"].median_ms if "hf" in timings else None
        rows.append([name, dtype_name, op, ms, hf_ms, None if hf_ms is None else hf_ms / ms, score_gap[op]])
        if op == "predict-64":
            rows.append([name, dtype_name, "  /prompt", ms / BATCH, None if hf_ms is None else hf_ms / BATCH,
                         None if hf_ms is None else hf_ms / ms, None])
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="tiny,base_plus",
                    help="comma list: tiny, small, base_plus, large (SAM 2.1) or full variant names")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma list of float32, bfloat16")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    ap.add_argument("--skip-hf", action="store_true", help="time segany only")
    ap.add_argument("--hf-bf16", choices=("cast", "autocast"), default="cast",
                    help="how HF runs bfloat16: weights cast to bf16, or float32 weights under CPU autocast")
    ap.add_argument("--image", default=str(IMAGES / "astronaut.png"), help="image to embed (default astronaut.png)")
    args = ap.parse_args(argv)

    variants = [SHORT_NAMES.get(v.strip(), v.strip()) for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if get_variant(v) is None:
            ap.error(f"--variants: unknown variant {v!r}")
    try:
        dtypes = [DTYPES[d.strip().lower()] for d in args.dtypes.split(",") if d.strip()]
    except KeyError as exc:
        ap.error(f"--dtypes: unknown dtype {exc.args[0]!r} (float32 or bfloat16)")
    rgb = np.array(Image.open(args.image).convert("RGB"))  # writable: torch.from_numpy warns on read-only arrays

    hf_version = "skipped"
    if not args.skip_hf:
        import transformers

        hf_version = transformers.__version__
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {hf_version}, "
          f"CPU bf16: {cpu_supports_bf16()}, image {args.image} {rgb.shape[1]}x{rgb.shape[0]}, "
          f"median of {args.repeats} after 1 warm-up", flush=True)
    if not args.skip_hf:
        print("HF Sam2Model: weights converted from the same random checkpoint; pixel_values preprocessed here "
              f"(no torchvision); bf16 via {args.hf_bf16}; "
              "'score gap' = max |IoU score difference| between the two", flush=True)

    rows = []
    for variant in variants:
        for dtype in dtypes:
            rows.extend(bench_one(variant, dtype, rgb, args.repeats, args.skip_hf, args.hf_bf16 == "autocast"))
    print()
    print_table(["variant", "dtype", "op", "segany ms", "HF ms", "HF/segany", "score gap"], rows)


if __name__ == "__main__":
    main()
