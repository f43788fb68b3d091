"""Stateless, thread-safe SAM 2 prompt predictor: embed an image once, decode prompts many times."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segany.errors import InvalidInput
from segany.model.sam2 import SAM2ImageModel
from segany.predict.prompts import prepare_prompts
from segany.predict.types import ImageEmbedding, Prediction

# On accelerators full-resolution logits are upsampled this many prompts at a time, so that B x 3 x H x W
# float32 logits of a large image never sit in memory twice.
_UPSAMPLE_CHUNK = 16


class Predictor:
    """Prompted segmentation with a `SAM2ImageModel`.

    Unlike the official `SAM2ImagePredictor`, nothing about the current image is stored on the
    predictor: `embed` returns an immutable `ImageEmbedding` that callers pass back, cache, or share
    between threads.
    """

    def __init__(self, model: SAM2ImageModel, mask_threshold: float = 0.0) -> None:
        self.model = model.eval()
        self.mask_threshold = mask_threshold

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def variant(self) -> str:
        return self.model.variant

    # ---- image side ----------------------------------------------------------------------------
    def embed(self, image) -> ImageEmbedding:
        """Embed one image: np.ndarray HxWx3 uint8 RGB, PIL.Image (any mode), encoded bytes, or a path."""
        return self.embed_batch([image])[0]

    def embed_batch(self, images: Sequence) -> list[ImageEmbedding]:
        """Embed several images in one forward pass of the image encoder."""
        from segany.io.images import load_image

        rgbs = [load_image(img) for img in images]
        if not rgbs:
            return []
        with torch.inference_mode():
            batch = torch.cat([self.model.preprocess(rgb) for rgb in rgbs])
            image_embed, feat_s0, feat_s1 = self.model.encode_image(batch)
        return [
            ImageEmbedding(
                image_embed=image_embed[i : i + 1].clone(),
                high_res_feats=(feat_s0[i : i + 1].clone(), feat_s1[i : i + 1].clone()),
                orig_hw=(int(rgb.shape[0]), int(rgb.shape[1])),
                variant=self.variant,
            )
            for i, rgb in enumerate(rgbs)
        ]

    # ---- prompt side ---------------------------------------------------------------------------
    def decode(
        self,
        embedding: ImageEmbedding,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw decoder call for already-normalised prompts (the automatic mask generator's door).

        point_coords (B, N, 2) float in the 1024 x 1024 model frame, point_labels (B, N) int,
        mask_input (B, 1, 256, 256) logits or None. Returns unclamped low-res logits (B, C, 256, 256)
        float32 and predicted IoU (B, C) float32, on the model's device.
        """
        self._check_embedding(embedding)
        with torch.inference_mode():
            out = self.model.decode(
                embedding.image_embed, embedding.high_res_feats,
                None if point_coords is None else point_coords.to(self.device, torch.float32),
                None if point_labels is None else point_labels.to(self.device, torch.int32),
                None if mask_input is None else mask_input.to(self.device),
                multimask_output,
            )
        return out.low_res_logits, out.iou

    def predict(
        self,
        embedding: ImageEmbedding,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> Prediction:
        """Masks for point / box / mask prompts, with the official predictor's shapes and meaning.

        point_coords (N, 2) or (B, N, 2) with point_labels (N,) or (B, N) (1 positive, 0 negative,
        -1 padding); box (4,) or (B, 4) xyxy; mask_input (1, 256, 256) or (B, 1, 256, 256) logits
        from an earlier prediction. Coordinates are pixels of the original image, or in [0, 1] when
        `normalize_coords` is False. Several boxes may each have their own points (box (B, 4) with
        points (B, N, 2)). Returns masks (C, H, W) for one prompt and (B, C, H, W) for several.
        """
        self._check_embedding(embedding)
        prompts = prepare_prompts(
            point_coords, point_labels, box, mask_input,
            orig_hw=embedding.orig_hw, image_size=self.model.image_size,
            mask_hw=self.model.prompt_encoder.mask_input_hw, normalize_coords=normalize_coords, device=self.device,
        )
        low_res, iou = self.decode(embedding, prompts.coords_xy, prompts.labels, prompts.mask_input, multimask_output)
        with torch.inference_mode():
            masks = self._upsample(low_res, embedding.orig_hw, threshold=None if return_logits else self.mask_threshold)
            low_res = low_res.clamp(-32.0, 32.0)
        squeeze = low_res.shape[0] == 1  # the official predictor drops a batch axis of one
        pick = (lambda a: a[0]) if squeeze else (lambda a: a)
        return Prediction(
            masks=pick(masks),
            scores=pick(iou.float().cpu().numpy()),
            low_res_logits=pick(low_res.float().cpu().numpy()),
        )

    def segment_text(self, emb_or_image, text: str, grounder=None, *, image=None, multimask_output: bool = False,
                     threshold: float = 0.0, box_threshold: float | None = None, text_threshold: float | None = None):
        """Masks for the phrases of `text` ("a dog. a ball."): detector boxes become box prompts.

        Needs the `text` extra. When `emb_or_image` is an `ImageEmbedding`, pass the pixels as `image=`
        too (the detector sees the image, not the embedding). Returns `LabelledMasks`.
        """
        from segany.predict.text.segment import segment_text

        return segment_text(self, emb_or_image, text, grounder, image=image, multimask_output=multimask_output,
                            threshold=threshold, box_threshold=box_threshold, text_threshold=text_threshold)

    def _upsample(self, low_res: torch.Tensor, size_hw: tuple[int, int], threshold: float | None) -> np.ndarray:
        """(B, C, 256, 256) logits -> (B, C, H, W) bool masks (or float32 logits when threshold is None)."""
        b, c = low_res.shape[:2]
        out = np.empty((b, c, *size_hw), dtype=np.float32 if threshold is None else np.bool_)
        if low_res.device.type == "cpu":
            _upsample_on_cpu(low_res.float().numpy(), out, threshold)
            return out
        target = torch.from_numpy(out)
        for start in range(0, b, _UPSAMPLE_CHUNK):
            up = F.interpolate(low_res[start : start + _UPSAMPLE_CHUNK].float(), size=size_hw, mode="bilinear",
                               align_corners=False)
            target[start : start + _UPSAMPLE_CHUNK] = up.cpu() if threshold is None else (up > threshold).cpu()
        return out

    def _check_embedding(self, embedding: ImageEmbedding) -> None:
        if not isinstance(embedding, ImageEmbedding):
            raise InvalidInput(f"expected an ImageEmbedding from Predictor.embed, got {type(embedding).__name__}", "embedding")
        if embedding.variant != self.variant:
            raise InvalidInput(f"this embedding was made by {embedding.variant}, not {self.variant}", "embedding")


def _upsample_on_cpu(low_res: np.ndarray, out: np.ndarray, threshold: float | None) -> None:
    """Each (256, 256) logit map of `low_res` bilinearly resized into `out`'s (H, W) plane, thresholded if asked.

    OpenCV's INTER_LINEAR samples as `F.interpolate(..., mode="bilinear", align_corners=False)` does (pixel
    centres, edges clamped) and took half its time here (1024x768, three masks: 1.5 against 2.2-4.5 ms on a
    2-core Xeon). The two round the source position differently (OpenCV in float64, PyTorch in float32), so
    values differ by up to ~1e-4 of a logit: about one mask pixel in 16 million flips against the official
    masks, far inside the goldens' 99.9%.
    Thresholded masks pass through one reused float32 plane (3 MB at 1024x768, in cache), and numpy's
    compare writes them straight into the result (~2x faster than torch's); the threshold is compared in
    float32, as torch compares a float32 tensor with a Python float.
    """
    import cv2  # a core dependency (opencv-python-headless)

    h, w = out.shape[-2:]
    plane = np.empty((h, w), dtype=np.float32) if threshold is not None else None
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            resized = out[i, j] if plane is None else plane
            cv2.resize(np.ascontiguousarray(low_res[i, j]), (w, h), dst=resized, interpolation=cv2.INTER_LINEAR)
            if plane is not None:
                np.greater(plane, np.float32(threshold), out=out[i, j])
