"""SAM 2 mask decoder: two-way transformer over prompt and image tokens, hypernetwork mask heads."""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from segany.model import fused
from segany.model.common import MLP, LayerNorm2d
from segany.model.transformer import TwoWayTransformer


# Prompts decoded together on CPU fast paths: 64 MB of per-prompt image tokens (16 prompts in float32). A
# 64-prompt batch's (B, HW, C) tensors are 268 MB each in float32, past the last-level cache, so each of the
# transformer's elementwise passes over them (position add, residual, LayerNorm) streamed DRAM: chunks of 16
# measured 16.4 -> 13.4 ms a prompt on a 2-core Xeon (480 MB shared L3); bfloat16 was flat.
_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class DecoderOutput:
    low_res_logits: torch.Tensor  # (B, C, 256, 256)
    iou: torch.Tensor  # (B, C), in [0, 1] (sigmoid head)
    object_score_logits: torch.Tensor  # (B, 1); > 0 means "an object is present"
    mask_tokens: torch.Tensor | None = None  # (B, 4, C) mask-token outputs; the video path's object pointers

    @staticmethod
    def cat(parts: list[DecoderOutput]) -> DecoderOutput:
        """The outputs of consecutive prompt chunks as one batch."""
        return DecoderOutput(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(DecoderOutput)))


