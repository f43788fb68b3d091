"""Text prompts: "a dog. a ball." -> detector boxes -> one SAM 2 mask per box, labelled with its phrase."""
from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

from segany.errors import InvalidInput
from segany.predict.detections import DetectionBoxes, LabelledMasks, check_threshold, segment_boxes
from segany.predict.text.grounding import TextGrounder, normalize_text

_default_grounder: TextGrounder | None = None
_default_lock = threading.Lock()


def default_grounder() -> TextGrounder:
    """The process-wide `TextGrounder()` (Grounding DINO tiny), built on first use and then shared."""
    global _default_grounder
    with _default_lock:
        if _default_grounder is None:
            _default_grounder = TextGrounder()
        return _default_grounder


def ground_boxes(grounder: TextGrounder, image: Any, text: str | Sequence[str], *,
                 box_threshold: float | None = None, text_threshold: float | None = None) -> DetectionBoxes:
    """Text -> labelled boxes: the one text step of the library and the server.

    Boxes are (N, 4) float32 pixels of `image`; each box's class_name is its phrase, class_id the phrase's
    index in the normalised phrase list, confidence the detector score; metadata["phrases"] the phrases.
    """
    found = grounder.ground(image, text, box_threshold=box_threshold, text_threshold=text_threshold)
    return DetectionBoxes(
        boxes_xyxy=found.boxes_xyxy, class_names=found.labels, class_ids=found.phrase_ids.astype(np.int64),
        confidences=found.scores, metadata={"phrases": list(found.phrases)},
    )


def segment_text(
    predictor: Any,
    emb_or_image: Any,
    text: str | Sequence[str],
    grounder: TextGrounder | None = None,
    *,
    image: Any = None,
    multimask_output: bool = False,
    threshold: float = 0.0,
    box_threshold: float | None = None,
    text_threshold: float | None = None,
) -> LabelledMasks:
    """Masks for the phrases of `text`: the grounder's boxes become box prompts, one mask each.

    `emb_or_image` is any image source or an `ImageEmbedding`; the detector needs pixels, so with an
    embedding pass the image it was made from as `image=`. Each mask's class_name is its phrase,
    class_id the phrase's index in the normalised phrase list, confidence the detector score, and
    mask_score SAM 2's. Masks scoring below `threshold` are dropped; no box -> an empty result whose
    `reason` says so (the image is then not embedded at all). Box/text thresholds default to the grounder's.
    """
    from segany.io.images import load_image

    phrases = normalize_text(text)  # fail on an empty prompt before any model work
    threshold = check_threshold(threshold)
    is_embedding = hasattr(emb_or_image, "image_embed") and hasattr(emb_or_image, "orig_hw")
    if is_embedding:
        if image is None:
            raise InvalidInput("text prompts need the image's pixels for the detector: pass image= with the "
                               "embedding", "image")
        rgb = load_image(image)
        if tuple(rgb.shape[:2]) != tuple(emb_or_image.orig_hw):
            raise InvalidInput(f"image is {rgb.shape[0]}x{rgb.shape[1]} but the embedding was made from a "
                               f"{emb_or_image.orig_hw[0]}x{emb_or_image.orig_hw[1]} image", "image")
    else:
        rgb = load_image(emb_or_image)
    grounder = grounder if grounder is not None else default_grounder()
    boxes = ground_boxes(grounder, rgb, phrases, box_threshold=box_threshold, text_threshold=text_threshold)
    used_box = grounder.box_threshold if box_threshold is None else box_threshold
    reason = (f"the detector found no box scoring above box_threshold={used_box} for "
              f"{', '.join(repr(p) for p in boxes.metadata['phrases'])}")
    return segment_boxes(predictor, emb_or_image if is_embedding else rgb, boxes,
                         multimask_output=multimask_output, threshold=threshold, empty_reason=reason)
