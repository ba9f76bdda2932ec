"""Screening: score every frame cheaply, smooth, fuse extra cues, and group anomalous frames into events.

Each frame is decoded once. Memory stays bounded whatever the video's length: per frame only its score and
compact evidence (boxes and measurements) are kept; the heavy parts (image and anomaly map) are kept for at
most ``max_keyframes`` frames, the best of each run above the threshold, which become the events' keyframes.
"""

from __future__ import annotations

import heapq
import io
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from anomalens.events import group_events, outlier_level, smooth, smoothing_width
from anomalens.files import atomic_write
from anomalens.progress import track
from anomalens.tools.motion import VIEW_MOVED
from anomalens.tools.protocols import Cue, FrameScorer
from anomalens.types import Event, Evidence, Track
from anomalens.video import Frame, FrameSource

# How scores become events, the same for a video (``screen``) and a stream (``LiveScreening``): the threshold,
# the centred smoothing window, the shortest event and the gap of frames below the threshold an event bridges.
THRESHOLD, SMOOTH_SECONDS, MIN_EVENT_FRAMES, MAX_GAP = 1.0, 1.0, 3, 5
# Writes an event's summary from the event (its summary still empty), the evidence it cites and its keyframe.
Describe = Callable[[Event, list[Evidence], Evidence], str]


SAVED_FORMAT = 3  # 3: every frame's compact evidence too, for chat
_ARRAYS = ("frame_indices", "raw_scores", "scores")


class _SavedKeyframe(BaseModel):
    """An event's peak frame without its pixels (saved beside, in the npz) and the evidence drawn on it."""

    model_config = ConfigDict(extra="forbid")
    index: int
    time_s: float
    scale: float
    source_size: tuple[int, int]
    path: str | None
    evidence: Evidence


class _Saved(BaseModel):
    """A saved screening but for its arrays and keyframe pixels, with the fingerprint of what it screened."""

    model_config = ConfigDict(extra="forbid")
    format_version: int
    fingerprint: str
    threshold: float
    fps: float
    source_name: str
    source_size: tuple[int, int]
    events: list[Event]
    evidence: list[Evidence]
    frames: list[Evidence]  # every frame's compact evidence: chat answers about any moment from it
    keyframes: dict[str, _SavedKeyframe]
    tracks: list[Track]
    seconds: float


