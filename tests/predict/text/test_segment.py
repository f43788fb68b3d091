"""segment_text: text -> detector boxes -> one SAM 2 mask per box, with a deterministic fake detector."""
from __future__ import annotations

import numpy as np
import pytest

import segany
from segany.errors import InvalidInput, InvalidPrompt, ModelNotFound
from segany.predict.text import segment as text_module
from segany.predict.detections import NoDetectionsWarning, masks_for_boxes
from segany.predict.text.grounding import RawDetections, TextGrounder
from segany.predict.text.segment import segment_text
from segany.predict.types import Prediction


class FakeDetector:
    """Fixed boxes for phrase ids; records the thresholds and phrases it was asked with."""

    def __init__(self, boxes_xyxy, scores, phrase_ids):
        self.raw = RawDetections(np.asarray(boxes_xyxy, float).reshape(-1, 4), np.asarray(scores, float),
                                 np.asarray(phrase_ids, int))
        self.calls: list[tuple] = []

    def detect(self, image_rgb, phrases, *, box_threshold, text_threshold):
        self.calls.append((image_rgb.shape, tuple(phrases), box_threshold, text_threshold))
        return self.raw


BOXES = [[250, 90, 350, 210], [70, 60, 130, 100], [200, 150, 260, 240], [0, 0, 30, 30]]
SCORES = [0.55, 0.9, 0.7, 0.2]
PHRASES = [1, 0, 1, 0]  # "a ball", "a Cat", "a ball", "a Cat" for "a Cat. a ball."


@pytest.fixture(scope="module")
def image(chelsea_rgb) -> np.ndarray:
    return chelsea_rgb  # 300 x 451


@pytest.fixture(scope="module")
def embedding(chelsea_embedding):
    return chelsea_embedding


def reference(predictor, embedding, boxes):
    out = [predictor.predict(embedding, box=np.asarray(b, float), multimask_output=False) for b in boxes]
    return np.stack([o.masks[0] for o in out]), np.float32([o.scores[0] for o in out])


def test_text_boxes_become_masks_labelled_with_phrase_and_detector_score(tiny_predictor, image, embedding):
    fake = FakeDetector(BOXES, SCORES, PHRASES)
    grounder = TextGrounder(detector=fake)  # box_threshold 0.4 drops the 0.2 box
    result = segment_text(tiny_predictor, image, "a Cat. a ball.", grounder=grounder)  # embeds the image itself
    assert fake.calls == [((300, 451, 3), ("a Cat", "a ball"), 0.4, 0.3)]
    assert result.class_names == ("a Cat", "a ball", "a ball")  # by detector score: 0.9, 0.7, 0.55
    np.testing.assert_array_equal(result.class_ids, [0, 1, 1])
    np.testing.assert_array_equal(result.confidences, np.float32([0.9, 0.7, 0.55]))
    np.testing.assert_array_equal(result.boxes_xyxy, np.float32([BOXES[1], BOXES[2], BOXES[0]]))
    masks, scores = reference(tiny_predictor, embedding, result.boxes_xyxy)
    assert result.masks.shape == (3, 300, 451) and (result.masks == masks).mean() >= 0.999
    np.testing.assert_allclose(result.mask_scores, scores, atol=1e-4)
    assert result.parent_ids == (None, None, None) and result.metadata == {"phrases": ["a Cat", "a ball"]}
    records = result.to_dicts()
    assert [r["class"] for r in records] == ["a Cat", "a ball", "a ball"]
    assert records[0]["confidence"] == pytest.approx(0.9) and records[0]["x"] == pytest.approx(100.0)


def test_embedding_with_its_image_and_per_call_thresholds(tiny_predictor, image, embedding):
    fake = FakeDetector(BOXES, SCORES, PHRASES)
    result = segment_text(tiny_predictor, embedding, ["a Cat", "a ball"], grounder=TextGrounder(detector=fake),
                          image=image, box_threshold=0.6, text_threshold=0.25)
    assert fake.calls[0][2:] == (0.6, 0.25)
    assert result.class_names == ("a Cat", "a ball")
    np.testing.assert_array_equal(result.confidences, np.float32([0.9, 0.7]))


def test_threshold_drops_low_scoring_masks(tiny_predictor, image, embedding):
    grounder = TextGrounder(detector=FakeDetector(BOXES, SCORES, PHRASES))
    full = segment_text(tiny_predictor, embedding, "a Cat. a ball.", grounder=grounder, image=image)
    cut = float(np.sort(full.mask_scores)[-1])
    best = segment_text(tiny_predictor, embedding, "a Cat. a ball.", grounder=grounder, image=image, threshold=cut)
    assert len(best) == 1 and best.class_names == (full.class_names[int(np.argmax(full.mask_scores))],)
    assert "2 of 3 masks scored below threshold" in best.reason


