"""Detections in, labelled masks out: Roboflow dicts and supervision.Detections as box prompts on the tiny model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

import segany
from segany.errors import InvalidInput, InvalidPrompt
from segany.predict.detections import (
    LabelledMasks, NoDetectionsWarning, parse_detections, segment_detections,
)

REPO = Path(__file__).resolve().parents[2]


def roboflow_predictions() -> list[dict]:
    return [
        {"x": 100.0, "y": 80.0, "width": 60.0, "height": 40.0, "class": "cat", "class_id": 3, "confidence": 0.9,
         "detection_id": "det-1", "points": [{"x": 70, "y": 60}, {"x": 130, "y": 100}], "class_confidence": None},
        {"x": 300, "y": 150, "width": 100, "height": 120, "class": "dog", "class_id": 5, "confidence": 0.6,
         "detection_id": "det-2", "tracker_id": 11},
        {"x": 220, "y": 200, "width": 30, "height": 50, "class": "ball", "class_id": 0, "confidence": 0.45,
         "detection_id": "det-3"},
    ]


@pytest.fixture(scope="module")
def image(chelsea_rgb) -> np.ndarray:
    return chelsea_rgb  # 300 x 451


@pytest.fixture(scope="module")
def embedding(chelsea_embedding):
    return chelsea_embedding


def reference_masks(predictor, embedding, boxes_xyxy, multimask_output=False):
    """Each box on its own through Predictor.predict, keeping the best-scoring candidate."""
    masks, scores = [], []
    for box in boxes_xyxy:
        out = predictor.predict(embedding, box=np.asarray(box, float), multimask_output=multimask_output)
        best = int(np.argmax(out.scores))
        masks.append(out.masks[best])
        scores.append(out.scores[best])
    return np.stack(masks), np.float32(scores)


def assert_masks_match(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == bool
    # Boxes decoded as one batch may differ from one-by-one decoding in the last float bits.
    assert (actual == expected).mean() >= 0.999


# ---- parsing -------------------------------------------------------------------------------------


def test_roboflow_dicts_parse_centre_boxes_and_keep_every_field():
    boxes = parse_detections(roboflow_predictions())
    np.testing.assert_array_equal(boxes.boxes_xyxy, np.float32([[70, 60, 130, 100], [250, 90, 350, 210], [205, 175, 235, 225]]))
    assert boxes.class_names == ("cat", "dog", "ball")
    np.testing.assert_array_equal(boxes.class_ids, [3, 5, 0])
    np.testing.assert_allclose(boxes.confidences, [0.9, 0.6, 0.45])
    np.testing.assert_array_equal(boxes.tracker_ids, [-1, 11, -1])  # only one detection had a tracker id
    assert boxes.detection_ids == ("det-1", "det-2", "det-3")
    assert set(boxes.data) == {"points", "class_confidence"}
    assert boxes.data["points"][0] == [{"x": 70, "y": 60}, {"x": 130, "y": 100}] and boxes.data["points"][1] is None


def test_roboflow_response_object_keeps_top_level_fields_as_metadata():
    response = {"predictions": roboflow_predictions()[:1], "image": {"width": 451, "height": 300}, "time": 0.1}
    boxes = parse_detections(response)
    assert len(boxes) == 1 and boxes.metadata == {"image": {"width": 451, "height": 300}, "time": 0.1}


def test_minimal_roboflow_dict_has_no_labels():
    boxes = parse_detections([{"x": 10, "y": 10, "width": 4, "height": 6}])
    assert boxes.class_names == (None,) and boxes.class_ids is None and boxes.confidences is None
    assert boxes.detection_ids == (None,)


@pytest.mark.parametrize("detections, field", [
    ([{"x": 1, "y": 1, "width": 2}], "detections[0].height"),
    ([{"x": 1, "y": 1, "width": 2, "height": 2}, {"x": "1", "y": 1, "width": 2, "height": 2}], "detections[1].x"),
    ([{"x": 1, "y": 1, "width": float("nan"), "height": 2}], "detections[0].width"),
    ([{"x": 1, "y": 1, "width": 2, "height": -2}], "detections[0].width"),
    ([{"x": 1, "y": 1, "width": 2, "height": 2, "class_id": "three"}], "detections[0].class_id"),
    ([{"x": True, "y": 1, "width": 2, "height": 2}], "detections[0].x"),
    ([[1, 2, 3, 4]], "detections[0]"),
    ({"boxes": []}, "detections"),
    ("x=1", "detections"),
    (42, "detections"),
])
def test_malformed_roboflow_detections_name_the_field(detections, field):
    with pytest.raises(InvalidPrompt) as err:
        parse_detections(detections)
    assert err.value.field == field


def test_supervision_detections_parse_with_all_fields():
    sv = pytest.importorskip("supervision")
    dets = sv.Detections(
        xyxy=np.float32([[10, 20, 50, 60], [100, 100, 200, 180]]), confidence=np.float32([0.8, 0.3]),
        class_id=np.array([2, 7]), tracker_id=np.array([4, 9]),
        data={"class_name": np.array(["car", "tire"]), "detection_id": np.array(["a", "b"]), "color": np.array(["red", "black"])},
    )
    boxes = parse_detections(dets)
    np.testing.assert_array_equal(boxes.boxes_xyxy, dets.xyxy)
    assert boxes.class_names == ("car", "tire") and boxes.detection_ids == ("a", "b")
    np.testing.assert_array_equal(boxes.class_ids, [2, 7])
    np.testing.assert_array_equal(boxes.tracker_ids, [4, 9])
    assert list(boxes.data) == ["color"] and list(boxes.data["color"]) == ["red", "black"]


def test_supervision_boxes_must_be_ordered():
    sv = pytest.importorskip("supervision")
    with pytest.raises(InvalidPrompt) as err:
        parse_detections(sv.Detections(xyxy=np.float32([[50, 20, 10, 60]])))
    assert err.value.field == "detections.xyxy"


# ---- segmentation --------------------------------------------------------------------------------


def test_roboflow_detections_become_labelled_masks(tiny_predictor, embedding):
    result = segment_detections(tiny_predictor, embedding, roboflow_predictions())
    boxes = parse_detections(roboflow_predictions()).boxes_xyxy
    masks, scores = reference_masks(tiny_predictor, embedding, boxes)
    assert len(result) == 3 and result.image_hw == (300, 451) and result.reason is None
    assert_masks_match(result.masks, masks)
    np.testing.assert_allclose(result.mask_scores, scores, atol=1e-4)
    assert result.class_names == ("cat", "dog", "ball")
    assert result.parent_ids == ("det-1", "det-2", "det-3")
    assert len(set(result.detection_ids)) == 3 and all(uuid.UUID(i) for i in result.detection_ids)

    records = result.to_dicts()
    for record, given in zip(records, roboflow_predictions()):
        assert {k: v for k, v in record.items() if k in given and k != "detection_id"} == \
            {k: v for k, v in given.items() if k != "detection_id"}
        assert record["parent_id"] == given["detection_id"] and record["detection_id"] != given["detection_id"]
    assert records[1]["tracker_id"] == 11 and "tracker_id" not in records[0]
    np.testing.assert_array_equal(records[2]["mask"], result.masks[2])
    json.dumps([{k: v for k, v in r.items() if k != "mask"} for r in records])  # plain values only


def test_multimask_output_keeps_the_best_of_three(tiny_predictor, embedding):
    result = segment_detections(tiny_predictor, embedding, roboflow_predictions(), multimask_output=True)
    masks, scores = reference_masks(tiny_predictor, embedding, result.boxes_xyxy, multimask_output=True)
    assert_masks_match(result.masks, masks)
    np.testing.assert_allclose(result.mask_scores, scores, atol=1e-4)


def test_threshold_drops_masks_scoring_below_it(tiny_predictor, embedding):
    full = segment_detections(tiny_predictor, embedding, roboflow_predictions())
    order = np.sort(full.mask_scores)
    cut = float(order[1])  # keeps the two best masks: a score equal to the threshold is not below it
    kept = segment_detections(tiny_predictor, embedding, roboflow_predictions(), threshold=cut)
    expect = np.flatnonzero(full.mask_scores >= cut)
    assert len(expect) == 2
    np.testing.assert_array_equal(kept.parent_indices, expect)
    assert kept.class_names == tuple(full.class_names[i] for i in expect)
    assert kept.parent_ids == tuple(full.parent_ids[i] for i in expect)
    assert list(kept.data["points"]) == [full.data["points"][i] for i in expect]
    assert "1 of 3 masks scored below threshold" in kept.reason
    none = segment_detections(tiny_predictor, embedding, roboflow_predictions(), threshold=1.5)
    assert len(none) == 0 and none.masks.shape == (0, 300, 451) and "3 of 3" in none.reason


@pytest.mark.parametrize("detections", [[], {"predictions": []}, "sv-empty"])
def test_no_detections_means_no_masks(tiny_predictor, image, detections):
    if detections == "sv-empty":
        detections = pytest.importorskip("supervision").Detections.empty()
    with pytest.warns(NoDetectionsWarning, match="no detections"):
        result = segment_detections(tiny_predictor, image, detections)  # decodes the image for its size only
    assert len(result) == 0 and result.masks.shape == (0, 300, 451) and "no detections" in result.reason


def test_invalid_threshold_names_the_field(tiny_predictor, embedding):
    with pytest.raises(InvalidInput) as err:
        segment_detections(tiny_predictor, embedding, roboflow_predictions(), threshold="high")
    assert err.value.field == "threshold"


def test_segment_detections_is_exported_lazily():
    assert segany.segment_detections is segment_detections


# ---- supervision round trip ----------------------------------------------------------------------


def test_supervision_in_and_out_keeps_names_ids_and_fields(tiny_predictor, embedding):
    sv = pytest.importorskip("supervision")
    given = sv.Detections(
        xyxy=np.float32([[70, 60, 130, 100], [250, 90, 350, 210]]), confidence=np.float32([0.8, 0.3]),
        class_id=np.array([2, 7]), tracker_id=np.array([4, 9]),
        data={"class_name": np.array(["car", "tire"]), "detection_id": np.array(["a", "b"]), "color": np.array(["red", "black"])},
        metadata={"source": "yolo"},
    )
    result = segment_detections(tiny_predictor, embedding, given)
    out = result.to_supervision()
    assert isinstance(out, sv.Detections) and len(out) == 2
    np.testing.assert_array_equal(out.xyxy, given.xyxy)
    np.testing.assert_array_equal(out.mask, result.masks)
    np.testing.assert_array_equal(out.confidence, given.confidence)
    np.testing.assert_array_equal(out.class_id, given.class_id)
    np.testing.assert_array_equal(out.tracker_id, given.tracker_id)
    assert list(out.data["class_name"]) == ["car", "tire"] and list(out.data["color"]) == ["red", "black"]
    assert list(out.data["parent_id"]) == ["a", "b"] and list(out.data["detection_id"]) == list(result.detection_ids)
    np.testing.assert_array_equal(out.data["mask_score"], result.mask_scores)
    assert out.metadata == {"source": "yolo"}

    back = LabelledMasks.from_supervision(out)
    for name in ("masks", "mask_scores", "boxes_xyxy", "class_ids", "confidences", "tracker_ids", "parent_indices"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name), err_msg=name)
    for name in ("class_names", "detection_ids", "parent_ids", "image_hw"):
        assert getattr(back, name) == getattr(result, name), name
    assert list(back.data) == ["color"] and list(back.data["color"]) == ["red", "black"]
    # The supervision result can itself be segmented again: its boxes and labels are read back.
    again = parse_detections(out)
    assert again.class_names == ("car", "tire") and again.detection_ids == result.detection_ids


def test_roboflow_labels_survive_the_supervision_round_trip(tiny_predictor, embedding):
    pytest.importorskip("supervision")
    result = segment_detections(tiny_predictor, embedding, roboflow_predictions())
    back = LabelledMasks.from_supervision(result.to_supervision())
    assert back.class_names == ("cat", "dog", "ball") and back.parent_ids == ("det-1", "det-2", "det-3")
    np.testing.assert_array_equal(back.class_ids, [3, 5, 0])
    assert back.to_dicts()[0]["points"] == roboflow_predictions()[0]["points"]


def test_from_supervision_needs_masks():
    sv = pytest.importorskip("supervision")
    with pytest.raises(InvalidInput) as err:
        LabelledMasks.from_supervision(sv.Detections(xyxy=np.float32([[0, 0, 1, 1]])))
    assert err.value.field == "detections.mask"


def test_without_supervision_only_the_conversion_fails():
    code = """
        import sys
        sys.modules["supervision"] = None  # as if the extra were not installed
        import numpy as np
        from segany.errors import MissingExtra
        from segany.predict.detections import LabelledMasks, parse_detections
        empty = LabelledMasks(masks=np.zeros((0, 4, 5), bool), mask_scores=np.zeros(0, np.float32),
                              boxes_xyxy=np.zeros((0, 4), np.float32), class_names=(), class_ids=None, confidences=None,
                              tracker_ids=None, detection_ids=(), parent_ids=(), parent_indices=np.zeros(0, np.int64),
                              image_hw=(4, 5))
        assert empty.to_dicts() == [] and len(parse_detections([dict(x=1, y=1, width=1, height=1)])) == 1
        try:
            empty.to_supervision()
        except MissingExtra as exc:
            assert "segany[supervision]" in str(exc), exc
        else:
            raise AssertionError("no error")
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
<<<<<<< HEAD
                          env=dict(os.environ), timeout=120)
=======
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=120)
>>>>>>> server
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_no_warning_when_there_are_boxes(tiny_predictor, embedding):
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoDetectionsWarning)
        segment_detections(tiny_predictor, embedding, roboflow_predictions()[:1])
