"""Per-frame scores -> smoothed scores -> ``Event`` time ranges (pure functions)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from anomalens.types import Breach, Event, Evidence


def smooth(scores: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average over ``width`` frames (odd; edges use the frames that exist)."""
    scores = np.asarray(scores, dtype=np.float64)
    if width > 1 and width % 2 == 0:
        raise ValueError(f"smoothing width must be odd, got {width}")
    width = min(width, scores.size - (scores.size % 2 == 0))  # a clip shorter than the window: all of it
    if width <= 1:
        return scores.copy()
    kernel = np.ones(width)
    total = np.convolve(scores, kernel, mode="same")
    count = np.convolve(np.ones_like(scores), kernel, mode="same")
    return total / count


def smoothing_width(seconds: float, fps: float) -> int:
    """The centred smoothing window of ``seconds`` at ``fps``, in frames: odd, at least 1."""
    return max(1, round(seconds * fps)) | 1


def worst_breaches(
    evidence: Iterable[Evidence], weight: Callable[[Breach, Evidence], Any] = lambda breach, _: breach.severity
) -> list[tuple[Breach, Evidence]]:
    """Each broken rule's worst breach in ``evidence`` (the highest ``weight``; severity by default) and the
    evidence holding it, worst first."""
    worst: dict[str, tuple[Breach, Evidence]] = {}
    for ev in evidence:
        for breach in ev.breaches():
            if breach.rule_id not in worst or weight(breach, ev) > weight(*worst[breach.rule_id]):
                worst[breach.rule_id] = (breach, ev)
    return sorted(worst.values(), key=lambda item: weight(*item), reverse=True)


def outlier_level(values: np.ndarray, spread: float = 4.0) -> float:
    """The level above which a value stands out from the rest: their median plus ``spread`` robust standard
    deviations (1.4826 median absolute deviations). Self-referenced normality uses it: the input's own typical
    values are normal."""
    values = np.asarray(values, dtype=np.float64)
    median = float(np.median(values))
    return median + spread * 1.4826 * float(np.median(np.abs(values - median)))


def group_events(
    frame_indices: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    fps: float,
    *,
    min_frames: int = 1,
    max_gap: int = 0,
    prefix: str = "event",
    details: Callable[[int, int, int], dict[str, Any]] | None = None,
) -> list[Event]:
    """Group frames whose score exceeds ``threshold`` into events.

    ``frame_indices`` are the source frame indices of ``scores`` (increasing, possibly strided). Runs of
    above-threshold samples separated by at most ``max_gap`` below-threshold samples are merged; runs
    shorter than ``min_frames`` samples are dropped. ``details(start_frame, end_frame, peak_frame)`` returns
    the rest of an event's fields (its evidence, rules, summary; it may move the peak), so that every event
    is built complete.
    """
    frame_indices = np.asarray(frame_indices)
    scores = np.asarray(scores, dtype=np.float64)
    if frame_indices.shape != scores.shape:
        raise ValueError(f"{len(frame_indices)} frame indices but {len(scores)} scores")
    above = np.flatnonzero(scores > threshold)
    if above.size == 0:
        return []
    runs: list[list[int]] = [[above[0], above[0]]]
    for i in above[1:]:
        if i - runs[-1][1] - 1 <= max_gap:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    events = []
    for first, last in runs:
        if last - first + 1 < min_frames:
            continue
        peak = first + int(np.argmax(scores[first : last + 1]))
        start, end, peak_frame = int(frame_indices[first]), int(frame_indices[last]), int(frame_indices[peak])
        fields = {
            "id": f"{prefix}-{len(events) + 1}",
            "start_frame": start,
            "end_frame": end,
            "start_s": start / fps,
            "end_s": end / fps,
            "peak_frame": peak_frame,
            "score": float(scores[peak]),
        }
        events.append(Event(**fields | (details(start, end, peak_frame) if details else {})))
    return events
