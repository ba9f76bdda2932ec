"""Per-track describers: each measures some facts (``anomalens.facts``) of every object in a frame from its track.

A describer has ``facts`` (the names it produces) and ``describe(view) -> {name: [value per object]}``. A new
attribute of objects is a row of the facts table and a describer here; everything downstream (rules, induction,
scoring, explanations, chat) reads it by name.

- ``Size``: area, width, height, aspect of the box (source pixels), its area in square body heights (a person's
  height where it stands), and the share of it unlike the background;
- ``Place``: the zone its feet stand in;
- ``Movement``: speed (px/s), speed for its size (body heights per second: a person's height where it stands, from
  the scene's perspective), heading, and how long it has stayed in one place;
- ``Naming``: its class, the class the detections matched to its track voted for (score-weighted);
- ``Look``: how far its look (a crop embedding) lies from the normal objects', at its first looks and then every
  ``RELOOK_SECONDS``, carried in between;
- ``Pose``: for a person tall enough, the lean of the torso from upright and the arms raised (MoveNet on its crop),
  at the same looks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from anomalens.geometry import grown
from anomalens.tools.motion import Motion, SceneGeometry, heading
from anomalens.tools.objects.appearance import CROP_MARGIN, CROP_SIDE, MIN_CROP, Appearance
from anomalens.tools.objects.tracks import TrackState
from anomalens.tools.protocols import Embedder, PoseEstimator
from anomalens.video import Frame

MOTION_SECONDS = 0.9  # speed and heading are the mean over a track's last 0.9 s: one frame's flow is noisy
ESTABLISHED_SECONDS = 0.5  # a track seen this long is an object; a younger one may be flicker
STILL_BELOW = 0.1  # body heights per second: slower than this an object is standing still (a walk is about 0.8)
FIRST_LOOKS = 1  # looks at a new track as soon as it is established, then one every RELOOK_SECONDS
RELOOK_SECONDS = 4.0  # what a track looks like or does can change (a runner falls), not often
POSE_MIN_HEIGHT = 64  # analysis px: a person shorter than this shows too few pixels for keypoints
POSE_MARGIN = 0.2  # the crop around a person given to the pose model
KEYPOINT_CONFIDENCE = 0.3  # keypoints below this are not used
SHOULDERS, HIPS, WRISTS = (5, 6), (11, 12), (9, 10)  # COCO keypoint indices (tools.pretrained.KEYPOINTS)


@dataclass(frozen=True)
class View:
    """One frame's objects as the describers see them: ``boxes`` in analysis pixels, one track state each (already
    holding this frame's position, speed and shift)."""

    frame: Frame
    motion: Motion
    boxes: np.ndarray  # (N, 4) xyxy analysis px
    states: list[TrackState]
    fps: float
    heights: np.ndarray  # (N,) analysis px: the height each object's speed is measured against (a person's there)


class Describer(Protocol):
    facts: tuple[str, ...]

    def describe(self, view: View) -> dict[str, list]:
        """Each of ``facts`` for every object of ``view``, in order."""


def window(fps: float, seconds: float) -> int:
    return max(2, round(seconds * fps))


def established(state: TrackState, fps: float) -> bool:
    return len(state.frames) >= window(fps, ESTABLISHED_SECONDS)


class Size:
    """The box's size and how much of it differs from the scene's background (a parked van or a sign the detector
    takes for a person, there all along, differs in none of it)."""

    facts = ("area", "width", "height", "aspect", "relative_size", "differs")

    def describe(self, view: View) -> dict[str, list]:
        sides = (view.boxes[:, 2:] - view.boxes[:, :2]) / view.frame.scale
        area = sides[:, 0] * sides[:, 1]
        heights = np.maximum(view.heights / view.frame.scale, 1e-9)
        return {"area": list(area), "width": list(sides[:, 0]), "height": list(sides[:, 1]),
                "aspect": list(sides[:, 1] / np.maximum(sides[:, 0], 1e-9)), "relative_size": list(area / heights**2),
                "differs": [view.motion.differs(box) for box in view.boxes]}  # fmt: skip


class Place:
    facts = ("zone",)

    def __init__(self, geometry: SceneGeometry):
        self.geometry = geometry

    def describe(self, view: View) -> dict[str, list]:
        return {"zone": [self.geometry.zone(*state.feet[-1]) for state in view.states]}


class Movement:
    """Speeds over the track's last ``MOTION_SECONDS``: the mean flow magnitude of its own pixels, but no more than its
    box moved (source px/s), the same in body heights per second, the heading of its mean flow, and its dwell."""

    facts = ("speed", "relative_speed", "direction", "dwell")

    def describe(self, view: View) -> dict[str, list]:
        recent = window(view.fps, MOTION_SECONDS)
        out: dict[str, list] = {name: [] for name in self.facts}
        for state, height in zip(view.states, view.heights):
            speed = min(float(np.mean(state.speeds[-recent:])), _displacement(state, recent)) * view.fps  # analysis px/s
            dx, dy = np.mean(state.shifts[-recent:], axis=0)
            relative = speed / max(float(height), 1.0)
            out["speed"].append(speed / view.frame.scale)
            out["relative_speed"].append(relative)
            out["direction"].append(heading(dx, dy, relative >= STILL_BELOW))
            out["dwell"].append(_dwell(state, float(height)) / view.fps)
        return out


