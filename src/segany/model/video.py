"""The SAM 2 video model: the image model composed with memory attention, the memory encoder and object pointers.

One frame's tracking step for one object, as the official `SAM2Base.track_step` orders it:
    embed_frame ─► condition (memory attention over the bank; `no_memory` on a first prompted frame)
                ─► heads (prompt encoder + mask decoder of the image model, object pointer)
                ─► encode_memory (the frame's mask into a memory for later frames)
Which memories and pointers a frame sees is the predictor's business (`segany.predict.video.memory`); this
module only computes. Shapes below are for the 1024 model input: 64x64 image tokens, 256x256 low-res masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segany.model import fused
from segany.model.common import MLP
from segany.model.memory_attention import MemoryAttention
from segany.model.memory_encoder import MemoryEncoder
from segany.model.position import sine_position_encoding
from segany.model.prompt_encoder import LABEL_PAD
from segany.model.sam2 import IMAGENET_MEAN, IMAGENET_STD, SAM2ImageModel
from segany.model.variants import VariantSpec

NO_OBJ_SCORE = -1024.0  # the logit every pixel of an absent object gets (the official placeholder)
# A mask prompt used as the output is turned into logits of +10 inside, -10 outside (sigmoid ~ 0 / 1).
_MASK_AS_LOGITS_SCALE, _MASK_AS_LOGITS_BIAS = 20.0, -10.0


@dataclass(frozen=True, eq=False)
class FrameFeatures:
    """The image encoder's output for one frame, shared by every object tracked on it."""

    top: torch.Tensor  # (1, 256, 64, 64) raw neck level (no `no_mem_embed`), model dtype
    high_res: tuple[torch.Tensor, torch.Tensor]  # (1, 32, 256, 256), (1, 64, 128, 128), already projected

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.top, *self.high_res))


@dataclass(frozen=True, eq=False)
class HeadOutput:
    """One object's decoded mask on one frame (float32)."""

    low_res: torch.Tensor  # (1, 1, 256, 256) logits, NO_OBJ_SCORE everywhere when the object is absent
    high_res: torch.Tensor  # (1, 1, 1024, 1024) logits, `low_res` upsampled
    obj_ptr: torch.Tensor  # (1, 256) object pointer
    object_score: torch.Tensor  # (1, 1) logit; > 0: the object is present


