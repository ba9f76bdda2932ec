"""Open-vocabulary grounded detection: text prompts -> pixel xyxy boxes, scores and the prompt each box answers.

Backends: transformers' Grounding DINO and OWLv2 (``AutoProcessor`` and the model's own post-processing), and
the original ``groundingdino-py`` package as an optional extra (it needs transformers<5, so it lives in its
own environment).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anomalens.errors import ModelStoreError
from anomalens.tools.vision import detections, device, frame_size, rgb
from anomalens.types import Evidence
from anomalens.weights import resolve

BOX_THRESHOLD = 0.3  # Grounding DINO's published defaults (box 0.35, text 0.25), OWLv2's 0.1 differ
TEXT_THRESHOLD = 0.25


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def prompt_of(phrase: str, prompts: Sequence[str]) -> str:
    """The prompt a detected phrase belongs to: the one sharing most words with it (Grounding DINO reports the
    tokens above the text threshold, which may be part of a prompt or span two)."""
    words = _words(phrase)
    overlaps = [len(words & _words(p)) for p in prompts]
    best = int(np.argmax(overlaps))
    return prompts[best] if overlaps[best] else phrase.strip() or prompts[0]


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    cleaned = [p.strip().rstrip(".").strip() for p in prompts]
    if not cleaned or not all(cleaned):
        raise ValueError(f"detection needs non-empty text prompts, got {list(prompts)!r}")
    return cleaned


class _TransformersDetector:
    backend = ""
    registry_name = ""

    def __init__(self, model, processor, weights: str, device_name: str):
        self.model, self.processor, self.weights, self.device = model, processor, weights, device_name

    @classmethod
    def load(cls, weights: str | Path | None = None, device_name: str | None = None):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        path = resolve(weights, cls.registry_name)
        try:
            model = AutoModelForZeroShotObjectDetection.from_pretrained(path, local_files_only=True)
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ModelStoreError(f"{path}: cannot load a {cls.backend} detector: {error}") from None
        chosen = device(device_name)
        return cls(model.to(chosen).eval(), processor, str(path), chosen)

    def knows(self, term: str) -> bool:
        return True  # open vocabulary

    def detect(
        self,
        image: np.ndarray,
        prompts: Sequence[str],
        box_threshold: float = BOX_THRESHOLD,
        text_threshold: float = TEXT_THRESHOLD,
        frame_index: int | None = None,
    ) -> Evidence:
        """Boxes of whatever ``prompts`` describe in one BGR frame, at the frame's pixel coordinates."""
        import torch

        started = time.perf_counter()
        prompts = _check_prompts(prompts)
        size = frame_size(image)
        inputs = self._inputs(rgb(image), prompts)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        boxes, scores, labels = self._post_process(outputs, inputs, prompts, size, box_threshold, text_threshold)
        return detections(self.backend, self.weights, started, size, boxes, scores, labels, frame_index)


class GroundingDinoDetector(_TransformersDetector):
    backend = "grounding-dino"
    registry_name = "detector:grounding-dino"

    def _inputs(self, image: np.ndarray, prompts: list[str]):
        # Grounding DINO reads one lower-case caption with prompts separated by " . ", at most max_text_len
        # tokens long (256 for the released models): a longer prompt list is cut, not an error.
        caption = ". ".join(p.lower() for p in prompts) + "."
        return self.processor(
            images=image, text=caption, truncation=True, max_length=self.model.config.max_text_len, return_tensors="pt"
        ).to(self.device)

    def _post_process(self, outputs, inputs, prompts, size, box_threshold, text_threshold):
        width, height = size
        result = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=box_threshold,
            text_threshold=text_threshold,
            target_sizes=[(height, width)],
        )[0]
        phrases = result["text_labels"] if "text_labels" in result else result["labels"]  # transformers 5 / 4
        # With no box, transformers still returns one empty phrase: keep one phrase per box.
        labels = [prompt_of(str(phrase), prompts) for phrase in phrases[: len(result["scores"])]]
        return result["boxes"].cpu().numpy(), result["scores"].cpu().numpy(), labels


class Owlv2Detector(_TransformersDetector):
    backend = "owlv2"
    registry_name = "detector:owlv2"

    def _inputs(self, image: np.ndarray, prompts: list[str]):
        return self.processor(text=[prompts], images=image, return_tensors="pt", padding=True, truncation=True).to(
            self.device
        )

    def _post_process(self, outputs, inputs, prompts, size, box_threshold, text_threshold):
        width, height = size
        # OWLv2 pads the image to a square before resizing: boxes come back relative to the padded square.
        side = max(width, height)
        result = self.processor.post_process_grounded_object_detection(
            outputs, threshold=box_threshold, target_sizes=[(side, side)]
        )[0]
        labels = [prompts[int(k)] for k in result["labels"]]
        return result["boxes"].cpu().numpy(), result["scores"].cpu().numpy(), labels


class GroundingDinoPyDetector:
    """The original Grounding DINO through ``groundingdino-py`` (optional; needs transformers<5, so it is not
    installed beside the rest and is untested here)."""

    backend = "groundingdino-py"

    def __init__(self, model, weights: str, device_name: str):
        self.model, self.weights, self.device = model, weights, device_name

    @classmethod
    def load(cls, weights: str | Path | None = None, device_name: str | None = None) -> GroundingDinoPyDetector:
        from groundingdino.util.inference import load_model

        folder = resolve(weights, "detector:groundingdino-py")
        configs, checkpoints = sorted(folder.glob("*.cfg.py")), sorted(folder.glob("*.pth"))
        if not configs or not checkpoints:
            raise ModelStoreError(f"{folder}: expected a Grounding DINO *.cfg.py and *.pth")
        chosen = device(device_name)
        return cls(load_model(str(configs[0]), str(checkpoints[0]), device=chosen), str(folder), chosen)

    def knows(self, term: str) -> bool:
        return True  # open vocabulary

    def detect(
        self,
        image: np.ndarray,
        prompts: Sequence[str],
        box_threshold: float = BOX_THRESHOLD,
        text_threshold: float = TEXT_THRESHOLD,
        frame_index: int | None = None,
    ) -> Evidence:
        import groundingdino.datasets.transforms as T
        from groundingdino.util.inference import predict
        from PIL import Image

        started = time.perf_counter()
        prompts = _check_prompts(prompts)
        size = frame_size(image)
        transform = T.Compose(
            [
                T.RandomResize([800], max_size=1333),
                T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )
        tensor, _ = transform(Image.fromarray(rgb(image)), None)
        boxes, scores, phrases = predict(
            self.model, tensor, ". ".join(prompts) + ".", box_threshold, text_threshold, device=self.device
        )
        width, height = size
        cx, cy, w, h = (boxes.numpy() * np.array([width, height, width, height])).T  # normalised cxcywh
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        classes = [prompt_of(p, prompts) for p in phrases]
        return detections(self.backend, self.weights, started, size, xyxy, scores.numpy(), classes, frame_index)
