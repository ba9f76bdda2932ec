"""Overlays for people to look at: boxes, masks and heat maps drawn onto frames."""

from __future__ import annotations

import cv2
import numpy as np

from anomalens.types import Evidence, Zone

BOX_COLOR = (0, 0, 255)  # BGR red
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 10800, 21600, 43200, 86400)  # seconds
DAY = 86400


def time_ticks(seconds: float, at_most: int) -> list[tuple[float, str]]:
    """Marks for a time axis ``seconds`` long: at most ``at_most`` + 1 of them, at a round step (whole days past
    the longest listed one, so a week-long camera has an axis too), each (its second, its label: ``45s``, ``12:30``,
    ``3:00:00``)."""
    step = next((s for s in TICK_STEPS if seconds / s <= at_most), DAY * int(np.ceil(seconds / DAY / at_most)))
    return [(k * step, _clock(k * step)) for k in range(int(seconds // step) + 1)]


def _clock(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}" if minutes else f"{secs}s"


def overlay(
    image: np.ndarray, evidence: Evidence, scale: float, min_score: float = 1.0, alpha: float = 0.45
) -> np.ndarray:
    """Return a copy of ``image`` (analysis resolution, BGR) with the evidence drawn on it.

    ``scale`` is analysis pixels per source pixel (``Frame.scale``); boxes and masks are in source pixels.
    Only objects scoring above ``min_score`` get their mask tinted and their box drawn.
    """
    out = image.copy()
    h, w = out.shape[:2]
    if evidence.anomaly_map is not None and evidence.anomaly_map.max() > 0:
        # Maps are in "times the normal extreme" units: tint from half the edge of normal upwards.
        heat = cv2.resize(evidence.anomaly_map.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST)
        norm = np.clip(heat / max(float(heat.max()), 2.0), 0, 1)
        colored = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
        where = heat >= 0.5
        out[where] = (alpha * colored[where] + (1 - alpha) * out[where]).astype(np.uint8)
    chosen = evidence.scores > min_score
    if evidence.masks is not None:
        for mask in evidence.masks[chosen]:
            small = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
            out[small] = (0.5 * out[small] + 0.5 * np.array(BOX_COLOR)).astype(np.uint8)
    for x1, y1, x2, y2 in evidence.boxes[chosen] * scale:
        cv2.rectangle(out, (int(x1), int(y1)), (int(np.ceil(x2)), int(np.ceil(y2))), BOX_COLOR, 1)
    return out


def boxed(image: np.ndarray, evidence: Evidence, scale: float, min_score: float = 1.0) -> np.ndarray:
    """A copy of ``image`` (analysis resolution, BGR) with every object of ``evidence`` boxed and named (its class,
    else "object", and its track): those scoring above ``min_score`` (anomalous) in red and bold, the rest thin and
    grey. ``scale``: analysis pixels per source pixel."""
    out = image.copy()
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(evidence.boxes) * scale):
        anomalous = evidence.scores[i] > min_score
        color, width = (BOX_COLOR, 2) if anomalous else ((200, 200, 200), 1)
        corner = (int(x1), int(y1))
        cv2.rectangle(out, corner, (int(np.ceil(x2)), int(np.ceil(y2))), color, width)
        name = (evidence.class_names[i] if evidence.class_names is not None else None) or "object"
        track = evidence.track_of(i)
        label = name if track is None else f"{name} {track}"
        cv2.putText(out, label, (corner[0], max(corner[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1,
                    cv2.LINE_AA)  # fmt: skip
    return out


def heat_overlay(image: np.ndarray, evidence: Evidence, threshold: float, alpha: float = 0.45) -> np.ndarray:
    """``image`` (source resolution, BGR) under its whole anomaly map, coloured from 0 to the larger of the map's
    maximum and ``threshold`` (so a map that stays below the threshold never looks red), with the boxes, each
    numbered by its ``track_ids`` when the evidence has them (an image's regions)."""
    out = image.copy()
    h, w = out.shape[:2]
    if evidence.anomaly_map is not None:
        heat = cv2.resize(evidence.anomaly_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        norm = np.clip(heat / max(float(heat.max()), threshold, 1e-6), 0, 1)
        colored = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
        out = cv2.addWeighted(colored, alpha, out, 1 - alpha, 0)
    for i, (x1, y1, x2, y2) in enumerate(evidence.boxes):
        cv2.rectangle(out, (int(x1), int(y1)), (int(np.ceil(x2)), int(np.ceil(y2))), BOX_COLOR, 1)
        if evidence.track_ids is not None:
            corner = (int(x1) + 2, min(int(y1) + 12, h - 2))
            cv2.putText(out, str(evidence.track_ids[i]), corner, cv2.FONT_HERSHEY_SIMPLEX, 0.4, BOX_COLOR, 1,
                        cv2.LINE_AA)
    return out


ZONE_COLOR = (0, 200, 255)  # BGR amber: drawn zones
GRID_COLOR = (255, 255, 255)


def zone_map(image: np.ndarray, rows: int, cols: int, zones: list[Zone]) -> np.ndarray:
    """``image`` (BGR, any resolution) with the scene's grid cells named ``r{row}c{col}`` and the drawn zones
    outlined and named on top: the picture that tells what a rule's zone means."""
    out = image.copy()
    h, w = out.shape[:2]
    size = max(0.3, min(w, h) / 700)
    for row in range(rows):
        for col in range(cols):
            x1, y1 = col * w // cols, row * h // rows
            cv2.rectangle(out, (x1, y1), ((col + 1) * w // cols, (row + 1) * h // rows), GRID_COLOR, 1)
            _label(out, f"r{row}c{col}", (x1 + 3, y1 + int(14 * size / 0.5)), size, GRID_COLOR)
    for zone in zones:
        polygon = np.array([(x * w, y * h) for x, y in zone.points], dtype=np.int32)
        tint = out.copy()
        cv2.fillPoly(tint, [polygon], ZONE_COLOR)
        out = cv2.addWeighted(tint, 0.25, out, 0.75, 0)
        cv2.polylines(out, [polygon], True, ZONE_COLOR, 2)
        cx, cy = polygon.mean(axis=0).astype(int)
        _label(out, zone.name, (int(cx), int(cy)), size * 1.3, ZONE_COLOR)
    return out


def _label(image: np.ndarray, text: str, at: tuple[int, int], size: float, color: tuple[int, int, int]) -> None:
    """Text with a dark outline, readable on any background."""
    cv2.putText(image, text, at, cv2.FONT_HERSHEY_SIMPLEX, size, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, at, cv2.FONT_HERSHEY_SIMPLEX, size, color, 1, cv2.LINE_AA)