def test_no_box_gives_no_mask_and_says_why(image):
    grounder = TextGrounder(detector=FakeDetector(BOXES, SCORES, PHRASES), box_threshold=0.95)
    # predictor=None: with no box the image is never embedded, so the predictor is never touched.
    with pytest.warns(NoDetectionsWarning, match="box_threshold=0.95.*'a Cat', 'a ball'"):
        result = segment_text(None, image, "a Cat. a ball.", grounder=grounder)
    assert len(result) == 0 and result.masks.shape == (0, 300, 451) and result.image_hw == (300, 451)
    assert "no box" in result.reason


def test_embedding_needs_the_matching_image(tiny_predictor, image, embedding):
    grounder = TextGrounder(detector=FakeDetector(BOXES, SCORES, PHRASES))
    with pytest.raises(InvalidInput, match="pass image=") as err:
        segment_text(tiny_predictor, embedding, "a cat", grounder=grounder)
    assert err.value.field == "image"
    with pytest.raises(InvalidInput, match="300x451") as err:
        segment_text(tiny_predictor, embedding, "a cat", grounder=grounder, image=image[:100])
    assert err.value.field == "image"


def test_empty_text_fails_before_any_model_work(image):
    with pytest.raises(InvalidPrompt) as err:
        segment_text(None, image, " . ", grounder=None)
    assert err.value.field == "text"


def test_default_grounder_fails_fast_offline_and_is_not_cached(image, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # An empty hub cache, even on a machine that has the real detector cached.
    monkeypatch.setattr(pytest.importorskip("huggingface_hub.constants"), "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(text_module, "_default_grounder", None)
    with pytest.raises(ModelNotFound, match="IDEA-Research/grounding-dino-tiny"):
        segment_text(None, image, "a cat")
    assert text_module._default_grounder is None


@pytest.mark.skipif(not hasattr(segany.Predictor, "segment_text"), reason="Predictor.segment_text not wired yet")
def test_predictor_method_delegates(tiny_predictor, image, embedding):
    grounder = TextGrounder(detector=FakeDetector(BOXES, SCORES, PHRASES))
    via_method = tiny_predictor.segment_text(embedding, "a Cat. a ball.", grounder=grounder, image=image)
    via_function = segment_text(tiny_predictor, embedding, "a Cat. a ball.", grounder=grounder, image=image)
    np.testing.assert_array_equal(via_method.masks, via_function.masks)
    assert via_method.class_names == via_function.class_names


class ScriptedPredictor:
    """Stands in for Predictor.predict where random weights cannot produce the case: candidate k of box b
    scores `scores[b][k]` and its (1, 8) mask holds the bits of 10 * b + k."""

    def __init__(self, scores):
        self.scores = np.float32(scores)
        self.batch_sizes: list[int] = []

    def predict(self, embedding, box, multimask_output):
        box = np.atleast_2d(box)
        start = int(box[0, 0])  # box b is [b, 0, b + 1, 1]
        rows = self.scores[start : start + len(box), : 3 if multimask_output else 1]
        self.batch_sizes.append(len(box))
        codes = 10 * (start + np.arange(len(box)))[:, None] + np.arange(rows.shape[1])
        masks = _bits(codes)[..., None, :]  # (B, C, 1, 8)
        if len(box) == 1:  # the real predictor drops a batch axis of one
            return Prediction(masks=masks[0], scores=rows[0], low_res_logits=np.zeros(0))
        return Prediction(masks=masks, scores=rows, low_res_logits=np.zeros(0))


def test_masks_for_boxes_picks_the_best_candidate_in_chunks():
    rng = np.random.default_rng(1)
    scores = rng.random((17, 3))  # 17 boxes: one full chunk of 16 and a lone box
    predictor = ScriptedPredictor(scores)
    boxes = np.float32([[b, 0, b + 1, 1] for b in range(17)])
    masks, best_scores = masks_for_boxes(predictor, None, boxes, multimask_output=True)
    best = scores.argmax(axis=1)
    assert predictor.batch_sizes == [16, 1]
    np.testing.assert_array_equal(best_scores, np.float32(scores[np.arange(17), best]))
    np.testing.assert_array_equal(masks[:, 0], _bits(10 * np.arange(17) + best))
    single_masks, single_scores = masks_for_boxes(ScriptedPredictor(scores), None, boxes, multimask_output=False)
    np.testing.assert_array_equal(single_scores, np.float32(scores[:, 0]))
    np.testing.assert_array_equal(single_masks[:, 0], _bits(10 * np.arange(17)))


def _bits(codes: np.ndarray) -> np.ndarray:
    """(...,) ints below 256 -> (..., 8) bool, most significant bit first."""
    return np.unpackbits(np.asarray(codes, np.uint8)[..., None], axis=-1).astype(bool)
