"""Synthetic walkway scenes with known anomalies (seeded, deterministic).

A fixed camera looks at a horizontal one-way walkway crossing a lawn. Normal footage: pedestrians walk
along the walkway from left to right at 1.6-2.4 px/frame (at 15 fps). Injectable anomalies, each with
frame labels, per-pixel masks and a sentence saying why it is anomalous:

- ``cyclist``: a fast mover along the walkway (about 3.5x walking speed);
- ``lawn_crossing``: a person crossing the lawn top to bottom;
- ``wrong_way``: a person walking right to left;
- ``loitering``: a person who stops on the walkway for ``LOITER_FRAMES`` frames;
- ``left_object``: a bag dropped on the walkway that stays until the end;
- ``crowd``: a dozen people entering at once.

Everything is computed from ``SceneSpec`` (including ``seed``), so the same spec gives the same pixels.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from anomalens.report import GroundTruthEvent

AnomalyKind = Literal["cyclist", "lawn_crossing", "wrong_way", "loitering", "left_object", "crowd"]
ANOMALY_KINDS: tuple[str, ...] = AnomalyKind.__args__
LOITER_FRAMES = 90
CROWD_SIZE = 12
WALK_SPEED = (1.6, 2.4)  # px/frame, left to right
CYCLIST_SPEED = 7.0
WALKWAY = (100, 160)  # y range of the walkway band, px (at the default 320x240)

WHY: dict[str, str] = {
    "cyclist": "a cyclist moves along the walkway about 3.5x faster than anyone in normal footage",
    "lawn_crossing": "a person walks across the lawn, where nobody walks in normal footage",
    "wrong_way": "a person walks right to left, against the walkway's one-way flow",
    "loitering": f"a person stands still on the walkway for {LOITER_FRAMES} frames; normally everyone keeps walking",
    "left_object": "a bag is left on the walkway and stays there",
    "crowd": f"a group of {CROWD_SIZE} people enters at once; normal footage has only a few people at a time",
}


@dataclass(frozen=True)
class Anomaly:
    kind: AnomalyKind
    start: int  # frame at which the anomalous agent enters (or the drop/stop happens on its way)


@dataclass(frozen=True)
class SceneSpec:
    n_frames: int = 300
    seed: int = 0  # people, their timing and sensor noise
    camera_seed: int = 0  # the background: clips with the same camera_seed show the same place
    anomalies: tuple[Anomaly, ...] = ()
    width: int = 320
    height: int = 240
    fps: float = 15.0
    spawn_rate: float = 0.02  # normal walkers entering per frame
    noise_sigma: float = 2.0  # sensor noise, grey levels

    def __post_init__(self):
        for anomaly in self.anomalies:
            if anomaly.kind not in ANOMALY_KINDS:
                raise ValueError(f"unknown anomaly kind {anomaly.kind!r}; known: {', '.join(ANOMALY_KINDS)}")
            if not 0 <= anomaly.start < self.n_frames:
                raise ValueError(f"anomaly {anomaly.kind} starts at {anomaly.start}, outside 0..{self.n_frames - 1}")


@dataclass
class _Agent:
    kind: Literal["person", "cyclist", "bag"]
    xs: np.ndarray  # centre x per frame of the scene (nan = absent)
    ys: np.ndarray  # foot y per frame
    color: tuple[int, int, int]
    anomalous: np.ndarray  # bool per frame: its pixels belong to the anomaly mask


@dataclass
class SyntheticScene:
    """Rendered lazily frame by frame; ``labels`` and ``events`` are known up front."""

    spec: SceneSpec
    background: np.ndarray
    agents: list[_Agent]
    labels: np.ndarray  # (T,) uint8, 1 = anomalous frame
    events: list[GroundTruthEvent] = field(default_factory=list)

    def frames(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(image (H, W, 3) uint8 BGR, anomaly mask (H, W) bool)`` for every frame."""
        spec = self.spec
        noise_rng = np.random.default_rng([spec.seed, 1])
        for t in range(spec.n_frames):
            gain = 1.0 + 0.015 * np.sin(2 * np.pi * t / 90.0)  # slow illumination drift
            image = self.background.astype(np.float32) * gain
            image += noise_rng.normal(0.0, spec.noise_sigma, image.shape).astype(np.float32)
            image = np.clip(image, 0, 255).astype(np.uint8)
            mask = np.zeros(image.shape[:2], dtype=np.uint8)
            present = [a for a in self.agents if not np.isnan(a.xs[t])]
            for agent in sorted(present, key=lambda a: a.ys[t]):  # far (higher up) first
                _draw(image, mask, agent, t)
            yield image, mask.astype(bool)


def _background(spec: SceneSpec, rng: np.random.Generator) -> np.ndarray:
    h, w = spec.height, spec.width
    texture = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.5)
    lawn = np.stack([50 + 10 * texture, 125 + 18 * texture, 60 + 10 * texture], axis=-1)
    path = np.stack([150 + 8 * texture] * 3, axis=-1)
    y0, y1 = _walkway(spec)
    image = lawn.copy()
    image[y0:y1] = path[y0:y1]
    image[y0 - 2 : y0] = image[y1 : y1 + 2] = 110  # kerbs
    cv2.rectangle(image, (int(0.15 * w), y0 - 22), (int(0.15 * w) + 36, y0 - 12), (40, 70, 110), -1)  # bench
    return np.clip(image, 0, 255).astype(np.uint8)


