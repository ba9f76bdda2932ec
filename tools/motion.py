"""Motion in a scene learned from its normal footage: the background, what differs from it, and how it moves.

Per frame (at analysis resolution, in time order), ``MotionField.step`` gives a ``Motion``:

1. foreground = pixels far from the scene's median background (noise level learned from normal frames), and its
   connected regions of at least ``min_area`` pixels (the blobs);
2. dense optical flow (OpenCV DIS) between the previous and this frame, computed only when something differs from
   the background (a still scene costs a background difference and nothing more), at the scale the scene chose
   for its people's size (``flow_scale``);
3. how much of the view changed at once (``changed``): the larger of the share that differs from the background
   and the share that differs from the frame before (a cut, or a camera that pans over the scene itself learned,
   changes most of the view either way); most of it means the camera moved or the shot changed, not that many
   things moved.

Objects (``tools.objects``) are measured with it: detector boxes move with the flow inside them, and a blob no box
covers is a moving thing of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from anomalens.errors import AnomalensError
from anomalens.geometry import grown
from anomalens.types import SECTORS, STILL, Zone
from anomalens.video import Frame

VIEW_MOVED = 0.5  # more of the view than this differs from the background at once: the camera moved or cut
CUT_LEVELS = 12  # grey levels a pixel changes by between frames to count as changed (a change the eye sees)
MIN_PIXELS = 5  # an object's pixels that must differ from the background for it to be moving
FLOW_MARGIN = 0.1  # flow runs over the region of everything that moved, grown by this share of its size ...
FLOW_MIN_SIDE = 64  # ... and to at least this side (flow px): DIS needs room for its coarsest level


def heading(dx: float, dy: float, moving: bool) -> str:
    """Compass sector of an image-plane motion (y down on screen, so north is up), or ``still``."""
    if not moving:
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


class MotionModel:
    """Scene background and noise level, learned from normal frames.

    Args:
        min_area: smallest blob, analysis px^2.
    """

    def __init__(self, min_area: int = 20):
        self.min_area = min_area
        self.background: np.ndarray | None = None

    def fit_background(self, frames: Iterable[Frame], max_frames: int = 200) -> MotionModel:
        grays = [gray(f.image) for f in frames]
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
        return self

    def state(self) -> dict:
        return {"background": self.background, "fg_threshold": self.fg_threshold, "min_area": self.min_area}

    @classmethod
    def from_state(cls, state: dict) -> MotionModel:
        model = cls(int(state["min_area"]))
        model.background = np.asarray(state["background"], dtype=np.float32)
        model.fg_threshold = float(state["fg_threshold"])
        model.geometry = SceneGeometry(model.background.shape[1], model.background.shape[0])
        return model


def gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


@dataclass(frozen=True)
class Motion:
    """What moved in one frame, at analysis resolution."""

    foreground: np.ndarray  # (h, w) bool: differs from the background
    blobs: np.ndarray  # (B, 4) xyxy: connected foreground regions of at least the model's min_area
    flow: np.ndarray | None  # (h, w, 2) px/frame from the previous frame; None when nothing moved or none came before
    changed: float  # share of the view that changed at once: from the background, or from the frame before

    @property
    def view_moved(self) -> bool:
        return self.changed > VIEW_MOVED

    def shift(self, box: np.ndarray) -> np.ndarray:
        """The mean motion ``(dx, dy)`` px/frame inside an xyxy box (analysis px), zero where no flow was computed."""
        if self.flow is None:
            return np.zeros(2)
        x1, y1, x2, y2 = _pixels(box, self.flow.shape)
        inside = self.flow[y1:y2, x1:x2].reshape(-1, 2)
        return inside.mean(axis=0) if len(inside) else np.zeros(2)

    def differs(self, box: np.ndarray) -> float:
        """The share of an xyxy box's pixels that differ from the background."""
        x1, y1, x2, y2 = _pixels(box, self.foreground.shape)
        return float(self.foreground[y1:y2, x1:x2].mean())

    def speed(self, box: np.ndarray) -> float:
        """How fast what an xyxy box holds moves, px/frame: the mean flow magnitude over its pixels that differ from
        the background (the object's own; its still surroundings in the box do not slow it down). 0 when fewer
        than ``MIN_PIXELS`` of them do: a thing that matches the background is not moving."""
        if self.flow is None:
            return 0.0
        x1, y1, x2, y2 = _pixels(box, self.flow.shape)
        own = self.foreground[y1:y2, x1:x2]
        if own.sum() < MIN_PIXELS:
            return 0.0
        inside = self.flow[y1:y2, x1:x2][own]
        return float(np.hypot(inside[:, 0], inside[:, 1]).mean())


