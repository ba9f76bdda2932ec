"""Auditing footage against a scene, assembled: screening (scene scorer, cues, the deterministic explainer),
the agent on each event, and the report. Also the video's index for the agent, and who explains events.

``audit`` serves the CLI's ``audit`` and ``explain VIDEO``, the demo and every eval runner that audits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
from anomalens.pipelines.audit_state import AuditState
from anomalens.pipelines.describe import Describer
from anomalens.pipelines.fingerprint import fingerprint
from anomalens.pipelines.history import record
from anomalens.progress import say, track
from anomalens.report import SEPARATOR_PX, GroundTruth, Report, clip_file, compact_map, write_report
from anomalens.store import EventStore
from anomalens.tools.captions import ReplayedCaptions
from anomalens.tools.perception import AGENT_KINDS, Perception, object_tools
from anomalens.tools.protocols import Cue
from anomalens.tools.rule_induction import SELF_REFERENCED_CONTAMINATION
from anomalens.tools.scene import Scene, SceneScorer
from anomalens.tools.screening import ScreeningResult, screen
from anomalens.types import Event, Evidence, Explanation, Rulebook
from anomalens.video import Frame, FrameReader, FrameSource


@dataclass(frozen=True)
class Audit:
    """An audited video: what screening found, the agent's explanations, and the report (with its pictures)."""

    screening: ScreeningResult
    explanations: list[Explanation]
    report: Report
    keyframes: dict[str, np.ndarray]
    files: tuple[Path, Path] | None = None  # report.json and report.html, when written

    @property
    def events(self) -> list[Event]:
        return self.screening.events


def screen_video(
    source: FrameSource,
    scene: Scene,
    *,
    cues: Sequence[Cue] = (),
    self_referenced: bool = False,
    observe: Callable[[Frame, Evidence], None] | None = None,
    tools: Perception | None = None,
    progress: bool = True,
) -> ScreeningResult:
    """Screen ``source`` (opened with ``scene.open``) against ``scene``: every frame scored by the scene's motion,
    objects and rules, ``cues`` fused, events described by the deterministic explainer. ``tools``: the scene's
    object tools when already loaded (default: loaded here, when the scene names its objects)."""
    if scene.objects and tools is None:
        tools = object_tools(scene.objects)
    priors = {rule.id for rule in scene.rulebook.rules if rule.origin == "everyday"}
    screening = screen(
        source, SceneScorer(scene, source.fps, tools), self_referenced=self_referenced, priors=priors, cues=cues,
        describe=Describer(scene.rulebook), observe=observe, progress=progress,
    )  # fmt: skip
    if moves := screening.view_moves:
        say(f"{source.name}: {_moved(moves)}", progress)
    return screening


def _moved(moves: list[float]) -> str:
    at = ", ".join(f"{t:.1f} s" for t in moves[:5]) + (", ..." if len(moves) > 5 else "")
    return f"the view moved or the shot changed {len(moves)} time(s) (at {at}): nothing is followed while it does"


def keyframe_picture(frame: Frame, evidence: Evidence) -> np.ndarray:
    """An event's keyframe as reports show it: the frame beside the same frame with boxes, masks and heat map."""
    white = np.full((frame.image.shape[0], SEPARATOR_PX, 3), 255, dtype=np.uint8)
    return np.hstack([frame.image, white, overlay(frame.image, evidence, frame.scale)])


