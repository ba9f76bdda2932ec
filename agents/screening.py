"""Screening: score every frame cheaply, smooth, and group anomalous frames into events.

Memory stays bounded whatever the video's length: per frame only its score and compact evidence
(boxes and measurements) are kept; the heavy parts (image and anomaly map) are kept for at most
``max_keyframes`` of the highest-scoring frames above the threshold, which become the events' keyframes.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from anomalens.agents.explain import explain_event
from anomalens.agents.llm import LLM
from anomalens.agents.perception import Perception
from anomalens.draw import overlay
from anomalens.events import group_events, outlier_level, smooth
from anomalens.progress import track
from anomalens.report import GroundTruth, Report, compact_map
from anomalens.tools.scene import Scene, SceneScorer
from anomalens.types import Event, Evidence, Explanation, Rulebook, Track
from anomalens.video import Frame, FrameSource

if TYPE_CHECKING:
    from anomalens.agents.caption_reasoning import CaptionCue, CaptionReason


class FrameScorer(Protocol):
    def score(self, frame: Frame) -> Evidence: ...


@dataclass
class ScreeningResult:
    frame_indices: np.ndarray  # (T,) source frame index of each analysed frame
    raw_scores: np.ndarray  # (T,)
    scores: np.ndarray  # (T,) smoothed; compared with threshold
    threshold: float
    fps: float
    source_name: str
    source_size: tuple[int, int]  # (width, height) of the source frames
    events: list[Event]
    evidence: dict[str, Evidence]  # evidence cited by events (keyframe evidence keeps its anomaly map)
    keyframes: dict[str, tuple[Frame, Evidence]] = field(default_factory=dict)  # event id -> peak frame
    frames: list[Evidence] = field(default_factory=list)  # every analysed frame's compact evidence (no map/masks)
    caption_reasons: dict[str, CaptionReason] = field(default_factory=dict)  # event id -> what its captions break
    seconds: float = 0.0


def screen(
    source: FrameSource,
    scorer: FrameScorer,
    *,
    threshold: float = 1.0,
    smooth_seconds: float = 1.0,
    min_event_frames: int = 3,
    max_gap: int = 5,
    max_keyframes: int = 50,
    self_referenced: bool = False,
    rulebook: Rulebook | None = None,
    caption_cue: CaptionCue | None = None,
    observe: Callable[[Frame, Evidence], None] | None = None,
    progress: bool = True,
) -> ScreeningResult:
    """Score every frame of ``source`` with ``scorer`` and return events above ``threshold``.

    ``self_referenced``: the scene was learned from this footage itself, whose typical frames are normal, so the
    threshold rises to where a smoothed score stands out from the footage's own (``events.outlier_level``) when
    that is higher: a busy scene breaks one of its rules in most frames, and only its outliers are events.

    ``caption_cue``: caption reasoning over the video's captions, fused by maximum (its level 1.0 meets the
    threshold), so an anomaly the captions name is an event even where motion looks normal (a slow cyclist).

    Each event cites the evidence of its frames above the threshold, lists the rules broken and the
    tracks that broke them, and gets a deterministic explanation (rule sentences from ``rulebook``).
    ``observe(frame, evidence)`` sees every frame's full evidence as it is scored (evaluation uses it).
    """
    started = time.perf_counter()
    indices, raw, compact = [], [], []
    # The best frame of each run of above-threshold frames; a min-heap keeps the strongest runs' peaks.
    peaks: list[tuple[float, int, Frame, Evidence]] = []
    run_best: tuple[float, int, Frame, Evidence] | None = None

    def keep(item: tuple[float, int, Frame, Evidence]) -> None:
        if len(peaks) < max_keyframes:
            heapq.heappush(peaks, item)
        elif item[0] > peaks[0][0]:
            heapq.heapreplace(peaks, item)

    for frame in track(source, f"screening {source.name}", total=len(source), enabled=progress):
        evidence = scorer.score(frame)
        if observe is not None:
            observe(frame, evidence)
        score = float(evidence.frame_score or 0.0)
        indices.append(frame.index)
        raw.append(score)
        compact.append(evidence.model_copy(update={"anomaly_map": None, "masks": None}))
        if score > threshold:
            if run_best is None or score > run_best[0]:
                run_best = (score, frame.index, frame, evidence)
        elif run_best is not None:
            keep(run_best)
            run_best = None
    if run_best is not None:
        keep(run_best)

    frame_indices = np.asarray(indices, dtype=np.int64)
    raw_scores = np.asarray(raw)
    scores = smooth(raw_scores, max(1, round(smooth_seconds * source.effective_fps)) | 1)  # odd width
    if self_referenced and len(scores):
        threshold = max(threshold, outlier_level(scores))
    if caption_cue is not None:
        scores = np.maximum(scores, caption_cue.at(frame_indices) * threshold)
    events = group_events(frame_indices, scores, threshold, source.fps, min_frames=min_event_frames, max_gap=max_gap)
    evidence: dict[str, Evidence] = {}
    keyframes: dict[str, tuple[Frame, Evidence]] = {}
    caption_reasons: dict[str, CaptionReason] = {}
    for event in events:
        inside = [ev for ev in compact if event.start_frame <= ev.frame_index <= event.end_frame]
        cited = [ev for ev in inside if (ev.frame_score or 0.0) > threshold] or inside
        event.evidence_ids = [ev.id for ev in cited]
        evidence.update({ev.id: ev for ev in cited})
        candidates = [p for p in peaks if event.start_frame <= p[1] <= event.end_frame]
        if candidates:
            _, _, frame, full = max(candidates, key=lambda p: p[0])
        else:  # its peak frame was not among the kept ones: decode it again, evidence without a map
            full = max(inside, key=lambda ev: ev.frame_score or 0.0)
            frame = source.read(full.frame_index)
        event.peak_frame = full.frame_index
        breaches = [(ev, b) for ev in cited for b in ev.broken_rules()]
        event.rule_ids = sorted({rule_id for _, (rule_id, _, _) in breaches})
        event.track_ids = sorted(
            {int(ev.track_ids[i]) for ev, (_, _, i) in breaches if i is not None and ev.track_ids is not None}
        )
        said = caption_cue.reason(event.start_frame, event.end_frame) if caption_cue is not None else None
        if said is not None:
            caption_reasons[event.id] = said
        event.summary = explain_event(event, cited, full, rulebook, said)
        evidence[full.id] = full
        keyframes[event.id] = (frame, full)
    return ScreeningResult(
        frame_indices, raw_scores, scores, threshold, source.fps, source.name, source.source_size, events,
        evidence, keyframes, compact, caption_reasons, seconds=time.perf_counter() - started,
    )


def _separator(image: np.ndarray) -> np.ndarray:
    return np.full((image.shape[0], 6, 3), 255, dtype=np.uint8)


def build_report(
    result: ScreeningResult,
    *,
    title: str,
    scorer: str,
    rulebook: Rulebook | None = None,
    tracks: list[Track] = (),
    ground_truth: GroundTruth | None = None,
    metrics: dict[str, float] | None = None,
) -> tuple[Report, dict[str, np.ndarray]]:
    """The report for a screening run and its keyframe pictures (raw frame | frame with overlays)."""
    keyframes = {
        event_id: np.hstack([frame.image, _separator(frame.image), overlay(frame.image, evidence, frame.scale)])
        for event_id, (frame, evidence) in result.keyframes.items()
    }
    report = Report(
        title=title,
        input=result.source_name,
        fps=result.fps,
        source_size=result.source_size,
        scorer=scorer,
        threshold=result.threshold,
        frame_indices=result.frame_indices.tolist(),
        scores=[round(float(s), 4) for s in result.scores],
        events=result.events,
        evidence=[compact_map(ev) for ev in result.evidence.values()],
        tracks=[t for t in tracks if any(t.id in e.track_ids for e in result.events)],
        rulebook=rulebook,
        ground_truth=ground_truth,
        metrics=metrics or {},
        seconds=result.seconds,
    )
    return report, keyframes


def audit(
    source: FrameSource,
    scene: Scene,
    *,
    title: str | None = None,
    ground_truth: GroundTruth | None = None,
    metrics: Callable[[ScreeningResult], dict[str, float]] | None = None,
    llm: LLM | None = None,
    explainer: str = "deterministic",
    captions: str | Path | None = None,
    caption_cue: CaptionCue | None = None,
    perception: Perception | None = None,
    self_referenced: bool = False,
    progress: bool = True,
) -> tuple[ScreeningResult, Report, dict[str, np.ndarray]]:
    """Screen ``source`` (opened with ``scene.open``) against a learned scene and build its report.

    With ``llm``, the agent explains each event (its verified prose replaces the deterministic summary when
    it verified anything); ``captions`` (a replayed caption file) and the foundation tools in ``perception``
    are among its tools, and the verifier re-grounds object claims with the latter. Without, the
    report names ``explainer`` (the deterministic explainer, and why) as the author of the explanations.
    ``caption_cue``: caption reasoning fused into screening (see ``screen``).
    """
    scorer = SceneScorer(scene, source.fps)
    result = screen(
        source, scorer, self_referenced=self_referenced, rulebook=scene.rulebook, caption_cue=caption_cue,
        progress=progress,
    )
    tracks = scorer.analyzer.tracks()
    explanations: list[Explanation] = []
    if llm is not None and result.events:
        from anomalens.agents.graph import explain_events
        from anomalens.agents.index import index_from_screening

        index = index_from_screening(result, tracks=tracks, rulebook=scene.rulebook, captions_file=captions)
        for explanation in explain_events(llm, index, perception=perception, progress=progress):
            explanations.append(explanation)
            event = next(e for e in result.events if e.id == explanation.event_id)
            if explanation.supported:
                event.summary = explanation.prose
            for claim in explanation.claims:  # captions the agent cited go into the report with the rest
                for evidence_id in claim.evidence_ids:
                    if evidence_id not in result.evidence and (cited := index.get(evidence_id)) is not None:
                        result.evidence[evidence_id] = cited
    report, keyframes = build_report(
        result,
        title=title or f"anomalens audit: {source.name}",
        scorer="scene rules + motion (trained on " + ", ".join(scene.sources) + ")"
        + (f" + caption rules on {caption_cue.origin}" if caption_cue is not None else ""),
        rulebook=scene.rulebook,
        tracks=tracks,
        ground_truth=ground_truth,
        metrics=metrics(result) if metrics else None,
    )
    report.explainer = f"agent ({llm.backend}:{llm.model})" if llm is not None else explainer
    report.explanations = explanations
    return result, report, keyframes
