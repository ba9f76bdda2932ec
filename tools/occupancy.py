"""Foreground occupancy scorer: what is unusual about *where* and *how long* things are, and how many.

Fitted on a scene's normal footage only. Three cues, each divided by its largest value on the normal
footage (times ``margin``), so that a frame score above 1.0 means "beyond anything seen in normal
footage":

- ``novel_area``: foreground pixels in places that are (almost) never occupied in normal footage;
- ``static_area``: foreground pixels that have stayed foreground longer than anything normal did;
- ``foreground_area``: total foreground (crowding).

It is the cheap screening layer; speed and direction cues come from the motion tools.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import cv2
import numpy as np

from anomalens.errors import AnomalensError
from anomalens.types import Evidence, Measurement, Source
from anomalens.video import Frame

CUES = ("novel_area", "static_area", "foreground_area")


class OccupancyScorer:
    """``fit(normal_frames)`` once, then ``score(frame)`` on every frame of a video, in order.

    Args:
        cell: side of the occupancy grid cells, analysis pixels.
        rare: a cell occupied in fewer than this fraction of normal frames counts as never occupied.
        margin: how far beyond the normal maximum a cue must go to score above 1.
        min_blob: connected foreground regions smaller than this (analysis px^2) are noise.
    """

    def __init__(self, cell: int = 8, rare: float = 0.002, margin: float = 1.25, min_blob: int = 25):
        self.cell, self.rare, self.margin, self.min_blob = cell, rare, margin, min_blob
        self.background: np.ndarray | None = None
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._run: np.ndarray | None = None  # consecutive foreground frames per pixel

    # -- fitting -------------------------------------------------------------------------------------
    def fit(self, frames: Iterable[Frame], max_background_frames: int = 150) -> OccupancyScorer:
        """Learn background, noise level, normal occupancy and cue scales from normal ``frames``."""
        frames = list(frames)
        if len(frames) < 10:
            raise AnomalensError(f"need at least 10 normal frames to fit the occupancy model, got {len(frames)}")
        shapes = {f.image.shape for f in frames}
        if len(shapes) > 1:
            raise AnomalensError(f"normal frames differ in size ({sorted(shapes)}); use one camera view")
        step = max(1, len(frames) // max_background_frames)
        stack = np.stack([f.image for f in frames[::step]]).astype(np.int16)
        self.background = np.median(stack, axis=0).astype(np.int16)
        residual = np.abs(stack - self.background).max(axis=-1)
        sigma = 1.4826 * float(np.median(residual))  # robust: people are a minority of pixels
        self.threshold = max(20.0, 6.0 * sigma)

        masks = [self._foreground(f.image) for f in frames]
        occupied = np.mean([self._cells(m) for m in masks], axis=0)
        # A cell next to an occupied one is not novel: people's outlines wobble.
        self.normal_cells = cv2.dilate((occupied >= self.rare).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0

        run = np.zeros(masks[0].shape, dtype=np.int32)
        longest = 0
        for mask in masks:
            run = np.where(mask, run + 1, 0)
            longest = max(longest, int(run.max()))
        self.static_frames = int(longest * self.margin) + 1

        self._run = None
        maxima = {cue: 0.0 for cue in CUES}
        for mask in masks:
            cues, _ = self._cues(mask)
            for cue in CUES:
                maxima[cue] = max(maxima[cue], cues[cue])
        self._run = None
        floor = {"novel_area": 4.0 * self.min_blob, "static_area": 4.0 * self.min_blob, "foreground_area": 1.0}
        self.scale = {cue: max(maxima[cue], floor[cue]) * self.margin for cue in CUES}
        return self

    # -- scoring -------------------------------------------------------------------------------------
    def _foreground(self, image: np.ndarray) -> np.ndarray:
        diff = np.abs(image.astype(np.int16) - self.background).max(axis=-1)
        mask = (diff > self.threshold).astype(np.uint8)
        return cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel) > 0

    def _cells(self, mask: np.ndarray) -> np.ndarray:
        h, w = mask.shape
        c = self.cell
        cropped = mask[: h - h % c, : w - w % c]
        return cropped.reshape(h // c, c, w // c, c).any(axis=(1, 3))

    def _cue_maps(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        self._run = np.where(mask, (0 if self._run is None else self._run) + 1, 0).astype(np.int32)
        normal = np.ones_like(mask)
        grid = np.repeat(np.repeat(self.normal_cells, self.cell, 0), self.cell, 1)
        normal[: grid.shape[0], : grid.shape[1]] = grid
        return {
            "novel_area": mask & ~normal,
            "static_area": mask & (self._run > self.static_frames),
            "foreground_area": mask,
        }

    def _cues(self, mask: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        maps = self._cue_maps(mask)
        return {cue: float(maps[cue].sum()) for cue in CUES}, maps

    def score(self, frame: Frame) -> Evidence:
        """Score one frame (frames must come in time order: static time accumulates across calls)."""
        if self.background is None:
            raise AnomalensError("OccupancyScorer.score called before fit")
        if frame.image.shape != self.background.shape:
            raise AnomalensError(
                f"frame {frame.index} is {frame.image.shape[1]}x{frame.image.shape[0]} but the scene model "
                f"was fitted at {self.background.shape[1]}x{self.background.shape[0]}"
            )
        started = time.perf_counter()
        mask = self._foreground(frame.image)
        cues, maps = self._cues(mask)
        ratios = {cue: cues[cue] / self.scale[cue] for cue in CUES}
        # Per-pixel map: each pixel carries the strongest cue it belongs to, in the same units as the score.
        anomaly_map = np.zeros(mask.shape, dtype=np.float32)
        for cue in ("novel_area", "static_area"):
            anomaly_map[maps[cue]] = np.maximum(anomaly_map[maps[cue]], ratios[cue])
        if ratios["foreground_area"] > 1.0:
            anomaly_map[mask] = np.maximum(anomaly_map[mask], ratios["foreground_area"])

        count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        blobs = [s for s in stats[1:count] if s[cv2.CC_STAT_AREA] >= self.min_blob]
        boxes = np.array(
            [[x, y, x + w, y + h] for x, y, w, h, _ in blobs], dtype=np.float64
        ).reshape(-1, 4)
        blob_scores = [float(anomaly_map[y : y + h, x : x + w].max()) for x, y, w, h, _ in blobs]
        area_to_source = 1.0 / frame.scale**2
        return Evidence(
            source=Source(tool="occupancy", backend="scene-trained", latency_s=time.perf_counter() - started),
            frame_index=frame.index,
            time_s=frame.time_s,
            frame_size=frame.source_size,
            boxes=frame.to_source(boxes),
            scores=np.array(blob_scores),
            labels=["foreground"] * len(blobs),
            anomaly_map=anomaly_map,
            frame_score=max(ratios.values()),
            measurements=[Measurement(name=c, value=cues[c] * area_to_source, unit="px^2") for c in CUES]
            + [Measurement(name=f"{c}_ratio", value=ratios[c], unit="ratio") for c in CUES],
        )