def _pixels(box: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    height, width = shape[:2]
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    return x1, y1, min(width, max(x1 + 1, int(np.ceil(box[2])))), min(height, max(y1 + 1, int(np.ceil(box[3]))))


class MotionField:
    """Motion of one video's frames against a fitted ``MotionModel``; call ``step`` in time order.

    ``flow_scale``: optical flow runs at this share of the analysis resolution (the scene sets it so that its
    people stay tall enough for the flow to follow their limbs)."""

    def __init__(self, model: MotionModel, flow_scale: float = 1.0):
        if model.background is None:
            raise AnomalensError("the motion model has no background: fit it on normal footage first")
        self.model, self.flow_scale = model, flow_scale
        # Medium: on Ped2, the fast preset's flow cost 0.02 AUROC for 3x less time; flow runs only where things move
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self._dis.setGradientDescentIterations(12)  # half the preset's 25: as accurate on Ped2, less time
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._previous: np.ndarray | None = None  # the frame before, at the flow's scale
        self._before: np.ndarray | None = None  # the frame before, at analysis resolution

    def step(self, frame: Frame) -> Motion:
        model = self.model
        image = gray(frame.image)
        if image.shape != model.background.shape:
            where = frame.path or f"frame {frame.index}"
            raise AnomalensError(
                f"{where}: {image.shape[1]}x{image.shape[0]} at analysis but the scene was learned at "
                f"{model.background.shape[1]}x{model.background.shape[0]} (same camera, same --max-side?)"
            )
        mask = (np.abs(image.astype(np.float32) - model.background) > model.fg_threshold).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._kernel)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        kept = stats[1:count][stats[1:count, cv2.CC_STAT_AREA] >= model.min_area]
        blobs = np.column_stack([kept[:, 0], kept[:, 1], kept[:, 0] + kept[:, 2], kept[:, 1] + kept[:, 3]])
        small = image if self.flow_scale == 1.0 else cv2.resize(
            image, None, fx=self.flow_scale, fy=self.flow_scale, interpolation=cv2.INTER_AREA)  # fmt: skip
        flow = None
        if len(blobs) and self._previous is not None:  # the cascade: flow only when and where something moved
            flow = self._flow(small, blobs, image.shape)
        self._previous = small
        foreground = mask.astype(bool)
        changed = float(foreground.mean())
        if self._before is not None:
            changed = max(changed, float((cv2.absdiff(image, self._before) > CUT_LEVELS).mean()))
        self._before = image
        return Motion(foreground, blobs.astype(np.float64).reshape(-1, 4), flow, changed)

    def _flow(self, small: np.ndarray, blobs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Backward flow (this frame -> previous), negated: motion defined at this frame's pixels, in analysis px/frame,
        computed over the region around the blobs (zero elsewhere)."""
        height, width = small.shape
        scale = self.flow_scale
        x1, y1, x2, y2 = grown(np.concatenate([blobs[:, :2].min(axis=0), blobs[:, 2:].max(axis=0)]) * scale,
                               FLOW_MARGIN, (width, height), FLOW_MIN_SIDE)[0].astype(int)  # fmt: skip
        flow = np.zeros((height, width, 2), np.float32)
        now, before = (np.ascontiguousarray(image[y1:y2, x1:x2]) for image in (small, self._previous))
        flow[y1:y2, x1:x2] = -self._dis.calc(now, before, None)
        if scale != 1.0:
            flow = cv2.resize(flow, shape[::-1], interpolation=cv2.INTER_LINEAR) / scale
        return flow
