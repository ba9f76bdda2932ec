"""Motion perception trained on a scene's normal footage: background, foreground objects, optical flow,
tracks, and per-object facts.

Per frame (at analysis resolution, in time order):

1. foreground = pixels far from the scene's median background (noise level learned from normal frames);
2. objects = connected foreground regions of at least ``min_area`` pixels;
3. dense optical flow (OpenCV DIS, at half resolution) between the previous and this frame, computed
   only when there are objects: a still scene costs a background difference and nothing more;
4. each object's speed = the mean flow over its pixels; tracks link objects across frames (ByteTrack, from the
   ``trackers`` library), which gives headings (averaged over the track's last half second),
   dwell time and whether a track is established (old enough to judge);
5. per-object facts for the rule engine (``FACT_UNITS``) and an ``Evidence`` with boxes, masks and measurements in
   source pixels.

A per-cell flow-magnitude map normalised by normal footage (``flow_novelty``) is returned as the evidence's
anomaly map: it catches motion the blobs miss (e.g. a fast object merged with a group).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

from anomalens.errors import AnomalensError
from anomalens.types import SECTORS, STILL, Evidence, EvidenceKind, Measurement, Source, Track, Zone
from anomalens.video import Frame

FLOW_SCALE = 0.5  # optical flow runs at half the analysis resolution: 4x cheaper, ample for speeds
MIN_ACTIVE = 30  # frames with motion a grid cell needs before its own normal level is trusted
HEADING_SECONDS = 0.5  # headings average a track's last half second; younger tracks are not "established"
FACT_UNITS = {
    "area": "px^2",
    "width": "px",
    "height": "px",
    "aspect": "ratio",
    "speed": "px/frame",
    "relative_speed": "heights/s",
    "class": "class",
    "direction": "sector",
    "zone": "zone",
    "dwell": "s",
    "count": "count",
    "occupancy": "ratio",
    "time": "s",
}


def heading(dx: float, dy: float, speed: float, still_below: float) -> str:
    """Compass sector of an image-plane motion (y down on screen, so north is up), or ``still``."""
    if speed < still_below:
        return STILL
    angle = np.degrees(np.arctan2(-dy, dx)) % 360.0
    return SECTORS[int(((angle + 22.5) % 360.0) // 45.0)]


@dataclass
class SceneGeometry:
    """Analysis frame size and the zone grid laid over it (zones are named ``r{row}c{col}``), and the zones people
    drew (``Rulebook.zones``), which take the points inside them."""

    width: int
    height: int
    rows: int = 4
    cols: int = 4
    drawn: list[Zone] = field(default_factory=list)

    def zone(self, x: float, y: float) -> str:
        for drawn in self.drawn:
            if drawn.contains(x / self.width, y / self.height):
                return drawn.name
        row = min(self.rows - 1, max(0, int(y * self.rows / self.height)))
        col = min(self.cols - 1, max(0, int(x * self.cols / self.width)))
        return f"r{row}c{col}"

    @property
    def zones(self) -> list[str]:
        return [f"r{r}c{c}" for r in range(self.rows) for c in range(self.cols)]

    def zone_box(self, name: str) -> tuple[float, float, float, float]:
        """``(x1, y1, x2, y2)`` of a zone in analysis pixels."""
        row, col = int(name[1 : name.index("c")]), int(name[name.index("c") + 1 :])
        w, h = self.width / self.cols, self.height / self.rows
        return col * w, row * h, (col + 1) * w, (row + 1) * h


def ground_mask(background: np.ndarray, feet: np.ndarray) -> np.ndarray:
    """Pixels whose background looks like the ground objects were seen standing on: ``(h, w)`` bool.

    The ground's look is the brightness and local texture (7x7 standard deviation) of the background
    under every observed foot (``feet`` is ``(N, 2)`` x, y in analysis pixels); a pixel looks walked when
    both fall inside the 2nd-98th percentile ranges seen under feet."""
    gray = background.astype(np.float32)
    mean = cv2.blur(gray, (7, 7))
    texture = np.sqrt(np.maximum(cv2.blur(gray * gray, (7, 7)) - mean * mean, 0.0))
    if len(feet) == 0:
        return np.zeros(gray.shape, dtype=bool)
    h, w = gray.shape
    xs = np.clip(feet[:, 0].astype(int), 0, w - 1)
    ys = np.clip(feet[:, 1].astype(int) - 1, 0, h - 1)  # the pixel just above the box's bottom edge
    lo_m, hi_m = np.quantile(mean[ys, xs], [0.02, 0.98])
    lo_t, hi_t = np.quantile(texture[ys, xs], [0.02, 0.98])
    return (mean >= lo_m) & (mean <= hi_m) & (texture >= lo_t) & (texture <= hi_t)


def walkable_zones(ground: np.ndarray, geometry: SceneGeometry, share: float = 0.5) -> set[str]:
    """Zones at least ``share`` of whose pixels look like walked ground (see ``ground_mask``).

    A zone nobody entered but that looks like the walked ground is presumably just unvisited; one that
    looks different (a lawn beside a path) is kept off-limits."""
    walkable = set()
    for zone in geometry.zones:
        x1, y1, x2, y2 = (int(round(v)) for v in geometry.zone_box(zone))
        if ground[y1:y2, x1:x2].mean() >= share:
            walkable.add(zone)
    return walkable


def walkable_cells(ground: np.ndarray, cell: int, share: float = 0.5) -> np.ndarray:
    """``(rows, cols)`` bool: grid cells of side ``cell`` at least ``share`` walked-looking."""
    rows, cols = ground.shape[0] // cell, ground.shape[1] // cell
    fraction = cv2.resize(ground[: rows * cell, : cols * cell].astype(np.float32), (cols, rows), interpolation=cv2.INTER_AREA)
    return fraction >= share


def pooled_reference(
    values: np.ndarray, walkable: np.ndarray | None = None, quantile: float = 0.999, active: float = 0.3
) -> np.ndarray:
    """Per-cell normal level of ``(T, rows, cols)`` values, for cells where little happened borrowed.

    A cell's own ``quantile`` is trusted where its values exceeded ``active`` in at least ``MIN_ACTIVE``
    frames. Elsewhere a quiet cell that looks like walked ground (``walkable``) borrows the level of all
    active cells: nothing moved there during training by chance, and the first passer-by is not an
    anomaly. A quiet cell that does not look walkable keeps its own near-zero level: motion there is new.
    """
    own = np.quantile(values, quantile, axis=0).astype(np.float32)
    busy = (values > active).sum(axis=0) >= MIN_ACTIVE
    if walkable is None or not busy.any():
        return own
    shared = np.float32(np.quantile(values[:, busy], quantile))
    borrow = ~busy & walkable
    own[borrow] = np.maximum(own[borrow], shared)
    return own


@dataclass
class _TrackState:
    id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)  # source px
    feet: list[tuple[float, float]] = field(default_factory=list)  # analysis px
    shifts: list[tuple[float, float]] = field(default_factory=list)  # mean flow per frame, analysis px
    height: float = 0.0  # of the latest box, analysis px


@dataclass
class FrameFacts:
    """One frame's objects: their facts (one dict per object), boxes, masks and tracks.

    ``evidence()`` turns them into the ``Evidence`` that carries them (built once, by whoever scores them).
    """

    frame: Frame
    objects: list[dict]
    boxes: np.ndarray  # (N, 4) xyxy, source pixels
    masks: list[np.ndarray]  # one (h, w) bool mask per object, analysis resolution
    track_ids: list[int]
    flow_novelty: np.ndarray  # (rows, cols) of the flow grid, 1.0 = the normal maximum
    flow: np.ndarray | None  # (h, w, 2) motion in analysis px/frame, None when nothing moved
    seconds: float  # time spent analysing the frame

    def source_masks(self) -> np.ndarray:
        """The object masks as ``(N, H, W)`` bool at source resolution."""
        width, height = self.frame.source_size
        if not self.masks:
            return np.zeros((0, height, width), dtype=bool)
        if self.frame.scale == 1.0:
            return np.stack(self.masks)
        return np.stack(
            [cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0 for m in self.masks]
        )

    def evidence(
        self,
        source: Source,
        scores: np.ndarray | None = None,
        anomaly_map: np.ndarray | None = None,
        frame_score: float | None = None,
        extra: list[Measurement] = (),
    ) -> Evidence:
        """``FRAME`` evidence with the objects' boxes, masks, tracks, headings, zones and measured facts."""
        objects = self.objects
        # Trusted numbers from this module: constructed without re-validation (hundreds per frame).
        measurements = [
            Measurement.model_construct(name=name, value=float(obj[name]), unit=FACT_UNITS[name], object_index=i)
            for i, obj in enumerate(objects)
            for name in ("area", "speed", "relative_speed", "dwell", "aspect")
            if name in obj
        ]
        measurements += [
            Measurement.model_construct(name="count", value=float(len(objects)), unit="count", object_index=None),
            Measurement.model_construct(
                name="occupancy", value=objects[0]["occupancy"] if objects else 0.0, unit="ratio", object_index=None
            ),
            Measurement.model_construct(
                name="flow_novelty", value=float(self.flow_novelty.max(initial=0.0)), unit="ratio", object_index=None
            ),
            *extra,
        ]
        return Evidence(
            kind=EvidenceKind.FRAME,
            source=source,
            frame_index=self.frame.index,
            time_s=self.frame.time_s,
            frame_size=self.frame.source_size,
            boxes=self.boxes,
            scores=np.zeros(len(objects)) if scores is None else scores,
            labels=[f"track {t}" for t in self.track_ids],
            track_ids=np.array(self.track_ids, dtype=np.int64),
            class_names=[o["class"] for o in objects],
            class_scores=np.array([o.get("class_score", 0.0) for o in objects], dtype=np.float64),
            headings=[o["direction"] for o in objects],
            zones=[o["zone"] for o in objects],
            masks=self.source_masks(),
            anomaly_map=self.flow_novelty if anomaly_map is None else anomaly_map,
            frame_score=frame_score,
            measurements=measurements,
        )