def _walkway(spec: SceneSpec) -> tuple[int, int]:
    return round(WALKWAY[0] * spec.height / 240), round(WALKWAY[1] * spec.height / 240)


# Sprite extents around the (rounded) foot point as drawn by _draw: half width, above, below (px).
_EXTENT = {"person": (5, 27, 0), "cyclist": (14, 33, 1), "bag": (5, 7, 0)}


def _on_screen(agent: _Agent, spec: SceneSpec) -> np.ndarray:
    """Frames in which some of the agent's sprite is inside the frame."""
    half_width, above, below = _EXTENT[agent.kind]
    x, y = np.round(agent.xs), np.round(agent.ys)
    with np.errstate(invalid="ignore"):
        return (x + half_width >= 0) & (x - half_width < spec.width) & (y + below >= 0) & (y - above < spec.height)


def _draw(image: np.ndarray, mask: np.ndarray, agent: _Agent, t: int) -> None:
    x, y = int(round(agent.xs[t])), int(round(agent.ys[t]))
    label = 255 if agent.anomalous[t] else 0
    for canvas, color in ((image, agent.color), (mask, label)):
        if canvas is mask and not label:
            continue
        skin = (120, 160, 200) if canvas is image else label
        if agent.kind == "bag":
            cv2.rectangle(canvas, (x - 5, y - 7), (x + 5, y), color, -1)
            continue
        if agent.kind == "cyclist":
            wheel = (30, 30, 30) if canvas is image else label
            for dx in (-8, 8):
                cv2.circle(canvas, (x + dx, y - 5), 5, wheel, 2)
            cv2.line(canvas, (x - 8, y - 5), (x + 8, y - 5), wheel, 2)
            y -= 6
        cv2.ellipse(canvas, (x, y - 10), (5, 10), 0, 0, 360, color, -1)
        cv2.circle(canvas, (x, y - 23), 4, skin, -1)


