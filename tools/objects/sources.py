"""Where objects come from: detector boxes first, and a moving region no box covers as an object of its own.

``Found`` is what a source gives for one frame (analysis pixels). ``DetectorSource`` runs the detector where and
when it is needed: every ``every``-th frame, and on a frame where motion appears outside the boxes it follows;
between detections, each box moves with the optical flow inside it and keeps its detection's score and class, so
the tracker still sees the detector's own confidence. ``unknown_movers`` turns the blobs that no box covers into
objects nothing named (no class): a blob never stands for a group when a detector can tell its members apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from anomalens.geometry import box_intersection, grown, nms
from anomalens.tools.motion import Motion
from anomalens.tools.protocols import Detector
from anomalens.video import Frame

NMS_IOU = 0.5  # one box per object, whatever class it was named: a walker is not also a skateboard
PART = 0.7  # a box this much inside a better-scored box of its class, or of a person, is part of that object
COVERED = 0.5  # a blob is covered when at least half of it lies inside boxes (a group's blob, inside its members')
# A blob smaller than this share of a person's height on each side (where it stands) is noise, not an object: the
# flicker of a shadow or a leaf, not anything a person would call a moving thing.
MIN_BLOB_SHARE = 0.25
BLOB_SCORE = 0.5  # what the tracker takes a blob's confidence to be: a middling detection
FOLLOW_MARGIN = 0.25  # motion within a quarter of a followed box's size of it is that object moving


@dataclass(frozen=True)
class Found:
    """Objects of one frame, analysis pixels: boxes with their confidence and class (None: nothing named it)."""

    boxes: np.ndarray  # (N, 4) xyxy
    scores: np.ndarray  # (N,)
    classes: list[str | None]
    fresh: bool = True  # found in this frame; False: boxes of an earlier detection, carried by the flow

    @classmethod
    def empty(cls) -> Found:
        return cls(np.zeros((0, 4)), np.zeros(0), [])

    def __len__(self) -> int:
        return len(self.boxes)

    def __add__(self, other: Found) -> Found:
        return Found(np.concatenate([self.boxes, other.boxes]), np.concatenate([self.scores, other.scores]),
                     self.classes + other.classes, self.fresh and other.fresh)  # fmt: skip

    def take(self, keep: np.ndarray) -> Found:
        return Found(self.boxes[keep], self.scores[keep], [self.classes[i] for i in keep], self.fresh)


class ObjectSource(Protocol):
    def find(self, frame: Frame, motion: Motion, known: np.ndarray) -> Found:
        """The objects of ``frame`` that this source knows of (analysis pixels); ``known``: the boxes of every
        object followed in the previous frame."""


def covered(blobs: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: which blobs lie at least ``COVERED`` inside the boxes (summed over boxes, which one per object
    keeps from overlapping much)."""
    blobs = np.asarray(blobs, dtype=np.float64).reshape(-1, 4)
    if not len(blobs) or not len(boxes):
        return np.zeros(len(blobs), bool)
    area = np.maximum((blobs[:, 2] - blobs[:, 0]) * (blobs[:, 3] - blobs[:, 1]), 1e-9)
    return box_intersection(blobs, boxes).sum(axis=1) / area >= COVERED


def one_per_object(found: Found) -> Found:
    """One box per object: the best-scored of boxes overlapping by more than ``NMS_IOU``, whatever their classes, and
    of a box mostly inside a better one of the same class (a walker's upper body beside the whole walker) or inside
    a person (what a walker carries or stands on is the walker's: "skis" on a walker's feet), and of a box around
    two or more of its class (a pair of walkers boxed together as well as each on its own)."""
    kept = found.take(nms(found.boxes, found.scores, NMS_IOU))
    area = np.maximum((kept.boxes[:, 2] - kept.boxes[:, 0]) * (kept.boxes[:, 3] - kept.boxes[:, 1]), 1e-9)
    inside = box_intersection(kept.boxes, kept.boxes) / area[:, None]  # [i, j]: the share of box i inside box j
    part = [i for i in range(len(kept)) if any(
        j != i and kept.classes[j] in (kept.classes[i], "person") and kept.scores[j] > kept.scores[i]
        and inside[i, j] >= PART for j in range(len(kept)))]  # fmt: skip
    group = [i for i in range(len(kept)) if sum(
        j != i and kept.classes[j] == kept.classes[i] and inside[j, i] >= PART for j in range(len(kept))) >= 2]
    return kept.take(np.array([i for i in range(len(kept)) if i not in part and i not in group], dtype=int))


class DetectorSource:
    """A detector's boxes of score ``floor`` and up, every ``every``-th frame and whenever motion appears outside
    the boxes followed; carried by the flow in between."""

    def __init__(self, detector: Detector, floor: float, every: int,
                 person_height: Callable[[float], float] | None = None):  # fmt: skip
        self.detector, self.floor, self.every = detector, floor, max(1, every)
        self.person_height = person_height
        self._carried = Found.empty()
        self._frames = 0
        self.runs = 0

    def find(self, frame: Frame, motion: Motion, known: np.ndarray) -> Found:
        due = self._frames % self.every == 0
        self._frames += 1
        carried = self._carry(motion)
        if due or self._new_motion(motion, np.concatenate([carried.boxes, known.reshape(-1, 4)])):
            self._carried = self.detect(frame)
        else:
            self._carried = carried
        return self._carried

    def _new_motion(self, motion: Motion, followed: np.ndarray) -> bool:
        """Whether something moves where nothing is followed (a margin around each box allows for its motion)."""
        size = (motion.foreground.shape[1], motion.foreground.shape[0])
        return bool((~covered(significant(motion.blobs, self.person_height), grown(followed, FOLLOW_MARGIN, size))).any())

    def detect(self, frame: Frame) -> Found:
        """Every box the detector finds in ``frame`` of score ``floor`` and up, one per object (analysis px)."""
        found = self.detector.detect(frame.image, (), box_threshold=self.floor)
        self.runs += 1
        return one_per_object(Found(found.boxes, found.scores.astype(np.float64), list(found.class_names)))

    def _carry(self, motion: Motion) -> Found:
        """The boxes followed, each moved by the mean flow inside it."""
        if not len(self._carried) or motion.flow is None:
            return self._carried
        shifts = np.array([motion.shift(box) for box in self._carried.boxes])
        height, width = motion.foreground.shape
        boxes = self._carried.boxes + np.concatenate([shifts, shifts], axis=1)
        boxes = np.clip(boxes, 0, [width, height, width, height])
        return Found(boxes, self._carried.scores, self._carried.classes, fresh=False)


def significant(blobs: np.ndarray, person_height: Callable[[float], float] | None) -> np.ndarray:
    """The blobs big enough to be a moving thing where they stand: at least ``MIN_BLOB_SHARE`` of a person's height
    there on each side (every blob, without a person's height to compare with)."""
    blobs = np.asarray(blobs, dtype=np.float64).reshape(-1, 4)
    if not len(blobs) or person_height is None:
        return blobs
    side = MIN_BLOB_SHARE * np.array([person_height(y) for y in blobs[:, 3]])
    return blobs[(blobs[:, 2] - blobs[:, 0] >= side) & (blobs[:, 3] - blobs[:, 1] >= side)]


def unknown_movers(motion: Motion, boxes: np.ndarray, person_height: Callable[[float], float] | None) -> Found:
    """The moving regions no box covers, each an object nothing named (class None), big enough to be one."""
    blobs = significant(motion.blobs, person_height)
    blobs = blobs[~covered(blobs, boxes)]
    return Found(blobs, np.full(len(blobs), BLOB_SCORE), [None] * len(blobs))

