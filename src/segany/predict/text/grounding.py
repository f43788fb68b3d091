"""Text -> boxes: open-vocabulary detectors that turn "a dog. a ball." into labelled boxes for SAM 2.

SAM 2 has no text encoder, so (as Grounded-SAM-2 does) text goes through a zero-shot detector first and
its boxes become box prompts. `TextGrounder` owns the parts every detector shares (phrase normalisation,
thresholds, clipping, ordering); the detector itself is any object with a `detect` method (`Detector`),
by default a Hugging Face transformers model (Grounding DINO or OWL-ViT / OWLv2) loaded through the
offline-aware hub logic. transformers is the optional extra `segany[text]` and is imported only here,
on first use.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Sequence

import numpy as np

from segany.errors import InvalidInput, InvalidPrompt, MissingExtra, ModelNotFound
from segany.model import hub

DEFAULT_MODEL_ID = "IDEA-Research/grounding-dino-tiny"

# Grounded-SAM-2's defaults for Grounding DINO; OWL models score lower, and 0.1 is what transformers'
# zero-shot detection pipeline and the OWLv2 model card use.
GROUNDING_DINO_THRESHOLDS = (0.4, 0.3)
OWL_THRESHOLDS = (0.1, 0.0)

# transformers model_type -> how its inputs and outputs are shaped.
_FAMILIES = {"grounding-dino": "grounding_dino", "mm-grounding-dino": "grounding_dino", "owlv2": "owlv2", "owlvit": "owlvit"}

# What a model repository needs for inference; skips training states, ONNX exports and the like.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]


def normalize_text(text: str | Sequence[str]) -> tuple[str, ...]:
    """Split a text prompt into phrases: "A dog. a ball." or ["a dog", "a ball"] -> ("A dog", "a ball").

    Periods separate phrases (Grounding DINO's convention); whitespace is collapsed, empty phrases are
    dropped and repeats (ignoring case) are kept once, in first-seen order. Case is kept: each model's
    formatter applies its own. Raises InvalidPrompt (field "text") when no phrase remains.
    """
    if isinstance(text, str):
        pieces = [text]
    elif isinstance(text, Sequence) and all(isinstance(t, str) for t in text):
        pieces = list(text)
    else:
        raise InvalidPrompt(f"text must be a string or a list of strings, got {type(text).__name__}", "text")
    phrases: list[str] = []
    seen: set[str] = set()
    for piece in pieces:
        for part in piece.split("."):
            phrase = re.sub(r"\s+", " ", part).strip()
            if phrase and phrase.lower() not in seen:
                seen.add(phrase.lower())
                phrases.append(phrase)
    if not phrases:
        raise InvalidPrompt("text has no phrase to look for (expected e.g. 'a dog. a ball.')", "text")
    return tuple(phrases)


def grounding_dino_prompt(phrases: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Grounding DINO's text form: lowercase phrases, each ended by a period ("a dog. a ball.").

    Returns the prompt and each phrase's [start, end) character span in it.
    """
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    cursor = 0
    for phrase in (p.lower() for p in phrases):
        spans.append((cursor, cursor + len(phrase)))
        parts.append(phrase + ".")
        cursor += len(phrase) + 2  # the period and the space that joins the next phrase
    return " ".join(parts), spans


class RawDetections(NamedTuple):
    """What a `Detector` returns: boxes_xyxy (N, 4) pixels, scores (N,) in [0, 1], phrase_ids (N,) ints
    indexing the phrases it was given."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    phrase_ids: np.ndarray


class Detector(Protocol):
    """An open-vocabulary detector. `image_rgb` is (H, W, 3) uint8; boxes come back in its pixel frame.

    Implementations should apply the thresholds the way their model defines them; the grounder drops
    boxes scoring at or below `box_threshold` again afterwards, so a detector may ignore them.
    """

    def detect(
        self, image_rgb: np.ndarray, phrases: Sequence[str], *, box_threshold: float, text_threshold: float
    ) -> RawDetections: ...


@dataclass(frozen=True, eq=False)
class GroundedBoxes:
    """Boxes found for a text prompt, best score first."""

    boxes_xyxy: np.ndarray  # (N, 4) float32, pixels of the original image, clipped to it
    scores: np.ndarray  # (N,) float32 detector confidence
    phrase_ids: np.ndarray  # (N,) int64 index into `phrases`
    phrases: tuple[str, ...]  # the normalised phrases that were looked for
    image_hw: tuple[int, int]

    @property
    def labels(self) -> tuple[str, ...]:
        """The phrase each box was found for."""
        return tuple(self.phrases[i] for i in self.phrase_ids)

    def __len__(self) -> int:
        return int(self.boxes_xyxy.shape[0])


def _check_threshold(value: float, field: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise InvalidInput(f"{field} must lie in [0, 1], got {value}", field)
    return value


class TextGrounder:
    """Text prompt -> labelled boxes, with a zero-shot detector from Hugging Face or any `Detector`.

    `model_id` is a hub id or a local directory saved with `save_pretrained`; Grounding DINO
    (grounding-dino, mm-grounding-dino) and OWL-ViT / OWLv2 model types are supported. Thresholds left
    as None take the model family's defaults. Safe to share between threads once built.
    """

    def __init__(
        self,
        model_id: str | os.PathLike = DEFAULT_MODEL_ID,
        *,
        box_threshold: float | None = None,
        text_threshold: float | None = None,
        max_detections: int = 100,
        device: Any = None,
        dtype: Any = None,
        detector: Detector | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        # Settings are checked before any weights load, so a typo fails in milliseconds.
        if box_threshold is not None:
            _check_threshold(box_threshold, "box_threshold")
        if text_threshold is not None:
            _check_threshold(text_threshold, "text_threshold")
        if max_detections < 1:
            raise InvalidInput(f"max_detections must be at least 1, got {max_detections}", "max_detections")
        if detector is None:
            detector = HuggingFaceDetector(resolve_model_dir(model_id, revision, cache_dir), device=device, dtype=dtype)
        default_box, default_text = getattr(detector, "default_thresholds", GROUNDING_DINO_THRESHOLDS)
        self.detector = detector
        self.model_id = str(model_id)
        self.box_threshold = _check_threshold(default_box if box_threshold is None else box_threshold, "box_threshold")
        self.text_threshold = _check_threshold(
            default_text if text_threshold is None else text_threshold, "text_threshold")
        self.max_detections = int(max_detections)

    def ground(
        self, image: Any, text: str | Sequence[str], *,
        box_threshold: float | None = None, text_threshold: float | None = None,
    ) -> GroundedBoxes:
        """Boxes for each phrase of `text` in `image` (any source `segany.io.images.load_image` takes).

        Keeps boxes scoring above `box_threshold` (strictly, as Grounding DINO does), at most
        `max_detections`, sorted by score (ties keep the detector's order).
        """
        from segany.io.images import load_image

        phrases = normalize_text(text)
        box_t = self.box_threshold if box_threshold is None else _check_threshold(box_threshold, "box_threshold")
        text_t = self.text_threshold if text_threshold is None else _check_threshold(text_threshold, "text_threshold")
        rgb = load_image(image)
        height, width = rgb.shape[:2]
        raw = self.detector.detect(rgb, phrases, box_threshold=box_t, text_threshold=text_t)
        boxes = np.asarray(raw.boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(raw.scores, dtype=np.float32).reshape(-1)
        phrase_ids = np.asarray(raw.phrase_ids, dtype=np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(phrase_ids):
            raise ValueError(f"detector returned {len(boxes)} boxes, {len(scores)} scores, {len(phrase_ids)} phrase ids")
        boxes = np.clip(boxes, 0.0, np.array([width, height, width, height], dtype=np.float32))
        keep = (scores > box_t) & (phrase_ids >= 0) & (phrase_ids < len(phrases)) & np.isfinite(boxes).all(axis=1)
        order = np.flatnonzero(keep)
        order = order[np.argsort(-scores[order], kind="stable")][: self.max_detections]
        return GroundedBoxes(boxes[order], scores[order], phrase_ids[order], phrases, (height, width))

    __call__ = ground


# ---- Hugging Face detectors ----------------------------------------------------------------------


def import_transformers() -> Any:
    """The transformers module, or MissingExtra naming `segany[text]`."""
    try:
        import transformers
    except ImportError as exc:
        raise MissingExtra("text", "transformers", "Text prompts") from exc
    return transformers


def resolve_model_dir(
    model_id: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Local directory holding `model_id`: the directory itself, else its Hugging Face cache snapshot.

    The cache is tried first with no network; only when it misses and HF_HUB_OFFLINE is unset is the
    hub asked. Either failure raises ModelNotFound saying how to supply the weights.
    """
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    repo_id = str(model_id)
    how = detector_fetch_hint(repo_id)
    if path.exists() or repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1:
        raise ModelNotFound(f"detector {repo_id!r} is not a directory holding a detector; {how}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise MissingExtra("text", "huggingface_hub", "Loading detectors by hub id") from exc
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                      allow_patterns=HUB_PATTERNS))
    except Exception:
        pass  # not cached (or not a valid id): the messages below say which
    reason = hub.hub_unreachable()  # once per process: no ~25 s of retries per attempt
    if reason is not None:
        raise ModelNotFound(f"detector {repo_id!r}: not in the Hugging Face cache and the hub cannot be used "
                            f"({reason}); {how}")
    earlier = hub.remembered_failure(repo_id)
    if earlier is not None:
        raise ModelNotFound(earlier)
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_PATTERNS,
                                      etag_timeout=5))
    except Exception as exc:  # unreachable hub, unknown repo, bad id: all mean "not available here"
        message = f"detector {repo_id!r}: could not fetch it ({type(exc).__name__}); {how}"
        hub.remember_failure(repo_id, "*", message)
        raise ModelNotFound(message) from exc


