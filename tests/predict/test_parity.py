"""Parity with the official SAM2ImagePredictor on every golden variant, image and prompt case (float32)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import segany
from fixture_paths import GOLDENS
from golden_cases import case_kwargs, golden_masks, image_path, manifest

IOU_ATOL = 1e-3  # tolerances stated in ../shared/fixtures/README.md
LOGITS_ATOL = 0.05  # goldens store logits as float16
MASK_AGREEMENT = 0.999

FILES = manifest()


@pytest.fixture(scope="module")
def predictors(make_checkpoint):
    cache: dict[str, segany.Predictor] = {}

    def get(variant: str) -> segany.Predictor:
        if variant not in cache:
            cache.clear()  # keep one large model in memory at a time
            model = segany.load_model(variant, checkpoint=make_checkpoint(variant), device="cpu", dtype=torch.float32)
            cache[variant] = segany.Predictor(model)
        return cache[variant]

    return get


def _cases():
    for fname, spec in FILES.items():
        for image in spec["images"]:
            yield pytest.param(fname, spec["variant"], image, id=f"{spec['variant']}-{image}")


@pytest.mark.parametrize("fname,variant,image", list(_cases()))
def test_predictor_matches_official(predictors, fname, variant, image):
    npz = np.load(GOLDENS / fname)
    predictor = predictors(variant)
    emb = predictor.embed(image_path(image))
    spec = FILES[fname]

    if spec.get("encoder_features_for") == image:
        ours = {"image_embed": emb.image_embed, "high_res_feats_0": emb.high_res_feats[0], "high_res_feats_1": emb.high_res_feats[1]}
        for name, tensor in ours.items():
            ref = npz[f"{image}/{name}"].astype(np.float32)
            np.testing.assert_allclose(tensor[0].float().numpy(), ref, atol=0.02, err_msg=name)

    for case in spec["cases"]:
        if case.get("image", image) != image:
            continue
        prefix = f"{image}/{case['name']}"
        out = predictor.predict(emb, **case_kwargs(case, npz, image))
        np.testing.assert_allclose(out.scores, npz[f"{prefix}/iou"], atol=IOU_ATOL, err_msg=f"{prefix} iou")
        ref_logits = npz[f"{prefix}/low_res_logits"].astype(np.float32)
        assert out.low_res_logits.shape == ref_logits.shape, prefix
        np.testing.assert_allclose(out.low_res_logits, ref_logits, atol=LOGITS_ATOL, err_msg=f"{prefix} low-res logits")
        ref_masks = golden_masks(npz, prefix)
        assert out.masks.shape == ref_masks.shape, prefix
        if case.get("return_logits"):
            assert out.masks.dtype == np.float32
            agreement = np.mean((out.masks > 0) == (ref_masks > 0))
        else:
            assert out.masks.dtype == bool
            agreement = np.mean(out.masks == ref_masks)
        assert agreement >= MASK_AGREEMENT, f"{prefix}: masks agree on {agreement:.5f} of pixels"
