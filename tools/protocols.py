"""What the pipeline and the agent ask of each kind of tool. Any backend that has these methods fits; the
registry (``backends.yaml``) names the ones that ship. Frames are ``(h, w, 3)`` uint8 BGR at source
resolution; everything returned is ``Evidence`` in source pixels (see ``anomalens.types``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from anomalens.types import CueReason, Evidence, Track
from anomalens.video import Frame


class Detector(Protocol):
    def detect(
        self, image: np.ndarray, prompts: Sequence[str], box_threshold: float = ..., frame_index: int | None = None
    ) -> Evidence:
        """``DETECTION`` evidence: boxes of what ``prompts`` name, each with its class and score."""

    def knows(self, term: str) -> bool:
        """Whether the detector can find what ``term`` names (an open-vocabulary one always can)."""


class Segmenter(Protocol):
    def segment(
        self,
        image: np.ndarray,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        labels: list[str] | None = None,
        frame_index: int | None = None,
    ) -> Evidence:
        """``SEGMENTATION`` evidence: one mask per box (or point) prompt."""


class TextScorer(Protocol):
    """CLIP-style: texts against a frame or its boxes, zero-shot anomaly maps, text-to-frame retrieval."""

    def text_scores(
        self, image: np.ndarray, texts: Sequence[str], boxes: np.ndarray | None = None, frame_index: int | None = None
    ) -> Evidence:
        """``TEXT_MATCH`` evidence: one object per box (the whole frame when none), classed by its best text."""

    def score(
        self, image: np.ndarray, subject: str = "object", frame_index: int | None = None,
        normal_windows: np.ndarray | None = None,
    ) -> Evidence:
        """``IMAGE`` evidence: a zero-shot anomaly map and score."""

    def index(self, frames: Sequence[np.ndarray], frame_indices: Sequence[int]): ...


class Captioner(Protocol):
    def caption(self, image: np.ndarray, frame_index: int | None = None) -> Evidence:
        """``CAPTION`` evidence: a description of the frame in ``text``."""


class PoseEstimator(Protocol):
    def estimate(self, image: np.ndarray, threshold: float = ..., frame_index: int | None = None) -> Evidence:
        """``POSE`` evidence: people, each a box and keypoints (x, y, score) in ``keypoints``."""


class Embedder(Protocol):
    def embed(
        self,
        image: np.ndarray,
        boxes: np.ndarray | None = None,
        frame_index: int | None = None,
        side: int | None = None,
    ) -> Evidence:
        """``APPEARANCE`` evidence: a unit-length embedding of each box's crop (the whole frame when none), each
        crop resized to ``side`` pixels square (default: the network's own input)."""

    def patch_features(self, image: np.ndarray) -> np.ndarray:
        """``(rows, cols, C)`` locally aware patch features of the whole image (``tools.patch_knn``)."""


class FrameScorer(Protocol):
    def score(self, frame: Frame) -> Evidence:
        """``FRAME`` evidence of one frame, with ``frame_score`` (1.0: the edge of normal)."""

    def tracks(self) -> list[Track]:
        """Every object followed so far (none, for a scorer that follows no objects)."""


class Cue(Protocol):
    """A screening cue beside the frames' own scores (e.g. what captions say), fused by maximum."""

    origin: str  # what the cue read, for the report

    def levels(self, frame_indices: np.ndarray) -> np.ndarray:
        """The cue at each source frame, 1.0 at its own threshold; 0 where it says nothing."""

    def reason(self, start_frame: int, end_frame: int) -> CueReason | None:
        """Why the cue calls frames ``start_frame``-``end_frame`` anomalous, if it does."""