def _prompt_chunk(image_embed: torch.Tensor) -> int:
    """Prompts per chunk for an image embedding of shape (1, C, h, w)."""
    _, c, h, w = image_embed.shape
    return max(1, _CHUNK_BYTES // (c * h * w * image_embed.element_size()))


def _patch_linear(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2x2 stride-2 transposed convolution as an (out, in) linear weight and bias on single pixels.

    Output features are ordered (row offset, column offset, channel), so each patch position's channels
    are contiguous.
    """
    weight = conv.weight.permute(2, 3, 1, 0).reshape(-1, conv.in_channels)  # (2 * 2 * C_out, C_in)
    return weight.contiguous(), conv.bias.repeat(4)


@functools.lru_cache(maxsize=8)
def _image_order(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(16hw,) int64: for each upscaled pixel in image order, its position in `_masks_by_pixel`'s patch order.

    Patch order is (i, j, a, c, a', c') for token (i, j) and patch offsets (a, c) then (a', c'); image
    order is row 4i + 2a + a', column 4j + 2c + c'. One gather by this index moves a mask into the grid ~5x
    faster than copying through the 7-d permute, whose innermost runs are 2 elements long.
    """
    patch = torch.arange(16 * h * w, device=device).view(h, w, 2, 2, 2, 2)
    return patch.permute(0, 2, 4, 1, 3, 5).reshape(-1).contiguous()


def _same_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` in `like`'s memory format (channels-last or contiguous)."""
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


class MaskDecoder(nn.Module):
    """Parameter names follow `sam_mask_decoder.` in the official checkpoints.

    `conv_s0` / `conv_s1` live here to match the checkpoint, but they project the image encoder's
    high-resolution levels and so run once per image (`project_high_res`), not once per prompt.
    """

    def __init__(
        self,
        transformer_dim: int = 256,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        dynamic_multimask_via_stability: bool = True,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
    ) -> None:
        super().__init__()
        d = transformer_dim
        self.transformer = TwoWayTransformer(depth=2, embedding_dim=d, num_heads=8, mlp_dim=2048)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, d)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        self.obj_score_token = nn.Embedding(1, d)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(d, d // 4, kernel_size=2, stride=2),
            LayerNorm2d(d // 4),
            nn.GELU(),
            nn.ConvTranspose2d(d // 4, d // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(d, d // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(d, d // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(d, d, d // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(d, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth, sigmoid_output=True)
        self.pred_obj_score_head = MLP(d, d, 1, 3)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.stability_delta = dynamic_multimask_stability_delta
        self.stability_thresh = dynamic_multimask_stability_thresh

    def project_high_res(self, level0: torch.Tensor, level1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FPN levels at 256x256 and 128x128 -> (32, 256, 256) and (64, 128, 128) channel features."""
        return self.conv_s0(level0), self.conv_s1(level1)

    def forward(
        self,
        image_embed: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompts: torch.Tensor,
        dense_prompts: torch.Tensor,
        high_res_feats: tuple[torch.Tensor, torch.Tensor],
        multimask_output: bool,
    ) -> DecoderOutput:
        """Decode B prompts against one image.

        image_embed (1, C, 64, 64); image_pe (1, C, 64, 64); sparse_prompts (B, T, C);
        dense_prompts (B or 1, C, 64, 64); high_res_feats of batch 1.
        """
        b = sparse_prompts.shape[0]
        dtype = image_embed.dtype
        if fused.active(image_embed, image_embed) and b > (chunk := _prompt_chunk(image_embed)):
            parts = [
                self(image_embed, image_pe, sparse_prompts[i : i + chunk],
                     dense_prompts if dense_prompts.shape[0] == 1 else dense_prompts[i : i + chunk],
                     high_res_feats, multimask_output)
                for i in range(0, b, chunk)
            ]
            return DecoderOutput.cat(parts)
        out_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.to(dtype).unsqueeze(0).expand(b, -1, -1), sparse_prompts.to(dtype)], dim=1)

        # Without a mask prompt every prompt sees the same image tokens: keep batch 1 and let the
        # transformer share their projections instead of repeating the image B times.
        src = image_embed + dense_prompts.to(dtype)
        _, c, h, w = src.shape
        image_tokens = src.flatten(2).transpose(1, 2)
        pos = image_pe.to(dtype).flatten(2).transpose(1, 2)
        hs, keys = self.transformer(image_tokens, pos, tokens)
        iou_token_out = hs[:, 1, :]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens, :]

        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        keep = slice(1, None) if multimask_output else slice(None)  # multimask output returns masks 1-3
        if fused.active(keys, hyper_in):
            # Only the kept masks: mask 0 would cost a quarter of the mask products and of the reorder.
            masks = self._masks_by_pixel(keys, hyper_in[:, keep], high_res_feats, (h, w))
        else:  # the official product of all four, then the cut
            masks = self._masks_by_conv(keys, hyper_in, high_res_feats, (h, w))[:, keep]
        iou = self.iou_prediction_head(iou_token_out).float()
        object_score = self.pred_obj_score_head(hs[:, 0, :]).float()

        if multimask_output:
            iou = iou[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou = self._select_stable_single_mask(masks, iou)
        else:
            masks, iou = masks[:, :1], iou[:, :1]
        return DecoderOutput(masks, iou, object_score, mask_tokens_out)

    def _masks_by_conv(
        self, keys: torch.Tensor, hyper_in: torch.Tensor, high_res_feats: tuple[torch.Tensor, torch.Tensor],
        hw: tuple[int, int],
    ) -> torch.Tensor:
        """(B, 4, 4h, 4w) float32 mask logits the official way: the upscaling as modules, then one product.

        keys (B, hw, C) image tokens; hyper_in (B, 4, C/8) per-mask weights; high_res_feats of batch 1.
        """
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        # Image tokens as a channels-last map (a view, no copy); the upscaling stays channels-last, the
        # layout oneDNN's transposed convolutions prefer. No size is read from `keys`: a traced export then
        # keeps the static channel counts that LayerNorm2d needs.
        src = keys.transpose(1, 2).reshape(-1, dc1.in_channels, *hw)
        feat_s0, feat_s1 = high_res_feats
        # In-place adds on the largest per-prompt tensors (64 x 128^2 and 32 x 256^2 each); the per-image
        # features are put in the same memory layout first, or the broadcast add takes a slow strided path.
        upscaled = dc1(src)
        upscaled += _same_layout(feat_s1, upscaled)
        upscaled = dc2(act1(ln1(upscaled)))
        upscaled += _same_layout(feat_s0, upscaled)
        upscaled = act2(upscaled)
        b, uc, uh, uw = upscaled.shape
        pixels = upscaled.permute(0, 2, 3, 1).reshape(b, uh * uw, uc)  # a view when channels-last
        return (pixels @ hyper_in.transpose(1, 2)).transpose(1, 2).reshape(b, -1, uh, uw).float()

    def _masks_by_pixel(
        self, keys: torch.Tensor, hyper_in: torch.Tensor, high_res_feats: tuple[torch.Tensor, torch.Tensor],
        hw: tuple[int, int],
    ) -> torch.Tensor:
        """`_masks_by_conv` with the upscaling as per-pixel linear maps, one prompt at a time (CPU).

        A 2x2 stride-2 transposed convolution maps each input pixel to its own 2x2 output patch: a linear
        map from C_in to 4 * C_out. Kept in that patch order, the upscaled pixels of token (i, j) stay
        together through both convolutions (row 4i + 2a + a', column 4j + 2c + c' for patch offsets
        (a, c) then (a', c')), every epilogue (bias, the high-resolution features, LayerNorm, GELU) runs
        on one prompt's tensors while they are in cache, and only the masks are reordered into the image
        grid. The conv path writes and rereads a (B, 32, 256, 256) tensor, 8 MB per prompt, at each of
        its five steps. Same arithmetic up to the GEMMs' summation order.

        hyper_in (B, M, C/8): one row per mask to compute, M <= 4. Returns (B, M, 4h, 4w) float32.
        """
        b, h, w = keys.shape[0], *hw
        dc1, ln1, _, dc2, _ = self.output_upscaling
        feat_s0, feat_s1 = high_res_feats
        w1, b1 = _patch_linear(dc1)
        w2, b2 = _patch_linear(dc2)
        c1, c2 = dc1.out_channels, dc2.out_channels
        # The high-resolution features in the same patch order: per token (i, j), offsets (a, c[, a', c']).
        feat1 = feat_s1[0].reshape(c1, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(h * w, 4 * c1)
        feat0 = feat_s0[0].reshape(c2, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0).reshape(h * w * 4, 4 * c2)
        feat1, feat0 = feat1.to(keys.dtype).contiguous(), feat0.to(keys.dtype).contiguous()
        masks = keys.new_empty((b, hyper_in.shape[1], 4 * h, 4 * w), dtype=torch.float32)
        image_order = _image_order(h, w, keys.device)
        for k in range(b):
            up = fused.affine(keys[k], w1, b1, residual=feat1).view(-1, c1)  # (hw * 4, C/4)
            up = F.gelu(F.layer_norm(up, (c1,), ln1.weight, ln1.bias, ln1.eps))
            up = fused.affine(up, w2, b2, residual=feat0).view(-1, c2)  # (hw * 16, C/8)
            up = F.gelu(up)
            per_pixel = (hyper_in[k] @ up.transpose(0, 1)).float()  # (4, hw * 16), each mask's pixels contiguous
            torch.index_select(per_pixel, 1, image_order, out=masks[k].view(per_pixel.shape[0], -1))
        return masks

    def _stability(self, logits: torch.Tensor) -> torch.Tensor:
        flat = logits.flatten(-2)
        inter = (flat > self.stability_delta).sum(-1).float()
        union = (flat > -self.stability_delta).sum(-1).float()
        return torch.where(union > 0, inter / union, torch.ones_like(inter))

    def _select_stable_single_mask(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the single-mask output when it is stable, else fall back to the best multimask output."""
        multi_iou = iou[:, 1:]
        best = multi_iou.argmax(dim=-1)
        rows = torch.arange(masks.shape[0], device=masks.device)
        best_masks = masks[:, 1:][rows, best].unsqueeze(1)
        best_iou = multi_iou[rows, best].unsqueeze(1)
        stable = self._stability(masks[:, :1]) >= self.stability_thresh  # (B, 1)
        out_masks = torch.where(stable[..., None, None], masks[:, :1], best_masks)
        out_iou = torch.where(stable, iou[:, :1], best_iou)
        return out_masks, out_iou
