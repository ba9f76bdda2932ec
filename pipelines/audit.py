"""Auditing footage against a scene, assembled: screening (scene scorer, cues, the deterministic explainer),
the agent on each event, and the report. Also the video's index for the agent, and who explains events.

``audit`` serves the CLI's ``audit`` and ``explain VIDEO``, the demo and every eval runner that audits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from anomalens.agents.graph import explain_events, plain_explanation
from anomalens.agents.index import VideoIndex
from anomalens.agents.llm import LLM
from anomalens.clips import event_clip
from anomalens.config import Settings, load_settings
from anomalens.draw import overlay
from anomalens.errors import AnomalensError, LLMError, MissingExtra
from anomalens.files import writable_folder
from anomalens.pipelines.audit_state import AuditState, fingerprint
from anomalens.pipelines.describe import Describer
from anomalens.pipelines.history import record
from anomalens.progress import say, track
from anomalens.report import SEPARATOR_PX, GroundTruth, Report, clip_file, compact_map, write_report
from anomalens.rules.captions import EVERYDAY
from anomalens.store import EventStore
from anomalens.tools.captions import ReplayedCaptions
from anomalens.tools.motion import VIEW_MOVED
from anomalens.tools.perception import AGENT_KINDS, Perception, object_tools
from anomalens.tools.protocols import Cue
from anomalens.tools.rule_induction import SELF_REFERENCED_CONTAMINATION
from anomalens.tools.scene import Scene, SceneScorer
from anomalens.tools.screening import ScreeningResult, screen
from anomalens.types import Event, Evidence, Explanation, Track
from anomalens.video import Frame, FrameSource


@dataclass(frozen=True)
class Screened:
    """One video screened against a scene: the screening result and every track followed."""

    result: ScreeningResult
    tracks: list[Track]

    @cached_property
    def view_moves(self) -> list[float]:
        """When (s) the view began to move or the shot changed: each run of frames where most of it changed at
        once, which is said once, not followed as objects moving at thousands of px/s."""
        moved = [ev.time_s or 0.0 for ev in self.result.frames
                 if any(m.name == "view_motion" and m.value > VIEW_MOVED for m in ev.measurements)]  # fmt: skip
        return [t for k, t in enumerate(moved) if k == 0 or t - moved[k - 1] > 1.0]


@dataclass(frozen=True)
class Audit:
    """An audited video: what screening found, the agent's explanations, and the report (with its pictures)."""

    screened: Screened
    explanations: list[Explanation]
    report: Report
    keyframes: dict[str, np.ndarray]
    files: tuple[Path, Path] | None = None  # report.json and report.html, when written

    @property
    def events(self) -> list[Event]:
        return self.screened.result.events


def screen_video(
    source: FrameSource,
    scene: Scene,
    *,
    cues: Sequence[Cue] = (),
    self_referenced: bool = False,
    observe: Callable[[Frame, Evidence], None] | None = None,
    tools: Perception | None = None,
    progress: bool = True,
) -> Screened:
    """Screen ``source`` (opened with ``scene.open``) against ``scene``: every frame scored by the scene's motion,
    objects and rules, ``cues`` fused, events described by the deterministic explainer. ``tools``: the scene's
    object tools when already loaded (default: loaded here, when the scene names its objects)."""
    if scene.objects and tools is None:
        tools = object_tools(scene.objects)
    scorer = SceneScorer(scene, source.fps, tools)
    result = screen(
        source, scorer, self_referenced=self_referenced, cues=cues, describe=Describer(scene.rulebook),
        observe=observe, progress=progress,
    )
    screened = Screened(result, scorer.tracks())
    if moves := screened.view_moves:
        say(f"{source.name}: {_moved(moves)}", progress)
    return screened


def _moved(moves: list[float]) -> str:
    at = ", ".join(f"{t:.1f} s" for t in moves[:5]) + (", ..." if len(moves) > 5 else "")
    return f"the view moved or the shot changed {len(moves)} time(s) (at {at}): nothing is followed while it does"