class MotionModel:
    """Scene background, noise level and normal flow magnitudes, learned from normal frames.

    Args:
        flow_cell: side of the flow-novelty grid cells, analysis pixels.
        min_area: smallest object, analysis px^2.
        still_below: speeds under this (px/frame, analysis) have no heading.
    """

    def __init__(self, flow_cell: int = 24, min_area: int = 20, still_below: float = 0.6):
        self.flow_cell, self.min_area, self.still_below = flow_cell, min_area, still_below
        self.background: np.ndarray | None = None

    def fit_background(self, frames: Iterable[Frame], max_frames: int = 200) -> MotionModel:
        grays = [_gray(f.image) for f in frames]
        if len(grays) < 10:
            raise AnomalensError(f"need at least 10 normal frames to learn the background, got {len(grays)}")
        if len({g.shape for g in grays}) > 1:
            raise AnomalensError("normal frames differ in size; use footage of one camera view")
        step = max(1, len(grays) // max_frames)
        stack = np.stack(grays[::step]).astype(np.float32)
        self.background = np.median(stack, axis=0)
        residual = np.abs(stack - self.background)
        sigma = 1.4826 * float(np.median(residual))  # robust: moving objects are a minority of pixels
        self.fg_threshold = max(12.0, 5.0 * sigma)
        height, width = self.background.shape
        self.geometry = SceneGeometry(width, height)
        self.flow_reference = np.ones(self._grid_shape(), dtype=np.float32)
        return self

    def fit_flow(self, cell_magnitudes: np.ndarray, walkable: np.ndarray | None = None) -> None:
        """Set the per-cell normal flow level from per-frame cell magnitudes ``(T, rows, cols)``."""
        self.flow_reference = pooled_reference(cell_magnitudes, walkable) + 0.2

    def _grid_shape(self) -> tuple[int, int]:
        h, w = self.background.shape
        return max(1, h // self.flow_cell), max(1, w // self.flow_cell)

    def state(self) -> dict:
        return {
            "background": self.background,
            "fg_threshold": self.fg_threshold,
            "flow_reference": self.flow_reference,
            "flow_cell": self.flow_cell,
            "min_area": self.min_area,
            "still_below": self.still_below,
        }

    @classmethod
    def from_state(cls, state: dict) -> MotionModel:
        model = cls(int(state["flow_cell"]), int(state["min_area"]), float(state["still_below"]))
        model.background = np.asarray(state["background"], dtype=np.float32)
        model.fg_threshold = float(state["fg_threshold"])
        model.flow_reference = np.asarray(state["flow_reference"], dtype=np.float32)
        model.geometry = SceneGeometry(model.background.shape[1], model.background.shape[0])
        return model


def _gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


class MotionAnalyzer:
    """Streams frames of one video through a fitted ``MotionModel``; call ``analyze`` in time order."""

    def __init__(self, model: MotionModel, fps: float):
        if model.background is None:
            raise AnomalensError("the motion model has no background: fit it on normal footage first")
        self.model, self.fps = model, fps
        self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._previous: np.ndarray | None = None
        # A track lost for up to a second (the library's default) survives: a passer-by hiding a bag left behind
        # must not restart the bag's dwell (half a second did, on the synthetic scenes).
        self._tracker = ByteTrackTracker(frame_rate=fps, minimum_consecutive_frames=1)
        self._states: dict[int, _TrackState] = {}  # ByteTrack's id -> our track
        self._all: list[_TrackState] = []  # every track, ours numbered from 0 in order of appearance

    def analyze(self, frame: Frame) -> FrameFacts:
        started = time.perf_counter()
        model = self.model
        gray = _gray(frame.image)
        if gray.shape != model.background.shape:
            where = frame.path or f"frame {frame.index}"
            raise AnomalensError(
                f"{where}: {gray.shape[1]}x{gray.shape[0]} at analysis but the scene was learned at "
                f"{model.background.shape[1]}x{model.background.shape[0]} (same camera, same --max-side?)"
            )
        mask = (np.abs(gray.astype(np.float32) - model.background) > model.fg_threshold).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._kernel)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = [j for j in range(1, count) if stats[j, cv2.CC_STAT_AREA] >= model.min_area]

        rows, cols = model._grid_shape()
        novelty = np.zeros((rows, cols), dtype=np.float32)
        flow = None
        small = cv2.resize(gray, None, fx=FLOW_SCALE, fy=FLOW_SCALE, interpolation=cv2.INTER_AREA)
        if keep and self._previous is not None:  # the cascade: flow only where something is there
            # Backward flow (this frame -> previous) at reduced resolution, negated and scaled back to
            # analysis pixels: motion defined at this frame's pixels.
            flow = -self._flow.calc(small, self._previous, None)
            flow = cv2.resize(flow, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR) / FLOW_SCALE
            magnitude = cv2.magnitude(flow[..., 0], flow[..., 1])
            c = model.flow_cell
            novelty = cv2.resize(magnitude[: rows * c, : cols * c], (cols, rows), interpolation=cv2.INTER_AREA)
            novelty /= model.flow_reference
        self._previous = small

        boxes, objects, masks = [], [], []
        occupancy = float(mask.mean())
        for j in keep:
            x, y, w, h, area = stats[j]
            pixels = labels[y : y + h, x : x + w] == j
            if flow is not None:
                dx, dy = cv2.mean(flow[y : y + h, x : x + w], mask=pixels.view(np.uint8))[:2]
            else:
                dx = dy = 0.0
            speed = float(np.hypot(dx, dy))
            boxes.append((x, y, x + w, y + h))
            full = np.zeros(mask.shape, dtype=bool)
            full[y : y + h, x : x + w] = pixels
            masks.append(full)
            objects.append(
                {
                    "class": "object",
                    "area": float(area) / frame.scale**2,
                    "width": float(w) / frame.scale,
                    "height": float(h) / frame.scale,
                    "aspect": float(h) / float(w),
                    "speed": speed / frame.scale,
                    "zone": model.geometry.zone(x + w / 2.0, y + h),
                    "foot": (x + w / 2.0, float(y + h)),  # analysis px; where the object stands
                    "_shift": (dx, dy),
                }
            )
        analysis_boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        source_boxes = frame.to_source(analysis_boxes)
        states = self._track(frame, analysis_boxes, source_boxes, objects)
        window = max(2, round(HEADING_SECONDS * self.fps))
        for obj, state in zip(objects, states):
            obj.pop("_shift")
            # Heading from the track's recent motion, not one frame's flow: steadier, and none until the
            # track is old enough to have one.
            recent = np.array(state.shifts[-window:])
            dx, dy = recent.mean(axis=0)
            obj["direction"] = heading(dx, dy, float(np.hypot(dx, dy)), model.still_below)
            obj["established"] = len(state.frames) >= window
            obj["dwell"] = self._dwell(state) / self.fps
            obj["count"] = float(len(objects))
            obj["occupancy"] = occupancy
            obj["time"] = frame.time_s
        track_ids = [state.id for state in states]
        return FrameFacts(
            frame, objects, source_boxes, masks, track_ids, novelty, flow, time.perf_counter() - started
        )

    def _track(
        self, frame: Frame, boxes: np.ndarray, source_boxes: np.ndarray, objects: list[dict]
    ) -> list[_TrackState]:
        """The track of each object, in the objects' order: ByteTrack (Kalman-predicted boxes, optimal IoU
        assignment) links the blobs over time.

        ByteTrack names a track from its second frame on (its ids are also global to the process): a blob it
        has not named yet starts a one-frame track of its own, and each ByteTrack id maps to one of ours."""
        detections = sv.Detections(
            xyxy=boxes.astype(np.float32).reshape(-1, 4),
            confidence=np.ones(len(boxes), dtype=np.float32),  # every blob is certain: ByteTrack's first pass
            data={"index": np.arange(len(boxes))},  # the tracker reorders its output
        )
        tracked = self._tracker.update(detections)
        states: list[_TrackState | None] = [None] * len(boxes)
        for index, library_id in zip(tracked.data.get("index", []), tracked.tracker_id):
            state = self._states.get(int(library_id)) if library_id >= 0 else None
            if state is None:
                state = _TrackState(len(self._all))
                self._all.append(state)
                if library_id >= 0:
                    self._states[int(library_id)] = state
            states[int(index)] = state
        for i, state in enumerate(states):
            x1, y1, x2, y2 = boxes[i]
            state.frames.append(frame.index)
            state.boxes.append(source_boxes[i])
            state.feet.append(((x1 + x2) / 2.0, y2))
            state.shifts.append(objects[i]["_shift"])
            state.height = y2 - y1
        return states

    @staticmethod
    def _dwell(state: _TrackState) -> int:
        """Frames the track has stayed within half its height of where it is now."""
        x, y = state.feet[-1]
        radius = max(3.0, 0.5 * state.height)
        frames = 0
        for fx, fy in reversed(state.feet):
            if np.hypot(fx - x, fy - y) > radius:
                break
            frames += 1
        return frames

    def tracks(self) -> list[Track]:
        """Every track seen so far (source-pixel boxes)."""
        return [Track(id=s.id, frames=s.frames, boxes=np.array(s.boxes)) for s in self._all]