def build_report(
    screening: ScreeningResult,
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
    keyframes = {event_id: keyframe_picture(*shown) for event_id, shown in screening.keyframes.items()}
    evidence = screening.evidence | (cited or {})
    report = Report(
        title=title,
        input=screening.source_name,
        fps=screening.fps,
        fps_note=fps_note,
        source_size=screening.source_size,
        scorer=scorer,
        explainer=explainer,
        explanations=list(explanations),
        threshold=screening.threshold,
        frame_indices=screening.frame_indices.tolist(),
        scores=[round(float(s), 4) for s in screening.scores],
        events=screening.events,
        evidence=[compact_map(ev) for ev in evidence.values()],
        tracks=[t for t in screening.tracks if any(t.id in e.track_ids for e in screening.events)],
        rulebook=scene.rulebook,
        scene=str(scene.folder.resolve()) if scene.folder is not None else None,
        zone_grid=(scene.model.geometry.rows, scene.model.geometry.cols),
        ground_truth=ground_truth,
        metrics=metrics or {},
        seconds=screening.seconds,
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
    scene = scene if isinstance(scene, Scene) else Scene.load(scene)
    inputs = _open_inputs(video, scene, fps, captions, caption_rules)
    key = fingerprint(inputs.source, scene, captions=captions, caption_rules=caption_rules)
    state = _kept_work(out, key)
    llm, who, insists = _explainer(llm, explainer, progress)
    if llm is not None and perception is None:
        perception = foundation_tools(progress)
    screening = _screening(inputs, scene, state, llm, fresh=fresh, self_referenced=self_referenced, progress=progress)
    draft = _Draft(
        screening, scene, captions, title=title or f"anomalens audit: {inputs.source.name}",
        scorer=_scorer_said(scene, inputs, screening, self_referenced), fps_note=inputs.source.fps_note,
        clips=write_clips(inputs.source, screening, out, progress) if out is not None else [],
        ground_truth=ground_truth, metrics=metrics(screening) if metrics else None, fingerprint=key,
        recorded=inputs.source.recorded(),
    )  # fmt: skip
    failure, who = _agent_explains(draft, llm, who, perception, inputs.source, state, out, progress)
    draft.explain_the_rest()
    report, keyframes = draft.report(who)
    files = write_report(report, keyframes, out) if out is not None else None
    if files is not None:
        record(report, files[0], store, progress=progress)
    if failure is not None and insists:
        written = f"; the report is written: {files[1]}" if files else ""
        raise LLMError(f"{failure}{written}") from None
    return Audit(screening, draft.explanations, report, keyframes, files)


@dataclass(frozen=True)
class _Inputs:
    """What an audit reads besides the scene, opened and checked before anything slow starts."""

    source: FrameSource
    captions: str | Path | None
    replayed: ReplayedCaptions | None
    caption_rules: str | Path | None
    caption_rulebook: Rulebook | None


def _open_inputs(video, scene: Scene, fps, captions, caption_rules) -> _Inputs:
    """The video (a path, or a ``FrameSource``), captions and caption rules, read now: bad input fails fast."""
    if caption_rules is not None and captions is None:
        raise AnomalensError("caption rules screen the video's captions: give them with --captions FILE")
    source = video if isinstance(video, FrameSource) else scene.open(video, fps=fps)
    if source.fps_note:
        say(f"{source.name}: {source.fps_note}")
    replayed = ReplayedCaptions.load(captions, source.fps) if captions is not None else None
    if replayed is not None and (problem := replayed.mismatch(source.declared_frames)):
        say(f"warning: {problem}")
    rulebook = None
    if caption_rules is not None:
        from anomalens.pipelines.captions import caption_rulebook

        rulebook = caption_rulebook(caption_rules)
    return _Inputs(source, captions, replayed, caption_rules, rulebook)


def _kept_work(out: str | Path | None, key: str) -> AuditState | None:
    """Where the audit with fingerprint ``key`` keeps its work as it finishes (``audit_state``), when it writes to
    ``out``."""
    if out is None:
        return None
    writable_folder(out)
    return AuditState(Path(out), key)


def _explainer(llm: LLM | None, explainer: str | None, progress: bool) -> tuple[LLM | None, str, bool]:
    """The LLM that explains the events (None: the deterministic explainer), who that is in words, and whether
    an LLM failure is an error: the agent was asked for by name, or by giving the LLM without a choice."""
    insists = (explainer or ("agent" if llm is not None else load_settings().explainer)) == "agent"
    if llm is None:
        llm, who = open_explainer(explainer)
    else:
        who = f"agent ({llm.backend}:{llm.model})"
    say(f"explanations: {who}", progress)
    return llm, who, insists


def _screening(
    inputs: _Inputs, scene: Scene, state: AuditState | None, llm: LLM | None, *, fresh: bool,
    self_referenced: bool, progress: bool,
) -> ScreeningResult:
    """The screening an earlier run of this audit kept (unless ``fresh``), else a new one, kept at once."""
    kept = state.screening() if state is not None and not fresh else None
    if kept is not None:
        say(f"{state.out}: reusing the screening of an earlier run of this audit (--fresh screens again)", progress)
        return kept
    cues = []
    if inputs.caption_rulebook is not None:
        from anomalens.pipelines.captions import open_caption_cue

        cues.append(open_caption_cue(inputs.replayed, inputs.caption_rulebook, llm, progress=progress))
    screening = screen_video(inputs.source, scene, cues=cues, self_referenced=self_referenced, progress=progress)
    if state is not None:
        state.keep_screening(screening)
    return screening


def _scorer_said(scene: Scene, inputs: _Inputs, screening: ScreeningResult, self_referenced: bool) -> str:
    """What screened the video, in words for the report."""
    said = scorer_of(scene) + " (trained on " + ", ".join(scene.sources) + ")"
    said += f" + caption rules on {inputs.replayed.origin}" if inputs.caption_rulebook is not None else ""
    if self_referenced:
        said += "; normality assumed: " + normality(scene)
    if moves := screening.view_moves:
        said += "; " + _moved(moves)
    return said


def scorer_of(scene: Scene) -> str:
    """What screens footage against ``scene``, in words."""
    return "scene rules + motion" + (" + objects" if scene.objects else "")


@dataclass
class _Draft:
    """An audit's report as its explanations come in: the explanations so far and the evidence they cite."""

    screening: ScreeningResult
    scene: Scene
    captions: str | Path | None  # the agent reads them
    title: str
    scorer: str
    fps_note: str | None
    clips: list[str]
    ground_truth: GroundTruth | None
    metrics: dict[str, float] | None
    fingerprint: str
    recorded: str | None
    explanations: list[Explanation] = field(default_factory=list)
    cited: dict[str, Evidence] = field(default_factory=dict)  # evidence they cite beyond screening's

    @cached_property
    def index(self) -> VideoIndex:
        return VideoIndex.from_screening(self.screening, self.scene.rulebook, captions=self.captions)

    def add(self, explanation: Explanation) -> None:
        """An explanation, and what it cites, into the report."""
        self.explanations.append(explanation)
        extra = {ev.id: ev for ev in explanation.evidence}
        for claim in explanation.claims:
            for evidence_id in claim.evidence_ids:
                if (found := extra.get(evidence_id) or self.index.get(evidence_id)) is not None:
                    self.cited[evidence_id] = found

    def explain_the_rest(self) -> None:
        """Each event the agent did not explain, or verified nothing of, gets a plain explanation: a headline and
        its facts, verified."""
        supported = [e for e in self.explanations if e.supported]
        explained = {e.event_id for e in supported}
        self.explanations = supported
        for event in self.screening.events:
            if event.id not in explained:
                self.add(plain_explanation(self.index, event))

    def report(self, explainer: str) -> tuple[Report, dict[str, np.ndarray]]:
        report, keyframes = build_report(
            self.screening, self.scene, title=self.title, scorer=self.scorer, explainer=explainer,
            explanations=self.explanations, cited=self.cited, ground_truth=self.ground_truth, metrics=self.metrics,
            fps_note=self.fps_note,
        )  # fmt: skip
        said = {"clips": self.clips, "fingerprint": self.fingerprint, "recorded": self.recorded}
        return report.model_copy(update=said), keyframes


def _agent_explains(
    draft: _Draft, llm: LLM | None, who: str, perception: Perception | None, source: FrameSource,
    state: AuditState | None, out: str | Path | None, progress: bool,
) -> tuple[LLMError | None, str]:
    """The agent explains the events an earlier run did not (the report rewritten after each one), its live tools
    looking at ``source``'s frames: the LLM's failure, if it failed, and who explained the events, in words."""
    events = draft.screening.events
    if llm is None or not events:
        return None, who
    if state is not None:
        for explanation in state.explanations(who):
            if draft.index.event(explanation.event_id) is not None:
                draft.add(explanation)
        if draft.explanations:
            say(f"{len(draft.explanations)} of {len(events)} event(s) explained by an earlier run: kept", progress)
    done = {e.event_id for e in draft.explanations}

    def so_far() -> str:
        return f"{who} for {len(draft.explanations)} of {len(events)} event(s) so far, deterministic for the rest"

    if out is not None:  # screening is kept whatever happens to the explanations (a failure, a kill)
        write_report(*draft.report(so_far()), out)
    todo = [e.id for e in events if e.id not in done]
    frames = FrameReader(source)
    try:
        for explanation in explain_events(
            llm, draft.index, event_ids=todo, perception=perception, frames=frames, progress=progress
        ):
            draft.add(explanation)
            if state is not None:
                state.keep_explanations(who, draft.explanations)
            if out is not None:
                write_report(*draft.report(so_far()), out)
    except LLMError as error:
        said = f"{who} for {len(draft.explanations)} of {len(events)} event(s), deterministic for the rest"
        say(f"explanations: the LLM failed ({error}); the deterministic explainer explains the events left")
        return error, said + " (the LLM failed)"
    return None, who


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
    priors = [rule.sentence.rstrip(".") for rule in scene.rulebook.rules if rule.origin == "everyday"]
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