def index_video(
    screened: Screened, scene: Scene, *, captions: str | Path | None = None, every_frame: bool = False
) -> VideoIndex:
    """The agent's index of one screened video: its events and cited evidence, and with ``every_frame`` the
    compact evidence and tracks of every frame (for questions about any moment of the video)."""
    result = screened.result
    compact = {ev.id: ev for ev in result.frames} if every_frame else {}
    compact.update(
        {ev.id: ev.model_copy(update={"anomaly_map": None, "masks": None}) for ev in result.evidence.values()}
    )
    cited = {t for event in result.events for t in event.track_ids}
    return VideoIndex(
        video=result.source_name,
        fps=result.fps,
        source_size=result.source_size,
        frames=int(result.frame_indices[-1]) + 1 if len(result.frame_indices) else 0,  # a part's times stay the video's
        threshold=result.threshold,
        events=result.events,
        evidence=sorted(compact.values(), key=lambda ev: ev.frame_index or 0),
        tracks=list(screened.tracks) if every_frame else [t for t in screened.tracks if t.id in cited],
        every_track=every_frame,
        rulebook=scene.rulebook,
        captions_file=str(captions) if captions else None,
    )


def keyframe_picture(frame: Frame, evidence: Evidence) -> np.ndarray:
    """An event's keyframe as reports show it: the frame beside the same frame with boxes, masks and heat map."""
    white = np.full((frame.image.shape[0], SEPARATOR_PX, 3), 255, dtype=np.uint8)
    return np.hstack([frame.image, white, overlay(frame.image, evidence, frame.scale)])


def build_report(
    screened: Screened,
    scene: Scene,
    *,
    title: str,
    scorer: str,
    explainer: str,
    explanations: list[Explanation] = (),
    cited: dict[str, Evidence] | None = None,
    ground_truth: GroundTruth | None = None,
    metrics: dict[str, float] | None = None,
    fps_note: str | None = None,
) -> tuple[Report, dict[str, np.ndarray]]:
    """The report of a screened video and its keyframe pictures (raw frame | frame with overlays); ``cited``:
    evidence the explanations cite beyond screening's (captions, what live tools found); ``fps_note``: the frame
    rate was assumed, not read from the input."""
    result = screened.result
    keyframes = {event_id: keyframe_picture(*shown) for event_id, shown in result.keyframes.items()}
    evidence = result.evidence | (cited or {})
    report = Report(
        title=title,
        input=result.source_name,
        fps=result.fps,
        fps_note=fps_note,
        source_size=result.source_size,
        scorer=scorer,
        explainer=explainer,
        explanations=list(explanations),
        threshold=result.threshold,
        frame_indices=result.frame_indices.tolist(),
        scores=[round(float(s), 4) for s in result.scores],
        events=result.events,
        evidence=[compact_map(ev) for ev in evidence.values()],
        tracks=[t for t in screened.tracks if any(t.id in e.track_ids for e in result.events)],
        rulebook=scene.rulebook,
        scene=str(scene.folder.resolve()) if scene.folder is not None else None,
        zone_grid=(scene.model.geometry.rows, scene.model.geometry.cols),
        ground_truth=ground_truth,
        metrics=metrics or {},
        seconds=result.seconds,
    )
    return report, keyframes


