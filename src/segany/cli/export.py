"""`segany export onnx-decoder`: the prompt encoder + mask decoder as ONNX, for CVAT's SAM 2.1 browser plugin.

The graph is traced from segany's own torch modules (`SAM2ImageModel.decode`), so there is one model
definition; it is always exported in float32 from CPU (--device and --dtype do not apply). Inputs and
outputs carry the names CVAT's plugin (`cvat-ui/plugins/sam2`) feeds and reads:

inputs   image_embed (1, 256, 64, 64), high_res_feats_0 (1, 32, 256, 256), high_res_feats_1 (1, 64, 128, 128)
         float32 — what segany's CVAT function returns per image;
         point_coords (1, N, 2) float32: pixels scaled by 1024 / max(H, W) (the plugin's frame);
         point_labels (1, N) float32: 1 positive, 0 negative, 2 / 3 box corners, -1 padding;
         mask_input (1, 1, 256, 256) float32 low-res logits, used when has_mask_input (1,) is 1;
         orig_im_size (2,) int32: H, W.
outputs  masks (1, 1, H, W) logits of the best of the three masks (positive = inside);
         low_res_masks (1, 1, 256, 256) its low-res logits (the plugin's next mask_input);
         iou_predictions (1, 3) predicted IoU of the three; xtl, ytl, xbr, ybr (int32) the best mask's bounds.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segany.cli import options as opts

INPUT_NAMES = ("image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels", "mask_input",
               "has_mask_input", "orig_im_size")
OUTPUT_NAMES = ("masks", "low_res_masks", "iou_predictions", "xtl", "ytl", "xbr", "ybr")
OPSET = 17
PLUGIN_LONG_SIDE = 1024.0  # the plugin scales clicks so the image's longest side is 1024


class OnnxDecoder(nn.Module):
    """`SAM2ImageModel.decode` (multimask) with the plugin's coordinate frame and outputs; float32 only."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.image_size = float(model.image_size)

    def forward(self, image_embed: torch.Tensor, high_res_feats_0: torch.Tensor, high_res_feats_1: torch.Tensor,
                point_coords: torch.Tensor, point_labels: torch.Tensor, mask_input: torch.Tensor,
                has_mask_input: torch.Tensor, orig_im_size: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = orig_im_size.to(torch.float32)
        height, width = size[0], size[1]
        # Plugin frame (longest side scaled to 1024, aspect kept) -> the model's square S x S frame.
        longest = torch.maximum(height, width)
        scale = torch.stack([longest / width, longest / height]) * (self.image_size / PLUGIN_LONG_SIDE)
        coords = point_coords * scale
        labels = point_labels.round().to(torch.int32)
        pe = self.model.prompt_encoder
        sparse = pe.embed_points(coords, labels)
        has = has_mask_input.reshape(1, 1, 1, 1)
        dense = has * pe.embed_masks(mask_input) + (1 - has) * pe.no_mask_dense(1)
        out = self.model.mask_decoder(image_embed, pe.dense_pe(), sparse, dense, (high_res_feats_0, high_res_feats_1),
                                      True)
        best = torch.argmax(out.iou[0])
        low_res = out.low_res_logits[:, best].unsqueeze(1)  # (1, 1, 256, 256)
        masks = F.interpolate(low_res, size=(orig_im_size[0], orig_im_size[1]), mode="bilinear", align_corners=False)
        inside = masks[0, 0] > 0
        xtl, xbr = _bounds(inside.any(dim=0))
        ytl, ybr = _bounds(inside.any(dim=1))
        return masks, low_res, out.iou, xtl, ytl, xbr, ybr


def _bounds(present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last True index of a 1-D bool vector (0, 0 when none)."""
    as_int = present.to(torch.int32)
    first = torch.argmax(as_int)
    last = present.shape[0] - 1 - torch.argmax(torch.flip(as_int, dims=[0]))
    found = as_int.max() > 0
    zero = torch.zeros_like(first)
    return torch.where(found, first, zero).to(torch.int32), torch.where(found, last, zero).to(torch.int32)


def example_inputs(points: int = 2) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(1, 256, 64, 64), torch.zeros(1, 32, 256, 256), torch.zeros(1, 64, 128, 128),
            torch.full((1, points, 2), 100.0), torch.ones(1, points), torch.zeros(1, 1, 256, 256), torch.zeros(1),
            torch.tensor([480, 640], dtype=torch.int32))


def export_onnx_decoder(model: Any, out: str | Path, opset: int = OPSET) -> Path:
    """Write the decoder of `model` (a float32 `SAM2ImageModel` on CPU) to `out` as ONNX."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The wrapper goes into eval mode itself: the exporter puts the module it is given back into that
    # module's own mode afterwards, and a wrapper left in training mode would switch the caller's model with it.
    decoder = OnnxDecoder(model.float().cpu().eval()).eval()
    axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}, "masks": {2: "height", 3: "width"}}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter (deprecated, not gone) keeps the output size a function of orig_im_size (a
        # dynamic Resize). Its trace warnings are about batch-size branches, and the batch is always 1 here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(decoder, example_inputs(), str(out), input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=axes, opset_version=opset, dynamo=False)
    return out


def cmd_export_onnx_decoder(args: argparse.Namespace) -> int:
    import segany
    from segany.errors import MissingExtra

    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise MissingExtra("segany export onnx-decoder needs the onnx extra: pip install 'segany[onnx]'") from None
    model = segany.load_model(args.model, checkpoint=args.checkpoint, device="cpu", dtype=torch.float32)
    out = args.out or f"{model.variant}.decoder.onnx"
    path = export_onnx_decoder(model, out, args.opset)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): the decoder of {model.variant}; use it with "
          f"embeddings from the same model", file=sys.stderr)
    return 0


def add_export_parser(commands: Any, subparser: Callable[..., argparse.ArgumentParser]) -> None:
    """`segany export ...` (called by `segany.cli.main.build_parser`)."""
    export = subparser(commands, "export", lambda args: export.print_help() or 2, "export model parts (ONNX)",
                       "Export parts of a model for other runtimes.")
    kinds = export.add_subparsers(dest="export_kind", metavar="KIND")
    decoder = kinds.add_parser("onnx-decoder", help="the prompt decoder as ONNX for CVAT's SAM 2.1 plugin",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    decoder.set_defaults(handler=cmd_export_onnx_decoder)
    decoder.add_argument("--out", default=None, help="ONNX file to write (default: VARIANT.decoder.onnx)")
    decoder.add_argument("--opset", type=int, default=OPSET, help="ONNX opset")
    decoder.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failures")
    opts.add_model_options(decoder, image_encoder=False)
