"""Tracks: each object followed over frames, with everything it has in one place (``TrackState``), linked from
frame to frame by ByteTrack (the ``trackers`` library) on the objects' real confidences, so that its second,
low-score pass holds an object whose detection weakens (a walker half hidden by another).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

from anomalens.geometry import box_iou
from anomalens.types import Track

LOST_SECONDS = 1.0  # a track unseen this long ends (a passer-by hiding a bag left behind must not restart its dwell)
ADOPT_IOU = 0.3  # a new track's first box overlaps the unnamed one it continues at least this much


@dataclass
class TrackState:
    """One object while it is followed: where it was, how it moved, what detections named it, and its facts.

    Per frame seen (in order): ``frames``; ``boxes`` (source px); ``feet`` (the box's bottom centre, analysis px);
    ``speeds`` (mean flow magnitude in its box, analysis px/frame); ``shifts`` (mean flow vector, analysis px/frame);
    and ``facts[name]`` for every fact the describers measured (``anomalens.facts``). ``votes``: summed detector
    scores per class of the detections matched to it."""

    id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    feet: list[tuple[float, float]] = field(default_factory=list)
    speeds: list[float] = field(default_factory=list)
    shifts: list[tuple[float, float]] = field(default_factory=list)
    votes: Counter = field(default_factory=Counter)
    facts: dict[str, list] = field(default_factory=dict)

    @property
    def class_name(self) -> str | None:
        """What the detections matched to it voted for, or None when none named it."""
        return self.votes.most_common(1)[0][0] if self.votes else None

    def record(self, name: str, value) -> None:
        """The fact ``name`` of the frame seen last (earlier frames without it hold None)."""
        self.facts.setdefault(name, [None] * (len(self.frames) - 1)).append(value)

    def latest(self, name: str):
        """The fact ``name`` as last measured (None: never)."""
        values = self.facts.get(name)
        return values[-1] if values else None

    def track(self) -> Track:
        """The kernel's record of it."""
        return Track(id=self.id, frames=self.frames, boxes=np.array(self.boxes).reshape(-1, 4),
                     class_name=self.class_name, class_votes={k: round(float(v), 4) for k, v in self.votes.items()},
                     facts=self.facts)  # fmt: skip


class TrackBook:
    """Links each frame's objects to tracks (ByteTrack) and keeps every track's state, numbered from 0 in order of
    appearance (ByteTrack's own ids are global to the process).

    ``high``: confidences from here on are matched in ByteTrack's first pass; ``start``: a new track needs at least
    this confidence. An object ByteTrack gives no id is followed for its frame by a track of its own: ByteTrack
    names a track from its second frame on, so such a track is adopted by the id that continues it in the next
    frame (the new id's box overlapping it most); an object too weak to start a track and matching none keeps its
    one-frame track, still seen and scored."""

    def __init__(self, fps: float, high: float, start: float):
        self._tracker = ByteTrackTracker(
            frame_rate=fps, lost_track_buffer=round(30 * LOST_SECONDS), minimum_consecutive_frames=1,
            track_activation_threshold=start, high_conf_det_threshold=high,
        )  # fmt: skip
        self._states: dict[int, TrackState] = {}  # ByteTrack's id -> our track
        self._unnamed: list[tuple[TrackState, np.ndarray]] = []  # the previous frame's objects ByteTrack gave no id
        self.all: list[TrackState] = []

    def link(self, boxes: np.ndarray, scores: np.ndarray) -> list[TrackState]:
        """The track of each object (``boxes`` xyxy, in the order given)."""
        detections = sv.Detections(
            xyxy=np.asarray(boxes, np.float32).reshape(-1, 4),
            confidence=np.asarray(scores, np.float32),
            data={"index": np.arange(len(boxes))},  # the tracker reorders its output
        )
        tracked = self._tracker.update(detections)
        states: list[TrackState | None] = [None] * len(boxes)
        unnamed = []
        for index, library_id in zip(tracked.data.get("index", []), tracked.tracker_id):
            index, library_id = int(index), int(library_id)
            if library_id < 0:
                states[index] = self._new()
                unnamed.append((states[index], boxes[index]))
            elif (state := self._states.get(library_id)) is not None:
                states[index] = state
            else:
                states[index] = self._states[library_id] = self._adopted(boxes[index]) or self._new()
        self._unnamed = unnamed
        return [state if state is not None else self._new() for state in states]

    def _adopted(self, box: np.ndarray) -> TrackState | None:
        """The previous frame's unnamed object that a new id's ``box`` continues (the most overlapping), if any."""
        if not self._unnamed:
            return None
        overlap = box_iou(np.asarray(box).reshape(1, 4), np.array([b for _, b in self._unnamed]))[0]
        best = int(np.argmax(overlap))
        if overlap[best] < ADOPT_IOU:
            return None
        return self._unnamed.pop(best)[0]

    def reset(self) -> None:
        """Forget every track in view (after a cut or a camera move: what comes next is another view)."""
        self._tracker.reset()
        self._states.clear()
        self._unnamed = []

    def _new(self) -> TrackState:
        state = TrackState(len(self.all))
        self.all.append(state)
        return state