@dataclass(frozen=True)
class ScreeningResult:
    frame_indices: np.ndarray  # (T,) source frame index of each analysed frame
    raw_scores: np.ndarray  # (T,)
    scores: np.ndarray  # (T,) smoothed, cues fused; compared with threshold
    threshold: float
    fps: float
    source_name: str
    source_size: tuple[int, int]  # (width, height) of the source frames
    events: list[Event]
    evidence: dict[str, Evidence]  # evidence cited by events (keyframe evidence keeps its anomaly map)
    keyframes: dict[str, tuple[Frame, Evidence]] = field(default_factory=dict)  # event id -> peak frame
    frames: list[Evidence] = field(default_factory=list)  # every analysed frame's compact evidence (no map/masks)
    tracks: list[Track] = field(default_factory=list)  # every object the scorer followed
    seconds: float = 0.0

    @classmethod
    def from_live(
        cls, live: LiveEvent, *, threshold: float, fps: float, source_name: str, source_size: tuple[int, int],
        tracks: Sequence[Track] = (),
    ) -> ScreeningResult:
        """One closed event of a stream as the screening of the frames it cites (its report is an audit's)."""
        evidence = sorted(live.evidence, key=lambda ev: ev.frame_index or 0)
        scores = np.array([ev.frame_score or 0.0 for ev in evidence])
        return cls(
            frame_indices=np.array([ev.frame_index for ev in evidence]), raw_scores=scores, scores=scores,
            threshold=threshold, fps=fps, source_name=source_name, source_size=source_size, events=[live.event],
            evidence={ev.id: ev for ev in evidence}, keyframes={live.event.id: live.keyframe}, tracks=list(tracks),
        )  # fmt: skip

    def save(self, path: Path, fingerprint: str) -> None:
        """Write this screening, stamped with the ``fingerprint`` of its inputs, as one npz file (atomically)."""
        plain = {name: getattr(self, name) for name in _Saved.model_fields if name in self.__dataclass_fields__}
        keyframes = {
            event_id: _SavedKeyframe(**{name: getattr(frame, name) for name in _SavedKeyframe.model_fields
                                        if name != "evidence"}, evidence=evidence)
            for event_id, (frame, evidence) in self.keyframes.items()
        }  # fmt: skip
        saved = _Saved(**plain | {"evidence": list(self.evidence.values()), "keyframes": keyframes},
                       format_version=SAVED_FORMAT, fingerprint=fingerprint)  # fmt: skip
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            record=np.frombuffer(saved.model_dump_json().encode(), dtype=np.uint8),
            **{name: getattr(self, name) for name in _ARRAYS},
            **{f"keyframe_{event_id}": frame.image for event_id, (frame, _) in self.keyframes.items()},
        )
        atomic_write(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> ScreeningResult | None:
        """The screening saved at ``path`` with ``fingerprint``; None when it was saved for other inputs or by
        another format. A damaged file raises ``ValueError``, ``OSError``, ``KeyError`` or ``zipfile``'s error."""
        with np.load(path, allow_pickle=False) as kept:
            arrays = dict(kept)
        saved = _Saved.model_validate_json(arrays.pop("record").tobytes())
        if saved.format_version != SAVED_FORMAT or saved.fingerprint != fingerprint:
            return None
        keyframes = {
            event_id: (Frame(k.index, k.time_s, arrays[f"keyframe_{event_id}"], k.scale, k.source_size, k.path),
                       k.evidence)
            for event_id, k in saved.keyframes.items()
        }  # fmt: skip
        plain = {name: getattr(saved, name) for name in _Saved.model_fields if name in cls.__dataclass_fields__}
        return cls(**plain | {name: arrays[name] for name in _ARRAYS} | {
            "evidence": {ev.id: ev for ev in saved.evidence}, "keyframes": keyframes,
        })  # fmt: skip

    @cached_property
    def view_moves(self) -> list[float]:
        """When (s) the view began to move or the shot changed: each run of frames where most of it changed at
        once, which is said once, not followed as objects moving at thousands of px/s."""
        moved = [ev.time_s or 0.0 for ev in self.frames
                 if any(m.name == "view_motion" and m.value > VIEW_MOVED for m in ev.measurements)]  # fmt: skip
        return [t for k, t in enumerate(moved) if k == 0 or t - moved[k - 1] > 1.0]


def screen(
    source: FrameSource,
    scorer: FrameScorer,
    *,
    threshold: float = THRESHOLD,
    smooth_seconds: float = SMOOTH_SECONDS,
    min_event_frames: int = MIN_EVENT_FRAMES,
    max_gap: int = MAX_GAP,
    max_keyframes: int = 50,
    self_referenced: bool = False,
    priors: Collection[str] = (),
    cues: Sequence[Cue] = (),
    describe: Describe | None = None,
    observe: Callable[[Frame, Evidence], None] | None = None,
    progress: bool = True,
) -> ScreeningResult:
    """Score every frame of ``source`` with ``scorer`` and return events above ``threshold``.

    ``self_referenced``: the scene was learned from this footage itself, whose typical frames are normal, so the
    threshold rises to where a smoothed score stands out from the footage's own (``events.outlier_level``) when
    that is higher: a busy scene breaks one of its rules in most frames, and only its outliers are events. The
    rules named in ``priors`` (the everyday priors, ``rule_induction.everyday_priors``: not learned from this
    footage) keep their level relative to the raised threshold.

    ``cues`` (e.g. what captions say, ``pipelines.captions.CaptionCue``) are fused by maximum (a cue's level 1.0
    meets the threshold), so an anomaly a cue names is an event even where motion looks normal.

    Each event cites the evidence of its frames above the threshold, lists the rules broken and the tracks that
    broke them and what each cue says about it, and gets its summary from ``describe``. ``observe(frame,
    evidence)`` sees every frame's full evidence as it is scored (evaluation uses it).
    """
    started = time.perf_counter()
    indices, raw, compact = [], [], []
    keyframes = _Keyframes(max_keyframes)
    for frame in track(source, f"screening {source.name}", total=len(source), enabled=progress):
        evidence = scorer.score(frame)
        if observe is not None:
            observe(frame, evidence)
        score = float(evidence.frame_score or 0.0)
        indices.append(frame.index)
        raw.append(score)
        compact.append(evidence.model_copy(update={"anomaly_map": None, "masks": None}))
        cued = max((float(cue.levels(np.array([frame.index]))[0]) for cue in cues), default=0.0)
        keyframes.see(frame, evidence, score / threshold, cued)
    keyframes.close()

    frame_indices = np.asarray(indices, dtype=np.int64)
    raw_scores = np.asarray(raw)
    width = smoothing_width(smooth_seconds, source.effective_fps)
    scores = smooth(raw_scores, width)
    if self_referenced and len(scores):
        threshold = max(threshold, outlier_level(scores))
        # The everyday priors were not learned from this footage: what breaks them stands above the raised
        # threshold too (a cart in most frames is still a cart on a walkway).
        assumed = [max((b.severity for b in ev.breaches() if b.rule_id in priors), default=0.0)
                   for ev in compact]  # fmt: skip
        scores = np.maximum(scores, smooth(np.asarray(assumed), width) * threshold)
    for cue in cues:
        scores = np.maximum(scores, cue.levels(frame_indices) * threshold)
    evidence: dict[str, Evidence] = {}
    chosen: dict[tuple[int, int], tuple[Frame, Evidence]] = {}

    def details(start: int, end: int, peak: int) -> dict:
        inside = [ev for ev in compact if start <= ev.frame_index <= end]
        kept = keyframes.within(start, end)
        if kept is None:  # no run's best frame lies inside (smoothing carried the event): decode its strongest frame
            full = max(inside, key=lambda ev: ev.frame_score or 0.0)
            kept = (source.read(full.frame_index), full)
        reasons = [reason for cue in cues if (reason := cue.reason(start, end)) is not None]
        fields, cited = _event_fields(start, end, inside, kept[1], threshold, source.fps, describe, reasons)
        evidence.update({ev.id: ev for ev in cited})
        evidence[kept[1].id] = kept[1]
        chosen[(start, end)] = kept
        return fields

    events = group_events(
        frame_indices, scores, threshold, source.fps, min_frames=min_event_frames, max_gap=max_gap, details=details
    )
    return ScreeningResult(
        frame_indices=frame_indices, raw_scores=raw_scores, scores=scores, threshold=threshold, fps=source.fps,
        source_name=source.name, source_size=source.source_size, events=events, evidence=evidence,
        keyframes={event.id: chosen[(event.start_frame, event.end_frame)] for event in events}, frames=compact,
        tracks=scorer.tracks(), seconds=time.perf_counter() - started,
    )  # fmt: skip


def _event_fields(
    start: int,
    end: int,
    inside: list[Evidence],
    keyframe: Evidence,
    threshold: float,
    fps: float,
    describe: Describe | None,
    reasons: Sequence = (),
) -> tuple[dict, list[Evidence]]:
    """An event's fields beyond its frames and score (for ``group_events``), and the evidence it cites: its
    frames above the threshold (all of ``inside`` when none is), the rules they break and the tracks that broke
    them, its peak at ``keyframe``, and the ``describe``d summary."""
    cited = [ev for ev in inside if (ev.frame_score or 0.0) > threshold] or inside
    breaches = [(ev, b) for ev in cited for b in ev.breaches()]
    # The tracks it is about: those that broke a rule, and the one that made its peak (the most anomalous object).
    anomalous = len(keyframe) and keyframe.scores.max() > 0
    peaked = {keyframe.track_of(int(np.argmax(keyframe.scores)))} if anomalous else set()
    fields = {
        "peak_frame": keyframe.frame_index,
        "evidence_ids": [ev.id for ev in cited],
        "rule_ids": sorted({b.rule_id for _, b in breaches}),
        "track_ids": sorted(({ev.track_of(b.object_index) for ev, b in breaches} | peaked) - {None}),
        "reasons": list(reasons),
    }
    if describe is not None:
        draft = Event(id="draft", start_frame=start, end_frame=end, start_s=start / fps, end_s=end / fps, score=0.0,
                      **fields)  # fmt: skip
        fields["summary"] = describe(draft, cited, keyframe)
    return fields, cited


@dataclass(frozen=True)
class LiveEvent:
    """An event of a stream, complete once it has closed: the event, the evidence it cites, its keyframe."""

    event: Event
    evidence: list[Evidence]
    keyframe: tuple[Frame, Evidence]


@dataclass(frozen=True)
class StartedEvent:
    """An event of a stream as soon as it is sure to be one (its run of anomalous frames is long enough): the
    event so far, under the id it will close with."""

    event: Event


class LiveScreening:
    """``screen`` for a stream, frame by frame: the same scorer, centred smoothing, threshold and grouping, so a
    file fed through it gives ``screen``'s events (with no cues and no self-referenced threshold). An event is
    complete, and returned by ``feed``, once ``max_gap`` smoothed frames below the threshold follow it: half a
    smoothing window plus ``max_gap`` frames after its last anomalous frame. Memory stays bounded: frames are
    kept only while an event may still include them, and images only for the best frame of each run."""

    def __init__(
        self,
        scorer: FrameScorer,
        fps: float,
        *,
        threshold: float = THRESHOLD,
        smooth_seconds: float = SMOOTH_SECONDS,
        min_event_frames: int = MIN_EVENT_FRAMES,
        max_gap: int = MAX_GAP,
        describe: Describe | None = None,
    ):
        self.scorer, self.fps, self.threshold = scorer, fps, threshold
        self.half = smoothing_width(smooth_seconds, fps) // 2  # the same window as ``screen``'s
        self.min_event_frames, self.max_gap, self.describe = min_event_frames, max_gap, describe
        self.frames: list[Evidence] = []  # compact evidence of the frames kept, in order
        self.raw: list[float] = []
        self.smoothed: list[float] = []  # final smoothed scores of the first len(smoothed) frames kept
        self.run: tuple[int, int] | None = None  # positions (first, last above) of the run still open
        self.keyframes = _Keyframes(limit=1_000_000)  # emptied as events close: bounded by the open runs
        self.count = 0
        self.started = False  # the open run was announced (``StartedEvent``)

    def feed(self, frame: Frame) -> list[LiveEvent | StartedEvent]:
        """Score ``frame``; the events that started or closed with it."""
        evidence = self.scorer.score(frame)
        score = float(evidence.frame_score or 0.0)
        self.frames.append(evidence.model_copy(update={"anomaly_map": None, "masks": None}))
        self.raw.append(score)
        self.keyframes.see(frame, evidence, score / self.threshold, 0.0)
        closed = []
        while len(self.smoothed) + self.half < len(self.raw):  # the window of the next frame is whole
            closed += self._settle(len(self.smoothed))
        return closed

    def close(self) -> list[LiveEvent | StartedEvent]:
        """The end of the stream: the frames left settle with the window they have, and an open event closes."""
        self.keyframes.close()
        closed = []
        while len(self.smoothed) < len(self.raw):
            closed += self._settle(len(self.smoothed))
        if self.run is not None:
            closed += self._emit(*self.run)
        return closed

    def _settle(self, position: int) -> list[LiveEvent | StartedEvent]:
        window = self.raw[max(0, position - self.half) : position + self.half + 1]
        value = float(np.mean(window))
        self.smoothed.append(value)
        if value > self.threshold:
            self.run = (self.run[0] if self.run else position, position)
            return self._started(*self.run)
        if self.run is not None and position - self.run[1] > self.max_gap:
            first, last = self.run
            return self._emit(first, last)
        if self.run is None:  # nothing can join an event any more before the smoothing window's reach
            self._forget(position - self.half)
        return []

    def _started(self, first: int, last: int) -> list[StartedEvent]:
        """The open run, once it is long enough to be an event (``group_events``' rule), said once."""
        if self.started or last - first + 1 < self.min_event_frames:
            return []
        self.started = True
        kept, scores = self.frames[first : last + 1], self.smoothed[first : last + 1]
        peak = kept[int(np.argmax(scores))]
        start, end = kept[0].frame_index, kept[-1].frame_index
        broken = [(ev, b) for ev in kept for b in ev.breaches()]
        event = Event(id=f"event-{self.count + 1}", start_frame=start, end_frame=end, start_s=start / self.fps,
                      end_s=end / self.fps, peak_frame=peak.frame_index, score=max(scores),
                      rule_ids=sorted({b.rule_id for _, b in broken}),
                      track_ids=sorted({ev.track_of(b.object_index) for ev, b in broken} - {None}))  # fmt: skip
        return [StartedEvent(event)]

    def _emit(self, first: int, last: int) -> list[LiveEvent]:
        self.run, self.started = None, False
        kept = self.frames[first : last + 1]
        found: list[tuple[list[Evidence], tuple[Frame, Evidence]]] = []

        def details(start: int, end: int, peak: int) -> dict:
            inside = [ev for ev in kept if start <= ev.frame_index <= end]
            keyframe = self.keyframes.near(start, end)
            fields, cited = _event_fields(start, end, inside, keyframe[1], self.threshold, self.fps, self.describe)
            found.append(([*cited, keyframe[1]], keyframe))
            return fields

        indices = np.array([ev.frame_index for ev in kept])
        events = group_events(indices, np.array(self.smoothed[first : last + 1]), self.threshold, self.fps,
                              min_frames=self.min_event_frames, max_gap=self.max_gap, details=details)  # fmt: skip
        live = []
        for event, (evidence, keyframe) in zip(events, found):
            self.count += 1
            live.append(LiveEvent(event.model_copy(update={"id": f"event-{self.count}"}), evidence, keyframe))
        self._forget(last + 1 - self.half)
        return live

    def _forget(self, position: int) -> None:
        """Drop the frames before ``position`` (never those a smoothing window still needs)."""
        drop = max(0, min(position, len(self.smoothed) - self.half))
        if drop <= 0:
            return
        self.keyframes.forget_before(self.frames[drop].frame_index if drop < len(self.frames) else None)
        del self.frames[:drop], self.raw[:drop], self.smoothed[:drop]
        if self.run is not None:
            self.run = (self.run[0] - drop, self.run[1] - drop)


class _Keyframes:
    """The best frame of each run of frames above the threshold, kept whole (image and full evidence) for the
    strongest ``limit`` runs: runs of frames above it by their own score, and apart from those, runs that a cue
    calls anomalous where their own score is low (such a run can be an event's only keyframe). Levels are in
    units of the threshold."""

    def __init__(self, limit: int):
        self.limit = limit
        self.kept: dict[str, list[tuple[float, int, Frame, Evidence]]] = {"own": [], "cue": []}  # min-heaps
        self.runs: dict[str, tuple[float, int, Frame, Evidence] | None] = {"own": None, "cue": None}

    def see(self, frame: Frame, evidence: Evidence, own: float, cued: float) -> None:
        # Frames a cue calls anomalous rank by their own score too: the cue says when, motion says which frame.
        for kind, above, rank in (("own", own > 1.0, own), ("cue", own <= 1.0 < cued, own)):
            best = self.runs[kind]
            if above:
                if best is None or rank > best[0]:
                    self.runs[kind] = (rank, frame.index, frame, evidence)
            elif best is not None:
                self._keep(kind, best)
                self.runs[kind] = None

    def close(self) -> None:
        for kind, best in self.runs.items():
            if best is not None:
                self._keep(kind, best)
        self.runs = {"own": None, "cue": None}

    def _keep(self, kind: str, item: tuple[float, int, Frame, Evidence]) -> None:
        heap = self.kept[kind]
        if len(heap) < self.limit:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)

    def forget_before(self, index: int | None) -> None:
        """Drop the kept frames before source frame ``index`` (all of them with None)."""
        for kind, heap in self.kept.items():
            self.kept[kind] = [item for item in heap if index is not None and item[1] >= index]
            heapq.heapify(self.kept[kind])

    def near(self, start: int, end: int) -> tuple[Frame, Evidence]:
        """``within(start, end)``, else the kept frame (or a run's best so far) nearest the range: a smoothed
        event's anomalous frames can lie up to half a smoothing window outside it."""
        found = self.within(start, end)
        if found is not None:
            return found
        items = [item for heap in self.kept.values() for item in heap] + [r for r in self.runs.values() if r]
        _, _, frame, evidence = min(items, key=lambda item: max(start - item[1], item[1] - end))
        return frame, evidence

    def within(self, start: int, end: int) -> tuple[Frame, Evidence] | None:
        """The strongest kept frame between ``start`` and ``end``: by its own score first, else by a cue."""
        for kind in ("own", "cue"):
            inside = [item for item in self.kept[kind] if start <= item[1] <= end]
            if inside:
                _, _, frame, evidence = max(inside, key=lambda item: item[0])
                return frame, evidence
        return None
