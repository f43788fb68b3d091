"""Text grounding: phrase normalisation, the grounder's rules (with a fake detector), and small randomly
initialised Grounding DINO / OWLv2 models saved with save_pretrained and loaded through the public path."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import segany
from segany.errors import InvalidInput, InvalidPrompt, ModelNotFound
from tiny_detectors import _transformers, build_tiny_grounding_dino, build_tiny_owlv2
from segany.predict.text.grounding import (
    GroundedBoxes, RawDetections, TextGrounder, grounding_dino_prompt, normalize_text, resolve_model_dir,
)

REPO = Path(__file__).resolve().parents[2]


class FakeDetector:
    """Returns fixed boxes; records what the grounder passed it."""

    def __init__(self, boxes_xyxy, scores, phrase_ids):
        self.raw = RawDetections(np.asarray(boxes_xyxy, float), np.asarray(scores, float), np.asarray(phrase_ids))
        self.calls: list[dict] = []

    def detect(self, image_rgb, phrases, *, box_threshold, text_threshold):
        self.calls.append(dict(shape=image_rgb.shape, dtype=image_rgb.dtype, phrases=tuple(phrases),
                               box_threshold=box_threshold, text_threshold=text_threshold))
        return self.raw




@pytest.fixture(scope="module")
def tiny_gd_dir(tmp_path_factory) -> Path:
    _transformers()
    return build_tiny_grounding_dino(tmp_path_factory.mktemp("tiny-grounding-dino"))


@pytest.fixture(scope="module")
def tiny_owl_dir(tmp_path_factory) -> Path:
    _transformers()
    return build_tiny_owlv2(tmp_path_factory.mktemp("tiny-owlv2"))


@pytest.fixture(scope="module")
def image_rgb() -> np.ndarray:
    # Not square, so a width/height mix-up or OWLv2's square padding shows in the boxes.
    return np.random.default_rng(0).integers(0, 256, size=(60, 90, 3), dtype=np.uint8)


def _reference(model_dir: Path, image: np.ndarray, **call):
    """The model run directly through transformers, for comparison with the grounder."""
    import torch
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir, backend="pil")
    model = AutoModelForZeroShotObjectDetection.from_pretrained(model_dir).eval()
    inputs = processor(images=image, return_tensors="pt", **call)
    with torch.inference_mode():
        return processor, inputs, model(**inputs)


# ---- text normalisation --------------------------------------------------------------------------


@pytest.mark.parametrize("text, phrases", [
    ("a dog. a ball.", ("a dog", "a ball")),
    ("A Dog", ("A Dog",)),
    ("  red   dog .. ball  .", ("red dog", "ball")),
    (["a dog", "a ball. a cat"], ("a dog", "a ball", "a cat")),
    ("dog. Dog. DOG. cat", ("dog", "cat")),
])
def test_normalize_text_splits_on_periods(text, phrases):
    assert normalize_text(text) == phrases


@pytest.mark.parametrize("text", ["", " . .. ", [], ["", "."], 42, [1, 2]])
def test_normalize_text_rejects_prompts_without_phrases(text):
    with pytest.raises(InvalidPrompt) as err:
        normalize_text(text)
    assert err.value.field == "text"


def test_grounding_dino_prompt_is_lowercase_period_separated_with_spans():
    prompt, spans = grounding_dino_prompt(("A Dog", "red ball"))
    assert prompt == "a dog. red ball."
    assert [prompt[s:e] for s, e in spans] == ["a dog", "red ball"]


# ---- the grounder's rules, with a fake detector --------------------------------------------------


def test_fake_detector_boxes_are_clipped_filtered_and_sorted(image_rgb):
    fake = FakeDetector(
        boxes_xyxy=[[10, 5, 40, 30], [-5, -2, 100, 70], [1, 1, 2, 2], [20, 20, 30, 30], [0, 0, 5, 5]],
        scores=[0.5, 0.9, 0.3, 0.7, 0.95],
        phrase_ids=[0, 1, 0, 1, 7],  # 7 names no phrase: dropped
    )
    grounder = TextGrounder(detector=fake, box_threshold=0.3, text_threshold=0.2)
    found = grounder.ground(image_rgb, "a Dog. a ball.")
    assert isinstance(found, GroundedBoxes) and found.image_hw == (60, 90)
    np.testing.assert_array_equal(found.scores, np.float32([0.9, 0.7, 0.5]))  # 0.3 is not above 0.3
    np.testing.assert_array_equal(found.boxes_xyxy, np.float32([[0, 0, 90, 60], [20, 20, 30, 30], [10, 5, 40, 30]]))
    assert found.labels == ("a ball", "a ball", "a Dog") and found.phrases == ("a Dog", "a ball")
    assert fake.calls == [dict(shape=(60, 90, 3), dtype=np.uint8, phrases=("a Dog", "a ball"),
                               box_threshold=0.3, text_threshold=0.2)]


def test_per_call_thresholds_and_max_detections(image_rgb):
    fake = FakeDetector([[0, 0, 10, 10]] * 4, [0.2, 0.8, 0.6, 0.4], [0, 0, 0, 0])
    grounder = TextGrounder(detector=fake, max_detections=2)
    assert (grounder.box_threshold, grounder.text_threshold) == (0.4, 0.3)  # Grounded-SAM-2's defaults
    np.testing.assert_array_equal(grounder.ground(image_rgb, "dog").scores, np.float32([0.8, 0.6]))
    found = grounder.ground(image_rgb, "dog", box_threshold=0.7, text_threshold=0.05)
    np.testing.assert_array_equal(found.scores, np.float32([0.8]))
    assert fake.calls[-1]["box_threshold"] == 0.7 and fake.calls[-1]["text_threshold"] == 0.05


def test_no_boxes_is_an_empty_result(image_rgb):
    found = TextGrounder(detector=FakeDetector(np.zeros((0, 4)), [], [])).ground(image_rgb, "dog")
    assert len(found) == 0 and found.boxes_xyxy.shape == (0, 4) and found.labels == ()


@pytest.mark.parametrize("kwargs, field", [
    (dict(box_threshold=1.5), "box_threshold"), (dict(text_threshold=-0.1), "text_threshold"),
    (dict(max_detections=0), "max_detections"),
])
def test_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(InvalidInput) as err:
        TextGrounder(detector=FakeDetector(np.zeros((0, 4)), [], []), **kwargs)
    assert err.value.field == field


def test_grounder_is_exported_lazily():
    assert segany.TextGrounder is TextGrounder


# ---- small real detectors ------------------------------------------------------------------------


def test_tiny_grounding_dino_matches_transformers_post_processing(tiny_gd_dir, image_rgb):
    phrases = ["red dog", "ball", "cat tree"]
    grounder = TextGrounder(model_id=tiny_gd_dir, box_threshold=0.3, text_threshold=0.0, max_detections=1000)
    assert type(grounder.detector.processor.image_processor).__name__.endswith("Pil")
    found = grounder.ground(image_rgb, "Red dog. ball. cat  tree")
    processor, inputs, outputs = _reference(tiny_gd_dir, image_rgb, text="red dog. ball. cat tree.")
    ref = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=0.3, text_threshold=0.0, target_sizes=[(60, 90)])[0]
    assert len(ref["scores"]) > 0
    order = np.argsort(-ref["scores"].numpy(), kind="stable")
    ref_boxes = np.clip(ref["boxes"].numpy()[order], 0, [90, 60, 90, 60])
    np.testing.assert_allclose(found.scores, ref["scores"].numpy()[order], atol=1e-6)
    np.testing.assert_allclose(found.boxes_xyxy, ref_boxes, atol=1e-4)
    assert set(found.labels) <= {"Red dog", "ball", "cat tree"}
    # The label is the phrase holding the box's most probable phrase token (recomputed from token ids).
    probs = outputs.logits[0].sigmoid().numpy()
    ids = inputs["input_ids"][0].tolist()
    vocab = processor.tokenizer.get_vocab()
    phrase_tokens = [[ids.index(vocab[w]) for w in p.split()] for p in phrases]
    best_per_query = np.stack([probs[:, t].max(axis=1) for t in phrase_tokens], axis=1)
    kept = np.flatnonzero(probs[:, : len(ids)].max(axis=1) > 0.3)
    kept = kept[np.argsort(-probs[kept, : len(ids)].max(axis=1), kind="stable")]
    np.testing.assert_array_equal(found.phrase_ids, best_per_query[kept].argmax(axis=1))


def test_tiny_grounding_dino_text_threshold_drops_unlabelled_boxes(tiny_gd_dir, image_rgb):
    grounder = TextGrounder(model_id=tiny_gd_dir, box_threshold=0.0, max_detections=1000)
    loose = grounder.ground(image_rgb, "red dog. ball", text_threshold=0.0)
    processor, inputs, outputs = _reference(tiny_gd_dir, image_rgb, text="red dog. ball.")
    probs = outputs.logits[0].sigmoid().numpy()
    phrase_token_probs = probs[:, [1, 2, 4]]  # [CLS] red dog . ball . [SEP]
    cut = float(np.median(phrase_token_probs.max(axis=1)))
    strict = grounder.ground(image_rgb, "red dog. ball", text_threshold=cut)
    assert len(loose) == 30  # every query: all scores exceed 0
    assert len(strict) == int((phrase_token_probs.max(axis=1) > cut).sum()) < len(loose)


def test_tiny_owlv2_matches_transformers_post_processing(tiny_owl_dir, image_rgb):
    grounder = TextGrounder(model_id=tiny_owl_dir, max_detections=1000)
    assert (grounder.box_threshold, grounder.text_threshold) == (0.1, 0.0)
    found = grounder.ground(image_rgb, "a dog. a cat.")
    processor, _, outputs = _reference(tiny_owl_dir, image_rgb, text=[["a dog", "a cat"]])
    # OWLv2 boxes are relative to the image padded to a square, so the target size is 90 x 90.
    ref = processor.post_process_grounded_object_detection(outputs, threshold=0.1, target_sizes=[(90, 90)])[0]
    assert len(ref["scores"]) > 0
    order = np.argsort(-ref["scores"].numpy(), kind="stable")
    np.testing.assert_allclose(found.scores, ref["scores"].numpy()[order], atol=1e-6)
    np.testing.assert_allclose(found.boxes_xyxy, np.clip(ref["boxes"].numpy()[order], 0, [90, 60, 90, 60]), atol=1e-4)
    np.testing.assert_array_equal(found.phrase_ids, ref["labels"].numpy()[order])
    assert found.labels == tuple(["a dog", "a cat"][i] for i in ref["labels"].numpy()[order])


def test_loading_never_imports_torchvision(tiny_gd_dir, tiny_owl_dir):
    code = f"""
        import sys, numpy as np
        from segany.predict.text.grounding import TextGrounder
        for d in ({str(tiny_gd_dir)!r}, {str(tiny_owl_dir)!r}):
            TextGrounder(model_id=d).ground(np.zeros((40, 50, 3), np.uint8), "dog")
        assert "torchvision" not in sys.modules, "torchvision was imported"
    """
    _run_python(code)


def test_full_path_text_to_labelled_masks_with_tiny_grounding_dino(tiny_predictor, tiny_gd_dir, image_rgb):
    from segany.predict.text.segment import segment_text

    grounder = TextGrounder(model_id=tiny_gd_dir, box_threshold=0.5, max_detections=6)
    found = grounder.ground(image_rgb, "red dog. ball")
    assert len(found) > 0
    embedding = tiny_predictor.embed(image_rgb)
    result = segment_text(tiny_predictor, embedding, "red dog. ball", grounder=grounder, image=image_rgb)
    np.testing.assert_array_equal(result.boxes_xyxy, found.boxes_xyxy)
    assert result.class_names == found.labels and set(result.class_names) <= {"red dog", "ball"}
    np.testing.assert_array_equal(result.confidences, found.scores)
    np.testing.assert_array_equal(result.class_ids, found.phrase_ids)
    expected = tiny_predictor.predict(embedding, box=found.boxes_xyxy, multimask_output=False)
    masks = expected.masks.reshape(len(found), 60, 90)
    assert result.masks.shape == (len(found), 60, 90) and (result.masks == masks).mean() >= 0.999
    np.testing.assert_allclose(result.mask_scores, expected.scores.reshape(-1), atol=1e-5)


# ---- offline-aware loading -----------------------------------------------------------------------


def test_model_id_resolves_from_the_hub_cache_offline(tiny_gd_dir, tmp_path, monkeypatch, image_rgb):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--segany-test--tiny-gd"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in tiny_gd_dir.iterdir():
        (snapshot / file.name).symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_dir("segany-test/tiny-gd", cache_dir=tmp_path) == snapshot
    grounder = TextGrounder(model_id="segany-test/tiny-gd", cache_dir=tmp_path, box_threshold=0.0)
    assert len(grounder.ground(image_rgb, "dog")) > 0


def test_missing_model_id_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="huggingface-cli download segany-test/absent.*local directory"):
        TextGrounder(model_id="segany-test/absent", cache_dir=tmp_path)


def test_missing_model_id_with_unreachable_hub(tmp_path):
    # The hub endpoint is a closed local port: the download attempt fails and becomes ModelNotFound.
    code = f"""
        from segany.errors import ModelNotFound
        from segany.predict.text.grounding import TextGrounder
        try:
            TextGrounder(model_id="segany-test/absent", cache_dir={str(tmp_path)!r})
        except ModelNotFound as exc:
            assert "could not fetch" in str(exc) and "save_pretrained" in str(exc), exc
        else:
            raise AssertionError("no error")
    """
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "2"}
    _run_python(code, env)


@pytest.mark.parametrize("model_id", ["./no/such/dir", "/no/such/dir"])
def test_missing_local_directory(model_id):
    with pytest.raises(ModelNotFound, match="not a directory"):
        TextGrounder(model_id=model_id)


def test_unsupported_model_type_names_supported_ones(tmp_path):
    transformers = _transformers()
    transformers.BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                            intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ModelNotFound, match="'bert' model.*grounding-dino.*owlv2"):
        TextGrounder(model_id=tmp_path)


def test_without_transformers_text_fails_naming_the_extra_and_nothing_else_breaks(tiny_gd_dir):
    code = f"""
        import sys
        sys.modules["transformers"] = None  # as if segany[text] were not installed
        import numpy as np, segany
        from segany.errors import MissingExtra
        from segany.predict.detections import parse_detections
        try:
            segany.TextGrounder(model_id={str(tiny_gd_dir)!r})
        except MissingExtra as exc:
            assert "segany[text]" in str(exc) and exc.extra == "text", exc
        else:
            raise AssertionError("no error")
        # The rest of the package still imports and works.
        segany.Predictor, segany.load_model, segany.segment_detections
        assert len(parse_detections([dict(x=5, y=5, width=4, height=4)])) == 1
    """
    _run_python(code)


def _run_python(code: str, env: dict | None = None) -> None:
<<<<<<< HEAD
    full_env = {**os.environ, **(env or {})}
=======
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
>>>>>>> server
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env,
                          cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