def detector_fetch_hint(repo_id: str) -> str:
    """How to supply a detector: the command that fetches it and the flags that pass a local folder."""
    return (f"fetch it on a connected machine with `segany weights fetch {repo_id}` (or "
            f"`{hub.fetch_command(repo_id)}`), or pass a folder saved with save_pretrained: --detector DIR "
            f"(segany serve: --text-model DIR; library: TextGrounder(model_id=DIR))")


class HuggingFaceDetector:
    """A transformers zero-shot object detector, loaded from a local directory."""

    def __init__(self, model_dir: str | os.PathLike, *, device: Any = None, dtype: Any = None) -> None:
        transformers = import_transformers()
        import torch

        from segany.model.weights import default_device

        config = transformers.AutoConfig.from_pretrained(model_dir)
        family = _FAMILIES.get(config.model_type)
        if family is None:
            raise ModelNotFound(
                f"model_id {str(model_dir)!r} is a {config.model_type!r} model; text prompts support "
                f"{', '.join(sorted(_FAMILIES))} (or pass detector= any object with a detect method)")
        self.family = family
        self.default_thresholds = GROUNDING_DINO_THRESHOLDS if family == "grounding_dino" else OWL_THRESHOLDS
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or torch.float32
        # The PIL image processors: the torchvision ("fast") ones need torchvision, which segany never imports.
        self.processor = transformers.AutoProcessor.from_pretrained(model_dir, **_pil_backend_kwargs(transformers))
        model = transformers.AutoModelForZeroShotObjectDetection.from_pretrained(model_dir)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

    def detect(
        self, image_rgb: np.ndarray, phrases: Sequence[str], *, box_threshold: float, text_threshold: float
    ) -> RawDetections:
        import torch

        with torch.inference_mode():
            if self.family == "grounding_dino":
                return self._detect_grounding_dino(image_rgb, phrases, box_threshold, text_threshold)
            return self._detect_owl(image_rgb, phrases, box_threshold)

    def _run(self, inputs: Any) -> Any:
        moved = {k: v.to(self.device) for k, v in inputs.items()}
        moved["pixel_values"] = moved["pixel_values"].to(self.dtype)
        return self.model(**moved)

    def _detect_grounding_dino(
        self, image_rgb: np.ndarray, phrases: Sequence[str], box_threshold: float, text_threshold: float
    ) -> RawDetections:
        import torch

        prompt, spans = grounding_dino_prompt(phrases)
        inputs = self.processor(images=image_rgb, text=prompt, return_tensors="pt")
        n_tokens = int(inputs["input_ids"].shape[1])
        max_tokens = int(self.model.config.max_text_len)
        if n_tokens > max_tokens:
            raise InvalidPrompt(f"text is {n_tokens} tokens long; this detector reads at most {max_tokens}", "text")
        # Which phrase each token belongs to, from the tokenizer's character offsets; [CLS], [SEP] and the
        # periods belong to none, so they can raise a box's score but never name its phrase.
        offsets = self.processor.tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
        token_phrase = np.full(n_tokens, -1)
        for token, (start, end) in enumerate(offsets[:n_tokens]):
            for phrase_id, (span_start, span_end) in enumerate(spans):
                if end > start and span_start <= start < span_end:
                    token_phrase[token] = phrase_id
        outputs = self._run(inputs)
        probs = outputs.logits[0, :, :n_tokens].float().sigmoid().cpu()  # (queries, tokens)
        box_scores = probs.max(dim=1).values  # a box's score is its best token, as Grounding DINO defines it
        phrase_probs = torch.zeros(probs.shape[0], len(phrases))
        for phrase_id in range(len(phrases)):
            tokens = torch.from_numpy(np.flatnonzero(token_phrase == phrase_id))
            if len(tokens):
                phrase_probs[:, phrase_id] = probs[:, tokens].max(dim=1).values
        best_prob, best_phrase = phrase_probs.max(dim=1)
        keep = ((box_scores > box_threshold) & (best_prob > text_threshold)).numpy()
        height, width = image_rgb.shape[:2]
        boxes = _cxcywh_to_xyxy(outputs.pred_boxes[0].float().cpu().numpy()) * np.array([width, height] * 2)
        return RawDetections(boxes[keep], box_scores.numpy()[keep], best_phrase.numpy()[keep])

    def _detect_owl(self, image_rgb: np.ndarray, phrases: Sequence[str], box_threshold: float) -> RawDetections:
        inputs = self.processor(text=[list(phrases)], images=image_rgb, return_tensors="pt")
        outputs = self._run(inputs)
        best = outputs.logits[0].float().max(dim=-1)  # (patches,): best query per predicted box
        scores = best.values.sigmoid().cpu().numpy()
        height, width = image_rgb.shape[:2]
        # OWLv2 pads the image to a square at the bottom/right before resizing, so its boxes are fractions of
        # the padded side; OWL-ViT stretches the image instead.
        scale = [max(height, width)] * 4 if self.family == "owlv2" else [width, height] * 2
        boxes = _cxcywh_to_xyxy(outputs.pred_boxes[0].float().cpu().numpy()) * np.array(scale)
        keep = scores > box_threshold
        return RawDetections(boxes[keep], scores[keep], best.indices.cpu().numpy()[keep])


def _cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) centre x, centre y, width, height -> (N, 4) x0, y0, x1, y1, same units."""
    centre, size = boxes[:, :2], boxes[:, 2:]
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def _pil_backend_kwargs(transformers: Any) -> dict[str, Any]:
    """Ask for the PIL ("slow") image processors: `backend="pil"` in transformers 5, `use_fast=False` before."""
    major = int(transformers.__version__.split(".")[0])
    return {"backend": "pil"} if major >= 5 else {"use_fast": False}