def _walker(rng, spec, t0, *, direction=1, speed=None, y=None, x0=None) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a person walking horizontally from ``t0`` until they leave the frame."""
    y0, y1 = _walkway(spec)
    speed = speed if speed is not None else rng.uniform(*WALK_SPEED)
    y = y if y is not None else rng.uniform(y0 + 12, y1 - 3)
    x0 = x0 if x0 is not None else (-12.0 if direction > 0 else spec.width + 12.0)
    t = np.arange(spec.n_frames, dtype=np.float64)
    xs = x0 + direction * speed * (t - t0)
    ys = y + 1.2 * np.sin((t - t0) * speed / 6.0 + rng.uniform(0, 6.28))  # gait sway
    gone = (t < t0) | (xs < -20) | (xs > spec.width + 20)
    xs[gone] = np.nan
    return xs, ys


def _person_color(rng) -> tuple[int, int, int]:
    palette = [(40, 40, 160), (150, 60, 30), (30, 30, 30), (90, 30, 110), (20, 90, 170), (110, 110, 20)]
    return palette[int(rng.integers(len(palette)))]


def build_scene(spec: SceneSpec) -> SyntheticScene:
    """Simulate ``spec``: trajectories, labels and ground-truth events (pixels render in ``frames()``)."""
    background = _background(spec, np.random.default_rng([spec.camera_seed, 7]))
    rng = np.random.default_rng(spec.seed)
    n = spec.n_frames
    no = np.zeros(n, dtype=bool)
    agents: list[_Agent] = []

    # Normal walkers: some already on the walkway at frame 0, then Poisson arrivals.
    for _ in range(rng.poisson(spec.spawn_rate * spec.width / np.mean(WALK_SPEED))):
        xs, ys = _walker(rng, spec, 0, x0=rng.uniform(0, spec.width))
        agents.append(_Agent("person", xs, ys, _person_color(rng), no))
    for t0 in np.flatnonzero(rng.random(n) < spec.spawn_rate):
        xs, ys = _walker(rng, spec, int(t0))
        agents.append(_Agent("person", xs, ys, _person_color(rng), no))

    labels = np.zeros(n, dtype=np.uint8)
    events: list[GroundTruthEvent] = []
    for anomaly in spec.anomalies:
        new, active = _inject(anomaly, spec, rng)
        agents.extend(new)
        visible = np.any([_on_screen(a, spec) & a.anomalous for a in new], axis=0)
        frames = np.flatnonzero(active & visible)
        if frames.size == 0:
            continue
        labels[frames] = 1
        events.append(
            GroundTruthEvent(
                kind=anomaly.kind, start_frame=int(frames[0]), end_frame=int(frames[-1]), why=WHY[anomaly.kind]
            )
        )
    return SyntheticScene(spec, background, agents, labels, events)


def _inject(anomaly: Anomaly, spec: SceneSpec, rng) -> tuple[list[_Agent], np.ndarray]:
    """Agents for one anomaly and the frames during which it is anomalous."""
    t0, n = anomaly.start, spec.n_frames
    if anomaly.kind == "cyclist":
        xs, ys = _walker(rng, spec, t0, speed=CYCLIST_SPEED)
        active = ~np.isnan(xs)
        return [_Agent("cyclist", xs, ys, _person_color(rng), active)], active
    if anomaly.kind == "wrong_way":
        xs, ys = _walker(rng, spec, t0, direction=-1)
        active = ~np.isnan(xs)
        return [_Agent("person", xs, ys, _person_color(rng), active)], active
    if anomaly.kind == "lawn_crossing":
        t = np.arange(n, dtype=np.float64)
        ys = -5.0 + 2.0 * (t - t0)
        xs = np.full(n, rng.uniform(0.25, 0.75) * spec.width) + 1.2 * np.sin(t / 5.0)
        gone = (t < t0) | (ys > spec.height + 30)
        xs[gone] = np.nan
        active = ~gone
        return [_Agent("person", xs, ys, _person_color(rng), active)], active
    if anomaly.kind == "loitering":
        xs, ys = _walker(rng, spec, t0)
        speed = np.nanmax(np.diff(xs)[~np.isnan(np.diff(xs))])
        stop = t0 + int((0.5 * spec.width + 12) / speed)
        end = min(n, stop + LOITER_FRAMES)
        t = np.arange(n)
        xs = np.where(t < stop, xs, np.nan)
        xs[stop:end] = xs[stop - 1] + 1.5 * np.sin(np.arange(end - stop) / 7.0)  # fidgets in place
        if end < n:  # then walks on
            xs[end:] = xs[stop - 1] + speed * (t[end:] - end)
            xs[xs > spec.width + 20] = np.nan
        active = np.zeros(n, dtype=bool)
        active[stop:end] = True
        return [_Agent("person", xs, ys, _person_color(rng), active)], active
    if anomaly.kind == "left_object":
        xs, ys = _walker(rng, spec, t0)
        speed = np.nanmax(np.diff(xs)[~np.isnan(np.diff(xs))])
        drop = min(n - 1, t0 + int((0.6 * spec.width + 12) / speed))
        bag_x = np.full(n, np.nan)
        bag_x[drop:] = xs[drop] + 8
        bag_y = np.full(n, ys[drop] - 1)
        active = ~np.isnan(bag_x)
        carrier = _Agent("person", xs, ys, _person_color(rng), np.zeros(n, dtype=bool))
        return [carrier, _Agent("bag", bag_x, bag_y, (20, 60, 90), active)], active
    # crowd
    members, active = [], np.zeros(n, dtype=bool)
    for k in range(CROWD_SIZE):
        xs, ys = _walker(rng, spec, t0 + int(rng.integers(0, 12)), x0=-12.0 - 9.0 * (k % 4))
        visible = ~np.isnan(xs)
        members.append(_Agent("person", xs, ys, _person_color(rng), visible))
        active |= visible
    return members, active


@dataclass(frozen=True)
class SceneFiles:
    video: Path  # video file, or folder of PNG frames
    labels: Path  # labels.json: fps, per-frame 0/1 labels
    masks: Path  # masks.npz: "masks" (T, H, W) bool, bit-packed along W
    events: Path  # events.json: ground-truth events with why


def write_scene(spec: SceneSpec, out_dir: str | Path, *, as_frames: bool = False) -> SceneFiles:
    """Render ``spec`` into ``out_dir``: ``video.avi`` (MJPG) or ``frames/NNNNNN.png``, plus ground truth."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene = build_scene(spec)
    size = (spec.width, spec.height)
    masks = np.zeros((spec.n_frames, spec.height, (spec.width + 7) // 8), dtype=np.uint8)
    if as_frames:
        video = out / "frames"
        video.mkdir(exist_ok=True)
        for t, (image, mask) in enumerate(scene.frames()):
            cv2.imwrite(str(video / f"{t:06d}.png"), image)
            masks[t] = np.packbits(mask, axis=-1)
    else:
        video = out / "video.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), spec.fps, size)
        writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 95)
        try:
            for t, (image, mask) in enumerate(scene.frames()):
                writer.write(image)
                masks[t] = np.packbits(mask, axis=-1)
        finally:
            writer.release()
    labels = out / "labels.json"
    labels.write_text(json.dumps({"fps": spec.fps, "labels": scene.labels.tolist()}))
    mask_file = out / "masks.npz"
    np.savez_compressed(mask_file, packed=masks, width=spec.width)
    events = out / "events.json"
    events.write_text(json.dumps([e.model_dump() for e in scene.events], indent=2))
    return SceneFiles(video, labels, mask_file, events)


def load_masks(path: str | Path) -> np.ndarray:
    """Read ``masks.npz`` written by ``write_scene`` as ``(T, H, W)`` bool."""
    with np.load(path) as data:
        return np.unpackbits(data["packed"], axis=-1, count=int(data["width"])).astype(bool)
