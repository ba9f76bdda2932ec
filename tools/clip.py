"""CLIP-style scoring: zero-shot normal-vs-anomalous scores and maps, arbitrary text against frames or crops, and
text-to-frame retrieval.

Two encoder backends share one scorer: ``TransformersClip`` (CLIP and SigLIP folders through transformers'
``AutoModel``) and ``OpenClip`` (open_clip's ``local-dir:`` layout). Both return unit-length embeddings.

Zero-shot scoring follows WinCLIP (Jeong et al., CVPR 2023): a compositional prompt ensemble per class
(``prompts/clip.yaml``), the softmax of the scaled cosine similarity to the two class embeddings, and an anomaly
map from sliding windows at two scales, each pixel the mean score of the windows that cover it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from anomalens.errors import ModelStoreError
from anomalens.prompts import load as load_prompts
from anomalens.tools.vision import clip_boxes, device, frame_size, rgb
from anomalens.types import Evidence, EvidenceKind, Measurement, MeasurementKind, Source
from anomalens.weights import resolve

BATCH = 16
WINDOW_FRACTIONS = (0.5, 0.33)  # window side as a fraction of the frame's shorter side (WinCLIP's two scales)
WINDOW_STRIDE = 0.5  # of the window side


def _unit(features) -> np.ndarray:
    array = features.detach().float().cpu().numpy()
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


class TransformersClip:
    """A CLIP or SigLIP model folder loaded with transformers."""

    backend = "transformers"

    def __init__(self, model, processor, weights: str, device_name: str):
        self.model, self.processor, self.weights, self.device = model, processor, weights, device_name
        self._siglip = model.config.model_type.startswith("siglip")
        self.logit_scale = float(model.logit_scale.exp().item())

    @classmethod
    def load(cls, weights: str | Path | None = None, device_name: str | None = None) -> TransformersClip:
        from transformers import AutoModel, AutoProcessor

        path = resolve(weights, "clip:transformers")
        try:
            model = AutoModel.from_pretrained(path, local_files_only=True)
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ModelStoreError(f"{path}: cannot load a CLIP/SigLIP model: {error}") from None
        if not hasattr(model, "get_image_features") or not hasattr(model, "logit_scale"):
            raise ModelStoreError(f"{path}: {type(model).__name__} is not a CLIP-style image-text model")
        chosen = device(device_name)
        return cls(model.to(chosen).eval(), processor, str(path), chosen)

    def _features(self, output):
        # transformers 5 returns the projected embedding as the output's pooler_output; 4.x a tensor.
        return output if hasattr(output, "detach") else output.pooler_output

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        rows = []
        for start in range(0, len(images), BATCH):
            batch = [rgb(image) for image in images[start : start + BATCH]]
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                rows.append(_unit(self._features(self.model.get_image_features(**inputs))))
        return np.concatenate(rows)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        # SigLIP was trained on max-length padding; CLIP pools at the end token and pads to the batch.
        padding = "max_length" if self._siglip else True
        inputs = self.processor(text=list(texts), padding=padding, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            return _unit(self._features(self.model.get_text_features(**inputs.to(self.device))))


class OpenClip:
    """An open_clip model from a folder in the Hugging Face layout (``open_clip_config.json`` and weights)."""

    backend = "open_clip"

    def __init__(self, model, preprocess, tokenizer, weights: str, device_name: str):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.weights, self.device = weights, device_name
        self.logit_scale = float(model.logit_scale.exp().item())

    @classmethod
    def load(cls, weights: str | Path | None = None, device_name: str | None = None) -> OpenClip:
        import open_clip

        path = resolve(weights, "clip:open_clip")
        chosen = device(device_name)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}", device=chosen)
            tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        except (OSError, ValueError, RuntimeError) as error:
            raise ModelStoreError(f"{path}: cannot load an open_clip model: {error}") from None
        return cls(model.eval(), preprocess, tokenizer, str(path), chosen)

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        rows = []
        for start in range(0, len(images), BATCH):
            batch = [self.preprocess(Image.fromarray(rgb(image))) for image in images[start : start + BATCH]]
            with torch.inference_mode():
                rows.append(_unit(self.model.encode_image(torch.stack(batch).to(self.device))))
        return np.concatenate(rows)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return _unit(self.model.encode_text(self.tokenizer(list(texts)).to(self.device)))


Encoder = TransformersClip | OpenClip


def windows(size: tuple[int, int], fractions: Sequence[float] = WINDOW_FRACTIONS) -> np.ndarray:
    """Square sliding windows (x1, y1, x2, y2) covering a ``size`` frame at each scale; the last row and column
    of windows are flush with the frame's edges."""
    width, height = size
    boxes = []
    for fraction in fractions:
        side = max(int(round(min(width, height) * fraction)), 1)
        step = max(int(round(side * WINDOW_STRIDE)), 1)
        xs = sorted({*range(0, max(width - side, 0) + 1, step), max(width - side, 0)})
        ys = sorted({*range(0, max(height - side, 0) + 1, step), max(height - side, 0)})
        boxes += [(x, y, min(x + side, width), min(y + side, height)) for y in ys for x in xs]
    return np.asarray(boxes, dtype=np.float64)


