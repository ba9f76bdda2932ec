"""The foundation-model tools present on this machine, a frame reader for them, and the verifier's grounders.

``Perception.available()`` loads, per kind, the first backend that is installed and has weights here (checked
before anything heavy is imported); the kinds it could not load are listed with the reason. A vision model
behind an OpenAI-compatible server (settings ``captioner_base_url`` and ``captioner_model``) is the captioner
when set. The agent gets a tool for each kind present, and the verifier re-grounds object claims with the
detector and CLIP.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomalens.config import Settings, load_settings
from anomalens.errors import ConfigError, MissingExtra, WeightsNotFound
from anomalens.geometry import box_iou
from anomalens.types import Evidence

KINDS = {
    "clip": ("clip:transformers", "clip:open_clip"),
    "detector": ("detector:grounding-dino", "detector:owlv2", "detector:groundingdino-py"),
    "segmenter": ("segmenter:sam", "segmenter:segment-anything"),
    "captioner": ("captioner:transformers",),
}
GROUND_BOX_THRESHOLD = 0.35  # Grounding DINO's published box threshold
GROUND_MIN_IOU = 0.3  # a detection re-finds a claimed object when it overlaps the object's box this much
CLIP_DECISIVE = 0.6  # CLIP confirms a term at >= 0.6 probability against a neutral text, refutes at <= 0.4
CLIP_NEUTRAL = "a photo of something else"


@dataclass
class Perception:
    """Loaded tools (None when absent) and, for each absent kind, why."""

    clip: object | None = None  # a ClipScorer
    detector: object | None = None
    segmenter: object | None = None
    captioner: object | None = None
    absent: dict[str, str] = field(default_factory=dict)

    @classmethod
    def available(cls, root: Path | None = None, settings: Settings | None = None) -> Perception:
        from anomalens import registry, weights

        settings = settings or load_settings()
        found = cls()
        if settings.captioner_base_url:  # the user pointed at a server: it wins over local weights
            if not settings.captioner_model:
                raise ConfigError("captioner_base_url is set but captioner_model is not (ANOMALENS_CAPTIONER_MODEL)")
            found.captioner = registry.load("captioner:openai")(
                settings.captioner_model, base_url=settings.captioner_base_url, api_key=settings.llm_api_key
            )
        for kind, backends in KINDS.items():
            if getattr(found, kind) is not None:
                continue
            reasons = []
            for name in backends:
                try:
                    if registry.get(name).missing():
                        raise MissingExtra(name)
                    path = weights.resolve(None, name, root=root)
                except MissingExtra:
                    reasons.append(f"{name} not installed")
                    continue
                except WeightsNotFound:
                    reasons.append(f"{name} has no weights here")
                    continue
                tool = registry.load(name).load(path)
                if kind == "clip":
                    from anomalens.tools.clip import ClipScorer

                    tool = ClipScorer(tool)
                setattr(found, kind, tool)
                break
            else:
                found.absent[kind] = "; ".join(reasons)
        return found

    @property
    def present(self) -> list[str]:
        return [kind for kind in KINDS if getattr(self, kind) is not None]


class FrameReader:
    """Frames of one video at source resolution (where evidence boxes live), the last few kept."""

    def __init__(self, video: str | Path, keep: int = 8):
        from anomalens.video import FrameSource

        self.source = FrameSource(video, max_side=None)
        self._kept: OrderedDict[int, np.ndarray] = OrderedDict()
        self.keep = keep

    def __call__(self, frame_index: int) -> np.ndarray:
        if frame_index not in self._kept:
            self._kept[frame_index] = self.source.read(frame_index).image
            if len(self._kept) > self.keep:
                self._kept.popitem(last=False)
        return self._kept[frame_index]


class DetectorGrounder:
    """Re-finds a term with the grounded detector: in the claimed object's box, or anywhere in the frame."""

    def __init__(self, detector, frames: FrameReader, threshold: float = GROUND_BOX_THRESHOLD):
        self.detector, self.frames, self.threshold = detector, frames, threshold

    def ground(self, term: str, evidence: Evidence, box: Sequence[float] | None) -> bool | None:
        if evidence.frame_index is None:
            return None
        found = self.detector.detect(self.frames(evidence.frame_index), [term], box_threshold=self.threshold)
        if box is None or not len(found):
            return len(found) > 0
        return bool((box_iou(np.asarray([box], float), found.boxes) >= GROUND_MIN_IOU).any())


class ClipGrounder:
    """Asks CLIP whether the term describes the object's crop (or the frame) better than a neutral text;
    undecided in between."""

    def __init__(self, clip, frames: FrameReader, decisive: float = CLIP_DECISIVE):
        self.clip, self.frames, self.decisive = clip, frames, decisive

    def ground(self, term: str, evidence: Evidence, box: Sequence[float] | None) -> bool | None:
        if evidence.frame_index is None:
            return None
        image = self.frames(evidence.frame_index)
        boxes = None if box is None else np.asarray([box], float)
        scored = self.clip.text_scores(image, [f"a photo of {term}", CLIP_NEUTRAL], boxes=boxes)
        probability = scored.scores[0] if scored.labels[0] != CLIP_NEUTRAL else 1 - scored.scores[0]
        if probability >= self.decisive:
            return True
        return False if probability <= 1 - self.decisive else None


def grounders(perception: Perception | None, frames: FrameReader | None) -> list:
    """The detector first (it localises), then CLIP."""
    if perception is None or frames is None:
        return []
    found = []
    if perception.detector is not None:
        found.append(DetectorGrounder(perception.detector, frames))
    if perception.clip is not None:
        found.append(ClipGrounder(perception.clip, frames))
    return found