def audit(
    video: str | Path | FrameSource,
    scene: Scene | str | Path,
    *,
    out: str | Path | None = None,
    fps: float | None = None,
    explainer: str | None = None,
    llm: LLM | None = None,
    captions: str | Path | None = None,
    caption_rules: str | Path | None = None,
    perception: Perception | None = None,
    self_referenced: bool = False,
    title: str | None = None,
    ground_truth: GroundTruth | None = None,
    metrics: Callable[[ScreeningResult], dict[str, float]] | None = None,
    fresh: bool = False,
    store: EventStore | None = None,
    progress: bool = True,
) -> Audit:
    """Audit ``video`` (a path, or a ``FrameSource`` opened with ``scene.open``) against ``scene`` (a ``Scene``
    or its folder): screen every frame, explain each event, build the report (written to ``out`` if given).

    Events are explained by the agent with ``llm``, else by the LLM that ``explainer`` (``auto``, ``agent``,
    ``deterministic``; default: the settings) chooses, else by the deterministic explainer. The agent reads the
    replayed ``captions`` and calls the foundation tools in ``perception`` (default: those with weights here);
    the report shows its verified prose where it verified anything, the deterministic summary elsewhere.
    ``caption_rules`` (rule text or YAML) also screens the ``captions`` against them, fused with motion.
    ``fps``: the frame rate of a frame folder (default: the scene's).

    With ``out``, the work is kept there as it finishes (``audit_state``): the report is written once screening
    ends and again after each explanation, and a re-run with the same inputs reuses the screening and the
    explanations already verified, unless ``fresh``. A written report lands in the event ``store`` (default: the
    settings' one).
    """
    if caption_rules is not None and captions is None:
        raise AnomalensError("caption rules screen the video's captions: give them with --captions FILE")
    scene = scene if isinstance(scene, Scene) else Scene.load(scene)
    # Opened and read before the LLM loads and screening starts: bad input fails fast.
    source = video if isinstance(video, FrameSource) else scene.open(video, fps=fps)
    if source.fps_note:
        say(f"{source.name}: {source.fps_note}")
    replayed = ReplayedCaptions.load(captions, source.fps) if captions is not None else None
    if replayed is not None and (problem := replayed.mismatch(source.declared_frames)):
        say(f"warning: {problem}")
    if caption_rules is not None:
        from anomalens.pipelines.captions import caption_rulebook, open_caption_cue

        read_caption_rules = caption_rulebook(caption_rules)
    state = None
    if out is not None:
        writable_folder(out)
        state = AuditState(Path(out), fingerprint(source.identity(), scene.digest(), captions, caption_rules))
    who = f"agent ({llm.backend}:{llm.model})" if llm is not None else None
    # An LLM failure is an error when the agent was asked for: by name, or by giving the LLM without a choice.
    insists = (explainer or ("agent" if llm is not None else load_settings().explainer)) == "agent"
    if llm is None:
        llm, who = open_explainer(explainer)
    say(f"explanations: {who}", progress)
    if llm is not None and perception is None:
        perception = foundation_tools(progress)
    kept = state.screening() if state is not None and not fresh else None
    if kept is not None:
        screened = Screened(*kept)
        say(f"{out}: reusing the screening of an earlier run of this audit (--fresh screens again)", progress)
    else:
        cues = [] if caption_rules is None else [open_caption_cue(replayed, read_caption_rules, llm, progress=progress)]
        screened = screen_video(source, scene, cues=cues, self_referenced=self_referenced, progress=progress)
        if state is not None:
            state.keep_screening(screened.result, screened.tracks)
    clips = write_clips(source, screened.result, out, progress) if out is not None else []
    scorer = "scene rules + motion" + (" + objects" if scene.objects else "")
    scorer += " (trained on " + ", ".join(scene.sources) + ")"
    scorer += f" + caption rules on {replayed.origin}" if caption_rules is not None else ""
    if self_referenced:
        scorer += "; normality assumed: " + normality(scene)
    if moves := screened.view_moves:
        scorer += "; " + _moved(moves)
    explanations: list[Explanation] = []
    cited: dict[str, Evidence] = {}

    def reported(explainer_said: str) -> tuple[Report, dict[str, np.ndarray]]:
        report, keyframes = build_report(
            screened,
            scene,
            title=title or f"anomalens audit: {source.name}",
            scorer=scorer,
            explainer=explainer_said,
            explanations=explanations,
            cited=cited,
            ground_truth=ground_truth,
            metrics=metrics(screened.result) if metrics else None,
            fps_note=source.fps_note,
        )
        return report.model_copy(update={"clips": clips}), keyframes

    def cite(explanation: Explanation) -> None:
        """What the agent cited goes into the report with the rest."""
        extra = {ev.id: ev for ev in explanation.evidence}
        for claim in explanation.claims:
            for evidence_id in claim.evidence_ids:
                if (found := extra.get(evidence_id) or index.get(evidence_id)) is not None:
                    cited[evidence_id] = found

    failure = None
    events = screened.result.events
    index = index_video(screened, scene, captions=captions) if events else None
    if llm is not None and events:
        if state is not None:
            explanations.extend(e for e in state.explanations(who) if index.event(e.event_id) is not None)
            if explanations:
                say(f"{len(explanations)} of {len(events)} event(s) explained by an earlier run: kept", progress)
        for explanation in explanations:
            cite(explanation)
        done = {e.event_id for e in explanations}

        def so_far() -> str:
            return f"{who} for {len(explanations)} of {len(events)} event(s) so far, deterministic for the rest"

        if out is not None:  # screening is kept whatever happens to the explanations (a failure, a kill)
            write_report(*reported(so_far()), out)
        try:
            todo = [e.id for e in events if e.id not in done]
            for explanation in explain_events(llm, index, event_ids=todo, perception=perception, progress=progress):
                explanations.append(explanation)
                cite(explanation)
                if state is not None:
                    state.keep_explanations(who, explanations)
                if out is not None:
                    write_report(*reported(so_far()), out)
        except LLMError as error:
            failure = error
            who = f"{who} for {len(explanations)} of {len(events)} event(s), deterministic for the rest"
            who += " (the LLM failed)"
            say(f"explanations: the LLM failed ({error}); the deterministic explainer explains the events left")
    if index is not None:  # what the agent did not explain gets a plain explanation: a headline, its facts, verified
        explained = {e.event_id for e in explanations if e.supported}
        plain = [plain_explanation(index, e) for e in events if e.id not in explained]
        explanations = [e for e in explanations if e.supported] + plain
        for explanation in plain:
            cite(explanation)
    report, keyframes = reported(who)
    files = write_report(report, keyframes, out) if out is not None else None
    if files is not None:
        record(report, files[0], store, progress=progress)
    if failure is not None and insists:
        written = f"; the report is written: {files[1]}" if files else ""
        raise LLMError(f"{failure}{written}") from None
    return Audit(screened, explanations, report, keyframes, files)


