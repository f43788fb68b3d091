"""bfloat16 inference: chosen automatically where the CPU runs it natively, and close to the float32 goldens."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import segany
from fixture_paths import GOLDENS
from golden_cases import case_kwargs, golden_masks, image_path, manifest
from segany.model.weights import cpu_supports_bf16


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_auto_dtype_follows_the_cpu(tiny_checkpoint):
    model = segany.load_model("sam2.1_hiera_tiny", checkpoint=tiny_checkpoint, device="cpu")
    assert model.dtype == (torch.bfloat16 if cpu_supports_bf16() else torch.float32)
    assert model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.float32


def test_oneDNN_capped_below_avx512_means_float32(tiny_checkpoint, monkeypatch):
    """Capping oneDNN at AVX2 (how an AVX2 machine is emulated) leaves it no bf16 linear: float32 must be picked."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cpu_supports_bf16()
    model = segany.load_model("sam2.1_hiera_tiny", checkpoint=tiny_checkpoint, device="cpu")
    assert model.dtype == torch.float32


def test_bf16_masks_match_float32_goldens(tiny_checkpoint):
    """Mean mask IoU against the official float32 outputs (bench/bf16_accuracy.py reports every variant)."""
    model = segany.load_model("sam2.1_hiera_tiny", checkpoint=tiny_checkpoint, device="cpu", dtype=torch.bfloat16)
    predictor = segany.Predictor(model)
    spec = manifest()["predictor_sam2.1_hiera_tiny.npz"]
    npz = np.load(GOLDENS / "predictor_sam2.1_hiera_tiny.npz")
    image = "astronaut.png"
    emb = predictor.embed(image_path(image))
    assert emb.image_embed.dtype == torch.bfloat16
    ious = []
    for case in spec["cases"]:
        if case.get("image", image) != image or case.get("return_logits"):
            continue
        out = predictor.predict(emb, **case_kwargs(case, npz, image))
        ref = golden_masks(npz, f"{image}/{case['name']}")
        ious += [_iou(a, b) for a, b in zip(out.masks.reshape(-1, *ref.shape[-2:]), ref.reshape(-1, *ref.shape[-2:]))]
    assert np.mean(ious) >= 0.96, f"mean mask IoU {np.mean(ious):.4f}"