def _displacement(state: TrackState, recent: int) -> float:
    """How far the track's feet moved per frame over its last ``recent`` frames (infinite with one frame): an object
    moves no faster than its box, however fast what passes in front of it does (a walker before a parked van)."""
    feet = state.feet[-recent:]
    if len(feet) < 2:
        return float("inf")
    return float(np.hypot(feet[-1][0] - feet[0][0], feet[-1][1] - feet[0][1])) / (len(feet) - 1)


def _dwell(state: TrackState, height: float) -> int:
    """Frames the track has stayed within half its height (a person's, where it stands) of where it is now."""
    x, y = state.feet[-1]
    radius = max(3.0, 0.5 * height)
    frames = 0
    for fx, fy in reversed(state.feet):
        if np.hypot(fx - x, fy - y) > radius:
            break
        frames += 1
    return frames


class Naming:
    facts = ("class",)

    def describe(self, view: View) -> dict[str, list]:
        return {"class": [state.class_name for state in view.states]}


class _Schedule:
    """When each track is due for a look, on a clock shared by all tracks so that one look serves many: looks fall
    on every ``spacing``-th frame; a track's first ``first`` looks on consecutive ones, then every ``relook``-th
    frame (a multiple of ``spacing``)."""

    def __init__(self, fps: float, per_second: float, relook_seconds: float, first: int = FIRST_LOOKS):
        self.spacing = max(1, round(fps / per_second))
        self.relook = self.spacing * max(1, round(relook_seconds * fps / self.spacing))
        self.first = first
        self._looks: Counter = Counter()
        self._frame = -1

    def tick(self) -> None:
        self._frame += 1

    def due(self, track_id: int) -> bool:
        if self._frame % self.spacing:
            return False
        return self._looks[track_id] < self.first or self._frame % self.relook == 0

    def looked(self, track_id: int) -> None:
        self._looks[track_id] += 1


class Look:
    """How unlike the scene's normal objects each object looks (``look``: 1.0 at the normal edge), from crop
    embeddings of the established tracks due for a look. Without ``appearance`` (learning a scene) it measures
    nothing and keeps every embedding in ``vectors``, from which the scene's appearance is learned."""

    facts = ("look",)

    def __init__(self, embedder: Embedder, schedule: _Schedule, appearance: Appearance | None):
        self.embedder, self.schedule, self.appearance = embedder, schedule, appearance
        self.vectors: list[np.ndarray] = []

    def describe(self, view: View) -> dict[str, list]:
        self.schedule.tick()
        sides = view.boxes[:, 2:] - view.boxes[:, :2]
        due = [i for i, state in enumerate(view.states)
               if established(state, view.fps) and (sides[i] >= MIN_CROP).all() and self.schedule.due(state.id)]  # fmt: skip
        looks = [state.latest("look") for state in view.states]
        if due:
            size = (view.frame.image.shape[1], view.frame.image.shape[0])
            crops = grown(view.boxes[due], CROP_MARGIN, size)
            vectors = self.embedder.embed(view.frame.image, crops, side=CROP_SIDE).embeddings.astype(np.float32)
            for i in due:
                self.schedule.looked(view.states[i].id)
            if self.appearance is None:
                self.vectors.append(vectors)
            else:
                for i, ratio in zip(due, self.appearance.ratios(vectors)):
                    looks[i] = float(ratio)
        return {"look": looks}


class Pose:
    """The torso's lean from upright (degrees: 0 standing, 90 lying) and how many arms are raised above the
    shoulders, for people at least ``POSE_MIN_HEIGHT`` tall, from the pose model on each one's crop."""

    facts = ("torso_angle", "arms_raised")

    def __init__(self, pose: PoseEstimator, schedule: _Schedule):
        self.pose, self.schedule = pose, schedule

    def describe(self, view: View) -> dict[str, list]:
        self.schedule.tick()
        out = {name: [state.latest(name) for state in view.states] for name in self.facts}
        size = (view.frame.image.shape[1], view.frame.image.shape[0])
        for i, state in enumerate(view.states):
            tall = view.boxes[i, 3] - view.boxes[i, 1] >= POSE_MIN_HEIGHT
            if not (state.class_name == "person" and tall and self.schedule.due(state.id)):
                continue
            self.schedule.looked(state.id)
            x1, y1, x2, y2 = grown(view.boxes[i], POSE_MARGIN, size)[0].astype(int)
            people = self.pose.estimate(view.frame.image[y1:y2, x1:x2])
            if len(people):
                centre = np.array([(x2 - x1) / 2, (y2 - y1) / 2])
                middles = (people.boxes[:, :2] + people.boxes[:, 2:]) / 2
                points = people.keypoints[int(np.argmin(np.linalg.norm(middles - centre, axis=1)))]
                out["torso_angle"][i], out["arms_raised"][i] = posture(points)
        return out


def posture(points: np.ndarray) -> tuple[float | None, float | None]:
    """Torso angle from upright (degrees) and arms raised (wrists above the shoulders' line), from one person's
    ``(17, 3)`` keypoints; None where the keypoints it needs are not confident."""
    confident = points[:, 2] >= KEYPOINT_CONFIDENCE
    angle = arms = None
    if confident[list(SHOULDERS + HIPS)].all():
        dx, dy = points[list(SHOULDERS), :2].mean(axis=0) - points[list(HIPS), :2].mean(axis=0)
        angle = float(np.degrees(np.arctan2(abs(dx), -dy)))  # 0: shoulders straight above the hips
    if confident[list(SHOULDERS)].all():
        shoulder_y = points[list(SHOULDERS), 1].mean()
        arms = float(sum(bool(confident[w] and points[w, 1] < shoulder_y) for w in WRISTS))
    return angle, arms