class SAM2VideoModel(nn.Module):
    """`image` (a `SAM2ImageModel`) plus the video-only modules; attribute names follow the official checkpoints."""

    def __init__(self, spec: VariantSpec, image: SAM2ImageModel | None = None) -> None:
        super().__init__()
        v = spec.video
        d = spec.d_model
        self.spec = spec
        self.image = image if image is not None else SAM2ImageModel(spec)
        grid = spec.image_size // 16
        self.memory_attention = MemoryAttention(d, v.mem_dim, v.memory_attention_layers, v.memory_attention_ffn_dim,
                                                (grid, grid), v.rope_theta)
        self.memory_encoder = MemoryEncoder(d, v.mem_dim)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(v.num_maskmem, 1, 1, v.mem_dim))
        # Only used by configs that attend to a dummy memory on first frames; every 2.x config adds no_mem_embed.
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, d))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, d))
        # Turns a 1024^2 mask prompt into 256^2 logits for the decoder when the mask is used as the output.
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.obj_ptr_proj = MLP(d, d, d, 3)
        if v.no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, v.mem_dim))
        else:
            self.no_obj_embed_spatial = None
        self.obj_ptr_tpos_proj = nn.Linear(d, v.mem_dim) if v.proj_tpos_enc_in_obj_ptrs else None

    # ---- facts ----------------------------------------------------------------------------------------
    @property
    def variant(self) -> str:
        return self.spec.name

    @property
    def device(self) -> torch.device:
        return self.no_obj_ptr.device

    @property
    def num_maskmem(self) -> int:
        return self.spec.video.num_maskmem

    def video_state_dict_keys(self) -> list[str]:
        """State-dict keys of the video-only modules (the official checkpoint's names for them)."""
        return [k for k in self.state_dict() if not k.startswith("image.")]

    # ---- frames ---------------------------------------------------------------------------------------
    def preprocess_frame(self, rgb: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> (1, 3, S, S) float32, the official video loader's transform (not the image path's):
        PIL bicubic resize to S x S, / 255, ImageNet mean/std."""
        s = self.spec.image_size
        resized = np.asarray(Image.fromarray(rgb).resize((s, s), Image.BICUBIC))
        x = torch.from_numpy(resized.copy()).to(self.device).permute(2, 0, 1).unsqueeze(0).float() / 255.0
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def embed_frame(self, x: torch.Tensor) -> FrameFeatures:
        """(1, 3, S, S) from `preprocess_frame` -> the frame's features."""
        with fused.plain():  # bit-for-bit the official encoder arithmetic: see fused.plain
            top, s0, s1 = self.image.encode_levels(x)
        return FrameFeatures(top, (s0, s1))

    def _tokens_pos(self, size_hw: tuple[int, int]) -> torch.Tensor:
        """The neck's sine encoding of the 64x64 level as tokens, (1, HW, 256); constant, so cached."""
        cached = getattr(self, "_tokens_pos_cache", None)
        if cached is None or cached.device != self.device:
            pos = sine_position_encoding(1, size_hw, self.spec.d_model, device=self.device)
            cached = pos.flatten(2).transpose(1, 2)
            self._tokens_pos_cache = cached
        return cached

    def _memory_pos(self, size_hw: tuple[int, int]) -> torch.Tensor:
        """The memories' spatial encoding as tokens, (1, HW, mem_dim); constant, so cached."""
        cached = getattr(self, "_memory_pos_cache", None)
        if cached is None or cached.device != self.device:
            cached = self.memory_encoder.position_encoding(size_hw, self.device).flatten(2).transpose(1, 2)
            self._memory_pos_cache = cached
        return cached

    # ---- memory attention -----------------------------------------------------------------------------
    def no_memory(self, top: torch.Tensor) -> torch.Tensor:
        """Features of a frame prompted before any memory exists for the object, (1, 256, 64, 64) float32.

        Every 2.x config adds `no_mem_embed` directly instead of attending to a dummy memory.
        """
        return top.float() + self.image.no_mem_embed.float().view(1, -1, 1, 1)

    def condition(self, top: torch.Tensor, memories: Sequence[tuple[int, torch.Tensor]],
                  pointers: Sequence[tuple[int, torch.Tensor]], max_ptr_distance: int) -> torch.Tensor:
        """Fuse a frame's features with memories, (1, 256, 64, 64) float32.

        memories: (frames_back, memory (1, mem_dim, 64, 64)) with frames_back 0 for conditioning frames and k
        for the frame k steps back along the tracking direction (k < num_maskmem). pointers: (frame distance,
        object pointer (1, 256)); the distance's temporal encoding is normalised by `max_ptr_distance`.
        """
        v = self.spec.video
        b, c, h, w = top.shape
        mem_pos = self._memory_pos((h, w))
        tokens, tokens_pos = [], []
        for frames_back, memory in memories:
            tokens.append(memory.float().flatten(2).transpose(1, 2))
            # Conditioning frames take the last temporal slot; the frame just before takes slot 0.
            slot = self.num_maskmem - 1 if frames_back == 0 else frames_back - 1
            tokens_pos.append(mem_pos + self.maskmem_tpos_enc[slot].view(1, 1, -1))
        num_ptr_tokens = 0
        if pointers:
            ptrs = torch.cat([p.float() for _, p in pointers], dim=0)  # (P, 256)
            if v.add_tpos_enc_to_obj_ptrs:
                dist = torch.tensor([float(t) for t, _ in pointers], device=top.device) / max_ptr_distance
                pos = _sine_1d(dist, c if v.proj_tpos_enc_in_obj_ptrs else v.mem_dim)
                if self.obj_ptr_tpos_proj is not None:
                    pos = self.obj_ptr_tpos_proj(pos)
            else:
                pos = ptrs.new_zeros(len(pointers), v.mem_dim)
            # A 256-channel pointer becomes 256 / mem_dim tokens of mem_dim channels, each with the pointer's position.
            split = c // v.mem_dim
            tokens.append(ptrs.reshape(1, -1, v.mem_dim))
            tokens_pos.append(pos.repeat_interleave(split, dim=0).unsqueeze(0))
            num_ptr_tokens = len(pointers) * split
        memory = torch.cat(tokens, dim=1)
        memory_pos = torch.cat(tokens_pos, dim=1)
        out = self.memory_attention(top.float().flatten(2).transpose(1, 2), self._tokens_pos((h, w)), memory,
                                    memory_pos, num_ptr_tokens)
        return out.transpose(1, 2).reshape(b, c, h, w)

    # ---- heads ----------------------------------------------------------------------------------------
    def use_multimask(self, is_first_prompt: bool, num_points: int) -> bool:
        """Three candidate masks (the best one kept) for first clicks and, with the 2.x configs, for tracking."""
        v = self.spec.video
        return (v.multimask_output_in_sam and (is_first_prompt or v.multimask_output_for_tracking)
                and v.multimask_min_pt_num <= num_points <= v.multimask_max_pt_num)

    def heads(self, pix_feat: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor],
              coords_xy: torch.Tensor | None, labels: torch.Tensor | None, mask_input: torch.Tensor | None,
              multimask: bool) -> HeadOutput:
        """Decode one object. pix_feat (1, 256, 64, 64); coords_xy (1, N, 2) in the S x S model frame with labels
        (1, N) (box corners are labels 2, 3), or None; mask_input (1, 1, 256, 256) logits or None."""
        img = self.image
        if coords_xy is None:  # an empty prompt is one padding point, as the official heads send it
            coords_xy = torch.zeros(1, 1, 2, device=pix_feat.device)
            labels = torch.full((1, 1), LABEL_PAD, dtype=torch.int32, device=pix_feat.device)
        with fused.plain():  # the official decoder arithmetic, for the same reason as the encoder's
            out = img.decode(pix_feat.to(img.dtype), high_res, coords_xy, labels, mask_input, multimask)
        present = out.object_score_logits > 0  # (1, 1)
        low_res_all = torch.where(present[:, :, None, None], out.low_res_logits.float(), NO_OBJ_SCORE)
        tokens = out.mask_tokens.float()
        if multimask:
            best = int(out.iou[0].argmax())
            low_res = low_res_all[:, best : best + 1]
            token = tokens[:, 1 + best] if self.spec.video.use_multimask_token_for_obj_ptr else tokens[:, 0]
        else:
            low_res = low_res_all
            token = tokens[:, 0]
        high_res_mask = F.interpolate(low_res, size=(self.spec.image_size,) * 2, mode="bilinear", align_corners=False)
        obj_ptr = self._absent_ptr(self.obj_ptr_proj(token), out.object_score_logits.float())
        return HeadOutput(low_res, high_res_mask, obj_ptr, out.object_score_logits.float())

    def _absent_ptr(self, obj_ptr: torch.Tensor, object_score: torch.Tensor) -> torch.Tensor:
        """Blend in `no_obj_ptr` by how absent the object is (hard 0/1 unless `soft_no_obj_ptr`)."""
        v = self.spec.video
        present = object_score.sigmoid() if v.soft_no_obj_ptr else (object_score > 0).float()
        if v.fixed_no_obj_ptr:
            obj_ptr = present * obj_ptr
        return obj_ptr + (1 - present) * self.no_obj_ptr

    def mask_as_output(self, features: FrameFeatures, mask: torch.Tensor) -> HeadOutput:
        """A mask prompt taken as the frame's output (every 2.x config does so). mask (1, 1, S, S) float 0/1 in the
        model frame. The decoder still runs, on the raw features and the downsampled mask, for the object pointer.
        """
        high_res = mask * _MASK_AS_LOGITS_SCALE + _MASK_AS_LOGITS_BIAS
        s = high_res.shape[-1]
        low_res = F.interpolate(high_res, size=(s // 4, s // 4), mode="bilinear", align_corners=False, antialias=True)
        decoded = self.heads(features.top.float(), features.high_res, None, None, self.mask_downsample(mask), False)
        present = (mask.flatten(1) > 0).any(dim=1, keepdim=True).float()
        object_score = present * _MASK_AS_LOGITS_SCALE + _MASK_AS_LOGITS_BIAS
        return HeadOutput(low_res, high_res, self._absent_ptr(decoded.obj_ptr, object_score), object_score)

    # ---- memory encoder -------------------------------------------------------------------------------
    def encode_memory(self, top: torch.Tensor, high_res_mask: torch.Tensor, object_score: torch.Tensor,
                      binarize: bool) -> torch.Tensor:
        """A frame's memory, (1, mem_dim, 64, 64) float32, from its raw features and mask logits (1, 1, S, S).

        `binarize`: the mask comes from the user's prompt, so encode exactly what they saw (mask > 0).
        """
        v = self.spec.video
        if binarize and v.binarize_mask_from_pts_for_mem_enc:
            mask = (high_res_mask > 0).float()
        else:
            mask = torch.sigmoid(high_res_mask)
        mask = mask * v.sigmoid_scale_for_mem_enc + v.sigmoid_bias_for_mem_enc
        memory = self.memory_encoder(top.float(), mask)
        if self.no_obj_embed_spatial is not None:
            absent = (object_score <= 0).float()  # (1, 1)
            memory = memory + absent[:, :, None, None] * self.no_obj_embed_spatial.view(1, -1, 1, 1)
        return memory


def _sine_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(P,) positions -> (P, dim): sines of dim/2 frequencies, then their cosines (not interleaved)."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)
    angles = positions[:, None] / dim_t
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
