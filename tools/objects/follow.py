"""Following one video's objects, frame by frame: motion, the object sources, tracks and the describers.

``ObjectFollower.step(frame)`` returns the frame's ``FrameObjects``: one row per object (its box, track and facts),
the frame's own facts, and the ``Evidence`` that carries them. A frame where most of the view changed at once (a
cut, a camera that moved) has no objects: motion there is the camera's, not theirs, and the tracks start again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from anomalens.facts import FACTS, OBJECT_MEASURED
from anomalens.tools.motion import Motion, MotionField, MotionModel
from anomalens.tools.objects.describers import Describer, View, established
from anomalens.tools.objects.sources import BLOB_SCORE, DetectorSource, Found, unknown_movers
from anomalens.tools.objects.tracks import TrackBook, TrackState
from anomalens.types import Evidence, EvidenceKind, Measurement, Source, Track
from anomalens.video import Frame

# ByteTrack's passes, for confidences relative to the detector's floor (the lowest score a box is kept at): a box
# of twice the floor is matched first; any box kept may start a track.
HIGH_OVER_FLOOR = 2.0


@dataclass
class FrameObjects:
    """One frame's objects: ``boxes`` (N, 4) source px, ``scores`` their sources' confidence, ``states`` their
    tracks (holding this frame's facts last), and the frame's facts."""

    frame: Frame
    motion: Motion
    boxes: np.ndarray
    scores: np.ndarray
    states: list[TrackState]
    fps: float
    seconds: float = 0.0  # time spent following the frame

    def __len__(self) -> int:
        return len(self.states)

    @property
    def track_ids(self) -> list[int]:
        return [state.id for state in self.states]

    def frame_facts(self) -> dict[str, float]:
        occupied = float(self.motion.foreground.mean())
        return {"count": float(len(self)), "occupancy": occupied, "view_motion": self.motion.changed,
                "time": self.frame.time_s}  # fmt: skip

    def facts(self, i: int) -> dict:
        """Object ``i``'s facts and its frame's, for the rule engine (``established``: its track is old enough for
        its heading and zone to mean something)."""
        state = self.states[i]
        own = {name: values[-1] for name, values in state.facts.items()}
        return own | self.frame_facts() | {"established": established(state, self.fps)}

    def masks(self) -> np.ndarray:
        """``(N, H, W)`` bool at source resolution: each object's pixels that differ from the background."""
        width, height = self.frame.source_size
        boxes = (self.boxes * self.frame.scale).round().astype(int)
        masks = np.zeros((len(self), height, width), dtype=bool)
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            own = np.zeros(self.motion.foreground.shape, dtype=bool)
            own[y1:y2, x1:x2] = self.motion.foreground[y1:y2, x1:x2]
            masks[k] = own if self.frame.scale == 1.0 else cv2.resize(
                own.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)  # fmt: skip
        return masks

    def evidence(self, source: Source, scores: np.ndarray | None = None, frame_score: float | None = None,
                 extra: Sequence[Measurement] = ()) -> Evidence:  # fmt: skip
        """``FRAME`` evidence with the objects' boxes, masks, tracks, classes, headings, zones and measured facts."""
        # Trusted numbers from perception: constructed without re-validation (hundreds per frame).
        measurements = [
            Measurement.model_construct(name=name, value=float(value), unit=FACTS[name].unit, object_index=i)
            for i, state in enumerate(self.states)
            for name in OBJECT_MEASURED
            if (value := state.latest(name)) is not None
        ]
        measurements += [Measurement.model_construct(name=name, value=value, unit=FACTS[name].unit)
                         for name, value in self.frame_facts().items() if FACTS[name].stored_in is None]  # fmt: skip
        categorical = {FACTS[name].stored_in: [state.latest(name) for state in self.states]
                       for name in ("class", "direction", "zone")}  # fmt: skip
        return Evidence(
            kind=EvidenceKind.FRAME,
            source=source,
            frame_index=self.frame.index,
            time_s=self.frame.time_s,
            frame_size=self.frame.source_size,
            boxes=self.boxes,
            scores=np.zeros(len(self)) if scores is None else scores,
            labels=[f"track {t}" for t in self.track_ids],
            track_ids=np.array(self.track_ids, dtype=np.int64),
            class_scores=np.array([_share(state) for state in self.states], dtype=np.float64),
            frame_score=frame_score,
            masks=self.masks(),
            measurements=[*measurements, *extra],
            **categorical,
        )


def _share(state: TrackState) -> float:
    """How much of its track's votes its class has (0: nothing named it)."""
    total = sum(state.votes.values())
    return state.votes[state.class_name] / total if total else 0.0


class ObjectFollower:
    """Follows the objects of one video; call ``step`` on every frame, in order.

    ``source``: detector boxes (None: no detector, every object is a moving region nothing named); ``describers``
    measure the facts; ``person_height``: a person's height (analysis px) at a foot's y, from the scene's
    perspective (None: none learned, and an object's own height stands for it)."""

    def __init__(
        self,
        model: MotionModel,
        fps: float,
        describers: Sequence[Describer],
        *,
        source: DetectorSource | None = None,
        person_height: Callable[[float], float] | None = None,
        flow_scale: float = 1.0,
    ):
        self.fps, self.describers, self.source = fps, list(describers), source
        self.motion = MotionField(model, flow_scale)
        # Without a detector every object is a blob, each of whose confidence is BLOB_SCORE: a high one.
        floor = source.floor if source is not None else BLOB_SCORE / HIGH_OVER_FLOOR
        self.book = TrackBook(fps, high=min(HIGH_OVER_FLOOR * floor, 0.99), start=floor)
        self.person_height = person_height
        self._boxes = np.zeros((0, 4))  # the previous frame's objects, analysis px
        self._moved = False  # the previous frame was a cut or a camera move

    def step(self, frame: Frame) -> FrameObjects:
        started = time.perf_counter()
        motion = self.motion.step(frame)
        if motion.view_moved:
            if not self._moved:
                self.book.reset()
            self._moved, self._boxes = True, np.zeros((0, 4))
            return FrameObjects(frame, motion, np.zeros((0, 4)), np.zeros(0), [], self.fps,
                                time.perf_counter() - started)  # fmt: skip
        self._moved = False
        found = self.source.find(frame, motion, self._boxes) if self.source is not None else Found.empty()
        objects = found + unknown_movers(motion, found.boxes, self.person_height)
        states = self.book.link(objects.boxes, objects.scores)
        source_boxes = frame.to_source(objects.boxes)
        for k, state in enumerate(states):
            box = objects.boxes[k]
            state.frames.append(frame.index)
            state.boxes.append(source_boxes[k])
            state.feet.append(((box[0] + box[2]) / 2.0, float(box[3])))
            state.speeds.append(motion.speed(box))
            state.shifts.append(tuple(motion.shift(box)))
            if found.fresh and k < len(found) and objects.classes[k] is not None:
                state.votes[objects.classes[k]] += float(objects.scores[k])
        # Speeds are measured against a person's height where each object stands, or without a perspective its own
        heights = (np.array([self.person_height(box[3]) for box in objects.boxes]) if self.person_height is not None
                   else objects.boxes[:, 3] - objects.boxes[:, 1])  # fmt: skip
        view = View(frame, motion, objects.boxes, states, self.fps, heights.reshape(-1))
        for describer in self.describers:
            for name, values in describer.describe(view).items():
                for state, value in zip(states, values):
                    state.record(name, value)
        self._boxes = objects.boxes
        return FrameObjects(frame, motion, source_boxes, objects.scores, states, self.fps,
                            time.perf_counter() - started)  # fmt: skip

    def tracks(self) -> list[Track]:
        """Every track seen so far (source-pixel boxes)."""
        return [state.track() for state in self.book.all]