class ClipScorer:
    """Zero-shot anomaly scores and maps, text scores and retrieval over one encoder."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self._classes: dict[str, np.ndarray] = {}

    @cached_property
    def _prompts(self) -> dict:
        return load_prompts("clip")

    def _source(self, started: float) -> Source:
        weights = Path(self.encoder.weights).name
        return Source(
            tool="clip", backend=self.encoder.backend, weights=weights, latency_s=time.perf_counter() - started
        )

    def class_embeddings(self, subject: str) -> np.ndarray:
        """(2, d): the normal and anomalous prompt ensembles' mean embeddings, unit length."""
        if subject not in self._classes:
            rows = []
            for states in ("normal_states", "anomalous_states"):
                texts = [t.format(s.format(subject)) for s in self._prompts[states] for t in self._prompts["templates"]]
                mean = self.encoder.encode_texts(texts).mean(axis=0)
                rows.append(mean / max(np.linalg.norm(mean), 1e-12))
            self._classes[subject] = np.stack(rows)
        return self._classes[subject]

    def anomaly_probability(self, embeddings: np.ndarray, subject: str) -> np.ndarray:
        logits = self.encoder.logit_scale * embeddings @ self.class_embeddings(subject).T
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds[:, 1] / odds.sum(axis=1)

    def window_embeddings(self, image: np.ndarray) -> np.ndarray:
        """(1 + windows, d): the whole frame's embedding, then each sliding window's."""
        boxes = windows(frame_size(image))
        crops = [image] + [image[int(y1) : int(y2), int(x1) : int(x2)] for x1, y1, x2, y2 in boxes]
        return self.encoder.encode_images(crops)

    def score(
        self,
        image: np.ndarray,
        subject: str = "object",
        frame_index: int | None = None,
        normal_windows: np.ndarray | None = None,
    ) -> Evidence:
        """One frame's evidence: a WinCLIP anomaly map and a frame score (the mean of the whole-frame score and
        the map's maximum). With ``normal_windows`` (window embeddings of normal images) each window's score is
        averaged with its distance to the nearest normal window, half of one minus the cosine (WinCLIP+)."""
        started = time.perf_counter()
        size = frame_size(image)
        boxes = windows(size)
        embeddings = self.window_embeddings(image)
        probability = self.anomaly_probability(embeddings, subject)
        if normal_windows is not None:
            probability = (probability + (1 - (embeddings @ normal_windows.T).max(axis=1)) / 2) / 2
        total, covered = np.zeros(size[::-1]), np.zeros(size[::-1])
        for (x1, y1, x2, y2), p in zip(boxes.astype(int), probability[1:]):
            total[y1:y2, x1:x2] += p
            covered[y1:y2, x1:x2] += 1
        anomaly_map = total / np.maximum(covered, 1)
        return Evidence(
            kind=EvidenceKind.IMAGE,
            source=self._source(started),
            frame_index=frame_index,
            frame_size=size,
            anomaly_map=anomaly_map.astype(np.float32),
            frame_score=float((probability[0] + anomaly_map.max()) / 2),
        )

    def text_scores(
        self,
        image: np.ndarray,
        texts: Sequence[str],
        boxes: np.ndarray | None = None,
        frame_index: int | None = None,
    ) -> Evidence:
        """How well each text describes the frame, or each box's crop: one object per box (the whole frame when
        none), classed by its best text and scored by that text's softmax probability among ``texts``; every
        cosine similarity is kept as a ``TEXT_SIMILARITY`` measurement named by its text."""
        if not texts:
            raise ValueError("text_scores needs at least one text")
        started = time.perf_counter()
        size = frame_size(image)
        boxes = clip_boxes(np.array([[0, 0, *size]]) if boxes is None else boxes, size)
        crops = [
            image[int(y1) : max(int(y2), int(y1) + 1), int(x1) : max(int(x2), int(x1) + 1)] for x1, y1, x2, y2 in boxes
        ]
        similarity = self.encoder.encode_images(crops) @ self.encoder.encode_texts(texts).T
        logits = self.encoder.logit_scale * similarity
        probability = np.exp(logits - logits.max(axis=1, keepdims=True))
        probability /= probability.sum(axis=1, keepdims=True)
        best = probability.argmax(axis=1)
        measurements = [
            Measurement(
                kind=MeasurementKind.TEXT_SIMILARITY, name=text, value=float(similarity[i, j]), unit="cosine",
                object_index=i,
            )
            for i in range(len(boxes))
            for j, text in enumerate(texts)
        ]
        chosen = probability[np.arange(len(boxes)), best]
        return Evidence(
            kind=EvidenceKind.TEXT_MATCH,
            source=self._source(started),
            frame_index=frame_index,
            frame_size=size,
            boxes=boxes,
            scores=chosen,
            labels=[texts[j] for j in best],
            class_names=[texts[j] for j in best],
            class_scores=chosen,
            measurements=measurements,
        )

    def index(self, frames: Sequence[np.ndarray], frame_indices: Sequence[int]) -> FrameIndex:
        if len(frames) != len(frame_indices):
            raise ValueError(f"{len(frames)} frames but {len(frame_indices)} frame indices")
        return FrameIndex(self, np.asarray(frame_indices), self.encoder.encode_images(frames))


@dataclass
class FrameIndex:
    """A video's frame embeddings, built once, searched by text ("when does a truck appear?")."""

    scorer: ClipScorer
    frame_indices: np.ndarray
    embeddings: np.ndarray

    def search(self, text: str, top_k: int = 5) -> list[tuple[int, float]]:
        """The ``top_k`` frames most like ``text``: (frame index, cosine similarity), best first."""
        similarity = self.embeddings @ self.scorer.encoder.encode_texts([text])[0]
        order = np.argsort(-similarity, kind="stable")[:top_k]
        return [(int(self.frame_indices[k]), float(similarity[k])) for k in order]
