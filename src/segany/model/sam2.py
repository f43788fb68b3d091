"""The SAM 2 image model: trunk + neck (once per image) and prompt encoder + mask decoder (per prompt)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segany.model import fused
from segany.model.hiera import Hiera
from segany.model.mask_decoder import DecoderOutput, MaskDecoder
from segany.model.neck import FpnNeck
from segany.model.prompt_encoder import PromptEncoder
from segany.model.variants import VariantSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SAM2ImageModel(nn.Module):
    """The image path of SAM 2 / 2.1. Video-only parts are not built (see `weights.VIDEO_ONLY_PREFIXES`)."""

    def __init__(self, spec: VariantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.trunk = Hiera(spec.hiera)
        self.neck = FpnNeck(spec.d_model, spec.backbone_channel_list, fpn_top_down_levels=[2, 3])
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, spec.d_model))
        grid = spec.image_size // 16
        self.prompt_encoder = PromptEncoder(spec.d_model, (grid, grid), (spec.image_size, spec.image_size))
        self.mask_decoder = MaskDecoder(spec.d_model)
        self._high_res_maps: dict[int, tuple[tuple, tuple[torch.Tensor, torch.Tensor]]] = {}
        # A compiled encoder (`encoder_runtime.OpenVinoEncoder`) that `encode_image` hands the calls it serves
        # to; set by `load_model` where the runtime chosen is not eager.
        self.compiled_encoder = None

    @property
    def variant(self) -> str:
        return self.spec.name

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of the image encoder and mask decoder."""
        return self.no_mem_embed.dtype

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 -> (1, 3, S, S) normalised input, S = image_size.

        As the official transform: [0, 1] floats, bilinear antialiased resize to S x S without keeping
        the aspect ratio, then ImageNet mean/std.
        """
        if not rgb.flags.writeable:  # torch.from_numpy warns on read-only arrays (e.g. np.asarray(PIL image))
            rgb = rgb.copy()
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1).unsqueeze(0).float() / 255.0
        s = self.image_size
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) normalised images -> image_embed (B, 256, 64, 64), high-res (B, 32, 256, 256), (B, 64, 128, 128).

        `image_embed` already has `no_mem_embed` added (what the official image predictor does), and the
        decoder's high-resolution projections are applied here once per image.
        """
        compiled = self.compiled_encoder
        if compiled is not None and compiled.serves(self, images):
            return compiled(images)
        top, feat_s0, feat_s1 = self.encode_levels(images)
        return top + self.no_mem_embed.view(1, -1, 1, 1), feat_s0, feat_s1

    def encode_levels(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`encode_image` without `no_mem_embed`: the raw 64x64 neck level, which the video path fuses with memories."""
        stages = self.trunk(images.to(self.dtype))
        if fused.active(stages[0], self.no_mem_embed) and not self.neck.fpn_top_down_levels & {0, 1}:
            # Levels 0 and 1 take no top-down input, so each is a 1x1 convolution followed by the decoder's
            # 1x1 projection: one composed map on the channels-last stage output skips the 256-channel
            # levels (67 MB at 256x256 in float32); 26 -> 3 ms in float32 on a 2-core Xeon, 7 -> 1 in bfloat16.
            feat_s0, feat_s1 = (
                fused.affine(stages[level].permute(0, 2, 3, 1), *self._high_res_map(level)).permute(0, 3, 1, 2)
                for level in (0, 1)
            )
            return self.neck(stages, scalp=1, first_level=2)[-1], feat_s0, feat_s1
        levels = self.neck(stages, scalp=1)  # 256^2, 128^2, 64^2
        feat_s0, feat_s1 = self.mask_decoder.project_high_res(levels[0], levels[1])
        return levels[-1], feat_s0, feat_s1

    def _high_res_map(self, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(out, in) weight and bias of the neck's lateral convolution of `level` then `conv_s{level}`.

        Composed in float64 and kept until the weights change (a new state dict bumps their version;
        `.to()` gives new storage), as the trunk's position table is.
        """
        lateral = self.neck.lateral(level)
        project = (self.mask_decoder.conv_s0, self.mask_decoder.conv_s1)[level]
        params = (lateral.weight, lateral.bias, project.weight, project.bias)
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        cached = self._high_res_maps.get(level)
        if cached is None or cached[0] != key:
            outer, inner = project.weight[:, :, 0, 0].double(), lateral.weight[:, :, 0, 0].double()
            weight = (outer @ inner).to(lateral.weight.dtype)
            bias = (outer @ lateral.bias.double() + project.bias.double()).to(lateral.weight.dtype)
            cached = self._high_res_maps[level] = (key, (weight, bias))
        return cached[1]

    def decode(
        self,
        image_embed: torch.Tensor,
        high_res_feats: tuple[torch.Tensor, torch.Tensor],
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> DecoderOutput:
        """Decode a batch of prompts against one image (batch-1 features).

        point_coords (B, N, 2) in the S x S input frame with labels (B, N) (box corners are points with
        labels 2 and 3); mask_input (B or 1, 1, 256, 256) logits. Either may be None.
        """
        pe = self.prompt_encoder
        if point_coords is not None:
            sparse = pe.embed_points(point_coords, point_labels)
        else:
            b = mask_input.shape[0] if mask_input is not None else 1
            sparse = torch.empty((b, 0, pe.embed_dim), device=image_embed.device)
        if mask_input is not None:
            dense = pe.embed_masks(mask_input.float().to(pe.no_mask_embed.weight.dtype))
        else:
            dense = pe.no_mask_dense(1)
        return self.mask_decoder(image_embed, pe.dense_pe(), sparse, dense, high_res_feats, multimask_output)