def write_clips(source: FrameSource, result: ScreeningResult, out: str | Path, progress: bool = True) -> list[str]:
    """Each event's clip (``clips.event_clip``) beside the report, at ``report.clip_file``; the ids of the events
    that have one (none, said once, without imageio-ffmpeg)."""
    written, events = [], result.events
    screened = {ev.frame_index: ev for ev in result.frames}  # once for every event's clip
    for event in track(events, "writing event clips", len(events), enabled=progress and bool(events)):
        try:
            event_clip(source, event, screened, clip_file(out, event.id))
        except MissingExtra as error:
            say(f"event clips: not written ({error})", progress)
            break
        written.append(event.id)
    return written


def normality(scene: Scene) -> str:
    """What a scene learned from the audited video itself assumes is normal, in words for the report."""
    said = f"the video's own dominant behaviour (up to {SELF_REFERENCED_CONTAMINATION:.0%} of its objects may not be)"
    priors = [rule.sentence.rstrip(".") for rule in scene.rulebook.rules if rule.id.startswith(EVERYDAY)]
    return "; ".join([said, *priors])


def foundation_tools(progress: bool = True) -> Perception:
    """The tools the agent may call (and the verifier re-grounds with) whose weights are here, said aloud."""
    perception = Perception.available(kinds=AGENT_KINDS)
    present = ", ".join(perception.present) or "none with weights here (`anomalens models list`)"
    say(f"foundation tools: {present}", progress)
    return perception


def open_explainer(choice: str | None = None, settings: Settings | None = None) -> tuple[LLM | None, str]:
    """The LLM that explains events, or None, and a line saying who explains them.

    ``choice`` (default: ``Settings.explainer``): ``agent`` needs the configured LLM and fails if it cannot
    load; ``deterministic`` never loads one; ``auto`` uses the agent when the LLM loads, and says why not
    otherwise.
    """
    from anomalens.agents.llm import open_llm

    settings = settings or load_settings()
    choice = choice or settings.explainer
    if choice not in ("auto", "agent", "deterministic"):
        raise AnomalensError(f"explainer {choice!r}: choose auto, agent or deterministic")
    if choice == "deterministic":
        return None, "deterministic"
    try:
        llm = open_llm(settings=settings)
    except AnomalensError as error:
        if choice == "agent":
            raise
        return None, f"deterministic (no LLM: {error})"
    return llm, f"agent ({llm.backend}:{llm.model})"
