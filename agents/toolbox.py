"""The tools the agent's LLM may call, over one video's ``VideoIndex``.

Every tool validates its arguments with pydantic; a bad argument (unknown track, frame without evidence,
misspelt quantity) raises ``ToolArgumentError``, whose message goes back to the LLM as the tool's result so
it can correct itself. Anything else a tool raises is a real failure and propagates.

Results are short plain text (the LLM reads them; every token costs time on a CPU) and name the handles
(``F<k>``, ``C<k>``, and ``D<k>``/``M<k>``/``S<k>`` from the live foundation-model tools) that claims cite.
Text from captions is quoted as data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from anomalens.agents.index import HANDLE_PATTERN, VideoIndex
from anomalens.agents.llm import ToolCall, ToolSpec, tool_parameters
from anomalens.agents.llm.structured import problem_summary
from anomalens.agents.perception import Perception
from anomalens.types import Evidence, Relation

FRAME_QUANTITIES = ("count", "occupancy", "flow_novelty", "reconstruction")
OBJECT_QUANTITIES = ("speed", "area", "dwell", "aspect")
ANSWER_TOOL = "answer"
MAX_CLAIMS = 3  # per answer: each costs about 3 s of generation on 2 cores (the budget is 20 s an event)
MAX_LISTED = 8  # longest list a tool returns (events, objects, frames): the LLM's context is small
MAX_BREACHES = 2  # rule breaches an event's digest details
SEARCH_FRAMES = 500  # frames CLIP embeds for text search, spread over the video


class ToolArgumentError(ValueError):
    """The LLM called a tool wrongly; the message tells it how to call it right."""


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventArgs(_Args):
    event_id: str


class TrackArgs(_Args):
    track_id: int


class MeasureArgs(_Args):
    quantity: str = Field(description=f"one of {', '.join(OBJECT_QUANTITIES + FRAME_QUANTITIES)}")
    frame: int
    track_id: int | None = Field(default=None, description="the object's track (object quantities only)")


class RuleArgs(_Args):
    rule_id: str


class FrameArgs(_Args):
    frame: int


class EventsArgs(_Args):
    from_s: float = 0.0
    to_s: float | None = None


class DetectArgs(_Args):
    frame: int
    text: str = Field(min_length=1, max_length=60, description="what to look for, e.g. 'bicycle'")


class MatchArgs(_Args):
    frame: int
    texts: list[Annotated[str, Field(min_length=1, max_length=60)]] = Field(min_length=1, max_length=4)
    track_id: int | None = Field(default=None, description="match the object's crop instead of the whole frame")


class SegmentArgs(_Args):
    frame: int
    track_id: int


class SearchArgs(_Args):
    text: str = Field(min_length=1, max_length=80, description="what the frames should show, e.g. 'a truck'")


class FindArgs(_Args):
    text: str = Field(min_length=1, description="words to look for in the frames' captions")


Cite = Annotated[list[Annotated[str, Field(pattern=HANDLE_PATTERN)]], Field(min_length=1, max_length=4)]


class _Draft(BaseModel):
    # Subclasses declare ``kind`` then ``cite`` first: a grammar writes the fields in that order, as the prompt's
    # example does. Optional fields default to None without admitting null, which keeps the schema short.
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _nulls_mean_absent(cls, data: Any) -> Any:
        # Models without a grammar sometimes write null for fields they leave out.
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class RuleDraft(_Draft):
    kind: Literal["rule"]
    cite: Cite
    rule: str
    track: int = None


class MeasurementDraft(_Draft):
    kind: Literal["measurement"]
    cite: Cite
    quantity: str
    value: float
    unit: str = None
    track: int = None


class CountDraft(_Draft):
    kind: Literal["count"]
    cite: Cite
    value: float


class ObjectDraft(_Draft):
    kind: Literal["object", "attribute"]
    cite: Cite
    term: str
    track: int = None


class SpatialDraft(_Draft):
    # Where an object is (term, e.g. "zone r2c1") or how it lies beside another (relation, other_track).
    kind: Literal["spatial"]
    cite: Cite
    track: int
    term: str = None
    relation: Relation = None
    other_track: int = None


class TemporalDraft(_Draft):
    kind: Literal["temporal"]
    cite: Cite
    frames: list[int] = Field(min_length=2, max_length=2)


class OtherDraft(_Draft):
    kind: Literal["other"]
    cite: Cite
    term: str = None


# One schema per kind with the fields it needs required: a grammar-constrained model cannot leave them out.
DraftClaim = Annotated[
    RuleDraft | MeasurementDraft | CountDraft | ObjectDraft | SpatialDraft | TemporalDraft | OtherDraft,
    Field(discriminator="kind"),
]


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    claims: list[DraftClaim] = Field(max_length=MAX_CLAIMS)


@dataclass
class _Tool:
    spec: ToolSpec
    args: type[BaseModel]
    run: Callable[[Any], str]


def _spec(name: str, description: str, args: type[BaseModel]) -> ToolSpec:
    return ToolSpec(name=name, description=description, parameters=tool_parameters(args))


def answer_spec() -> ToolSpec:
    return _spec(
        ANSWER_TOOL,
        "Give your answer as claims; each cites the handles (F<frame>, C<frame>, D/M/S<frame>) it rests on.",
        Answer,
    )


class Toolbox:
    """The tools available for one video (caption tools only when it has captions)."""

    def __init__(
        self,
        index: VideoIndex,
        *,
        chat: bool = False,
        perception: Perception | None = None,
        frames: Callable[[int], np.ndarray] | None = None,
    ):
        self.index = index
        self.perception = perception if frames is not None else None
        self.frames = frames
        self._frame_index = None  # CLIP embeddings of the video's frames, built on the first search
        tools = [
            _Tool(
                _spec("track", "An object's track: frames, times, path and speed.", TrackArgs), TrackArgs, self.track
            ),
            _Tool(
                _spec("measure", "Measure a quantity of an object (track_id) or of the frame.", MeasureArgs),
                MeasureArgs,
                self.measure,
            ),
            _Tool(_spec("rule", "A rule of the scene: its sentence and its limit.", RuleArgs), RuleArgs, self.rule),
            _Tool(_spec("objects", "The objects seen in a frame.", FrameArgs), FrameArgs, self.objects),
        ]
        if chat:
            tools += [
                _Tool(_spec("events", "Anomalous events between two times (s).", EventsArgs), EventsArgs, self.events),
                _Tool(_spec("event", "Facts of one event.", EventArgs), EventArgs, self.event),
            ]
        live = self.perception or Perception()
        if live.detector is not None:
            tools.append(
                _Tool(
                    _spec("detect", "Look for something in a frame (a detector).", DetectArgs), DetectArgs, self.detect
                )
            )
        if live.clip is not None:
            tools.append(
                _Tool(
                    _spec("match", "Which texts fit a frame or an object best (CLIP).", MatchArgs),
                    MatchArgs,
                    self.match,
                )
            )
            if chat:
                tools.append(
                    _Tool(_spec("search", "Frames that look like a text (CLIP).", SearchArgs), SearchArgs, self.search)
                )
        if live.segmenter is not None:
            tools.append(
                _Tool(
                    _spec("segment", "An object's exact outline and area in pixels.", SegmentArgs),
                    SegmentArgs,
                    self.segment,
                )
            )
        if index.captions is None and live.captioner is not None:
            tools.append(
                _Tool(
                    _spec("caption", "Describe a frame (a vision-language model).", FrameArgs), FrameArgs, self.describe
                )
            )
        if index.captions is not None:
            tools.append(
                _Tool(
                    _spec("caption", "What a captioning model said about a frame.", FrameArgs), FrameArgs, self.caption
                )
            )
            if chat:
                tools.append(
                    _Tool(
                        _spec("find", "Frames whose captions mention all these words.", FindArgs), FindArgs, self.find
                    )
                )
        self._tools = {t.spec.name: t for t in tools}

    @property
    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self._tools.values()] + [answer_spec()]

    def call(self, call: ToolCall) -> str:
        """Run one tool call; raises ``ToolArgumentError`` with a message for the LLM when it is malformed."""
        tool = self._tools.get(call.name)
        if tool is None:
            raise ToolArgumentError(f"no tool {call.name!r}; tools: {', '.join(self._tools)}, {ANSWER_TOOL}")
        try:
            args = tool.args.model_validate(call.arguments)
        except ValidationError as error:
            raise ToolArgumentError(f"{call.name}: {problem_summary(error, 'arguments')}") from None
        try:
            return tool.run(args)
        except KeyError as error:  # a lookup the LLM got wrong: tell it what exists
            raise ToolArgumentError(f"{call.name}: {error.args[0]}") from None

    # --- descriptions shared by tools and the event digest -----------------------------------------

    def _when(self, frame: int | None) -> str:
        return f"frame {frame} ({frame / self.index.fps:.1f} s)" if frame is not None else "the video"

    def describe_objects(self, evidence: Evidence, which: list[int] | None = None) -> list[str]:
        """One line per object (all, or the indices ``which``): track, label, measured facts, broken rules."""
        lines = []
        chosen = list(range(len(evidence))) if which is None else which
        for i in chosen[:MAX_LISTED]:
            label, track = evidence.labels[i], evidence.track_of(i)
            facts = ", ".join(
                f"{name} {m.value:.3g} {m.unit}"
                for name in OBJECT_QUANTITIES
                if (m := evidence.measurement(name, i)) is not None
            )
            broken = [f"{rule} {sev:.1f}x" for rule, sev, index in evidence.broken_rules() if index == i]
            lines.append(f"track {track}: {label}; {facts}" + (f"; breaks {', '.join(broken)}" if broken else ""))
        if len(chosen) > MAX_LISTED:
            lines.append(f"... and {len(chosen) - MAX_LISTED} more objects")
        return lines

    def digest(self, event_id: str) -> str:
        """What an event is, in a few lines: times, its worst rule breaches (who, where, how much), the
        objects at its peak that broke rules, and the handles to cite. Short: every token costs time."""
        index = self.index
        event = index.event(event_id)
        lines = [
            f"Event {event.id}: frames {event.start_frame}-{event.end_frame} ({event.start_s:.1f}-{event.end_s:.1f} s),"
            f" peak F{event.peak_frame}."
        ]
        cited = [ev for ev_id in event.evidence_ids if (ev := index.get(ev_id)) is not None]
        worst: dict[str, tuple[float, Evidence, int | None]] = {}
        for evidence in cited:
            for rule_id, severity, i in evidence.broken_rules():
                if rule_id not in worst or severity > worst[rule_id][0]:
                    worst[rule_id] = (severity, evidence, i)
        ranked = sorted(worst.items(), key=lambda item: -item[1][0])
        facts: list[tuple[dict[str, Any], str]] = []  # candidate claims, with what they mean
        for rule_id, (severity, evidence, i) in ranked[:MAX_BREACHES]:
            facts += self._breach_facts(rule_id, severity, evidence, i)
        if (said := index.caption_reasons.get(event.id)) is not None:
            claim = {"kind": "object", "cite": [f"C{said.first_frame}"], "term": said.phrase}
            facts.append((claim, f"the captions break caption rule {said.rule_id}: {said.sentence}"))
        try:
            facts += self._peak_facts(index.frame_evidence(event.peak_frame))
        except KeyError:  # the peak frame's evidence was not kept
            pass
        if len(cited) > 1:
            span = {"frames": [event.start_frame, event.end_frame]}
            facts.append(({"kind": "temporal", "cite": [index.handle(cited[0]), index.handle(cited[-1])]} | span, ""))
        seen: set[str] = set()
        lines.append("Facts that may explain it; answer with the 2 or 3 that explain it best, copied exactly:")
        for claim, meaning in facts:
            text = json.dumps(claim, separators=(",", ":"))
            if text not in seen:
                seen.add(text)
                lines.append(f"  {text}" + (f"  ({meaning})" if meaning else ""))
        if index.captions is not None:
            lines.append(f"A caption of each frame can be read with the tool caption (e.g. frame {event.peak_frame}).")
        return "\n".join(lines)

    def _breach_facts(
        self, rule_id: str, severity: float, evidence: Evidence, i: int | None
    ) -> list[tuple[dict[str, Any], str]]:
        """A broken rule as claims: the rule, and for an object the measured value or zone the rule is about."""
        handle = self.index.handle(evidence)
        sentence = self._rule_sentence(rule_id).rstrip(".")
        if i is None:
            return [({"kind": "rule", "cite": [handle], "rule": rule_id}, f"{severity:.1f}x the limit of: {sentence}")]
        track = evidence.track_of(i)
        facts = [
            (
                {"kind": "rule", "cite": [handle], "rule": rule_id, "track": track},
                f"{severity:.1f}x the limit of: {sentence}",
            )
        ]
        rule = self.index.rule(rule_id)
        fact = rule.predicate.fact if rule is not None else ""
        if fact in OBJECT_QUANTITIES and (m := evidence.measurement(fact, i)) is not None:
            value = {"quantity": fact, "value": round(m.value, 2), "unit": m.unit, "track": track}
            facts.append(({"kind": "measurement", "cite": [handle]} | value, ""))
        if fact in ("zone", "direction"):
            heading, zone = label_parts(evidence.labels[i])
            term = zone if fact == "zone" else heading
            facts.append(
                (
                    {
                        "kind": "spatial" if fact == "zone" else "attribute",
                        "cite": [handle],
                        "term": term,
                        "track": track,
                    },
                    "",
                )
            )
        return facts

    def _peak_facts(self, peak: Evidence) -> list[tuple[dict[str, Any], str]]:
        """The peak frame as claims: unusual motion, and its most anomalous object (rules broken or not)."""
        handle = self.index.handle(peak)
        facts = []
        novelty = peak.measurement("flow_novelty")
        if novelty is not None and novelty.value > 1.0:
            value = {"quantity": "flow_novelty", "value": round(novelty.value, 2), "unit": novelty.unit}
            facts.append(({"kind": "measurement", "cite": [handle]} | value, "of the fastest motion normal there"))
        if len(peak):
            i = int(np.argmax(peak.scores))
            track, speed = peak.track_of(i), peak.measurement("speed", i)
            value = {"quantity": "speed", "value": round(speed.value, 2), "unit": speed.unit, "track": track}
            facts.append(({"kind": "measurement", "cite": [handle]} | value, ""))
            heading, _ = label_parts(peak.labels[i])
            facts.append(({"kind": "attribute", "cite": [handle], "term": heading, "track": track}, ""))
        return facts

    def _rule_sentence(self, rule_id: str) -> str:
        rule = self.index.rule(rule_id)
        return rule.sentence if rule is not None else "(not in the rulebook)"

    def overview(self) -> str:
        """The video in a few lines: length and its events, for a chat question's context."""
        index = self.index
        head = f"Video {index.video}: {index.frames} frames at {index.fps:g} fps ({index.frames / index.fps:.1f} s)."
        if not index.events:
            return head + " No anomalous events."
        first = index.events[:MAX_LISTED]
        lines = [head + f" {len(index.events)} anomalous events:"]
        lines += [
            f"  {e.id}: frames {e.start_frame}-{e.end_frame} ({e.start_s:.1f}-{e.end_s:.1f} s), peak F{e.peak_frame},"
            f" rules {', '.join(e.rule_ids[:3]) or 'none (motion)'}"
            for e in first
        ]
        return "\n".join(lines)

    # --- the tools ---------------------------------------------------------------------------------

    def event(self, args: EventArgs) -> str:
        return self.digest(args.event_id)

    def events(self, args: EventsArgs) -> str:
        to_s = float("inf") if args.to_s is None else args.to_s
        found = [e for e in self.index.events if e.end_s >= args.from_s and e.start_s <= to_s]
        if not found:
            return f"no events between {args.from_s:.1f} s and {to_s:.1f} s ({len(self.index.events)} in the video)"
        return "\n".join(
            f"{e.id}: {e.start_s:.1f}-{e.end_s:.1f} s, frames {e.start_frame}-{e.end_frame}, peak F{e.peak_frame},"
            f" rules {', '.join(e.rule_ids) or 'none (motion)'}, tracks {e.track_ids}"
            for e in found[:MAX_LISTED]
        )

    def track(self, args: TrackArgs) -> str:
        track = self.index.track(args.track_id)
        fps = self.index.fps
        first, last = track.frames[0], track.frames[-1]
        (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = track.boxes[0], track.boxes[-1]
        return (
            f"track {track.id}: frames {first}-{last} ({first / fps:.1f}-{last / fps:.1f} s), {len(track.frames)} seen;"
            f" centre moved from ({(ax1 + ax2) / 2:.0f}, {(ay1 + ay2) / 2:.0f}) to ({(bx1 + bx2) / 2:.0f},"
            f" {(by1 + by2) / 2:.0f}) px. Measure its speed at a frame with measure."
        )

    def measure(self, args: MeasureArgs) -> str:
        known = OBJECT_QUANTITIES + FRAME_QUANTITIES
        if args.quantity not in known:
            raise ToolArgumentError(f"measure: unknown quantity {args.quantity!r}; one of {', '.join(known)}")
        evidence = self.index.frame_evidence(args.frame)
        handle = self.index.handle(evidence)
        if args.quantity in FRAME_QUANTITIES:
            m = evidence.measurement(args.quantity)
            if m is None:
                raise ToolArgumentError(f"measure: {args.quantity} was not measured at frame {args.frame}")
            return f"[{handle}] {args.quantity} at {self._when(args.frame)}: {m.value:.3g} {m.unit}"
        if args.track_id is None:
            raise ToolArgumentError(f"measure: {args.quantity} is a quantity of an object: give track_id")
        index = self._object_index(evidence, args.track_id)
        m = evidence.measurement(args.quantity, index)
        return f"[{handle}] track {args.track_id} {args.quantity} at {self._when(args.frame)}: {m.value:.3g} {m.unit}"

    @staticmethod
    def _object_index(evidence: Evidence, track_id: int) -> int:
        index = evidence.object_of(track_id)
        if index is None:
            ids = [] if evidence.track_ids is None else [int(t) for t in evidence.track_ids]
            raise ToolArgumentError(f"track {track_id} is not in frame {evidence.frame_index} (tracks there: {ids})")
        return index

    def rule(self, args: RuleArgs) -> str:
        if self.index.rulebook is None:
            raise ToolArgumentError("rule: this video was screened without a rulebook")
        rule = self.index.rulebook.get(args.rule_id)
        p = rule.predicate
        where = f" where {json.dumps(p.where)}" if p.where else ""
        return f"{rule.id}: {rule.sentence} (normal: {p.fact} {p.op} {p.value} {p.unit or ''}{where})"

    def objects(self, args: FrameArgs) -> str:
        evidence = self.index.frame_evidence(args.frame)
        lines = self.describe_objects(evidence)
        return f"[{self.index.handle(evidence)}] {len(evidence)} objects at {self._when(args.frame)}" + "".join(
            "\n" + line for line in lines
        )

    def caption(self, args: FrameArgs) -> str:
        evidence = self.index.caption(args.frame)
        return (
            f"[{self.index.handle(evidence)}] caption of {self._when(args.frame)} (data): {json.dumps(evidence.text)}"
        )

    def find(self, args: FindArgs) -> str:
        words = [w for w in re.findall(r"[a-z0-9]+", args.text.lower()) if len(w) > 2]
        if not words:
            raise ToolArgumentError("find: give at least one word of three or more letters")
        captions = self.index.captions.captions
        hits = sorted(k for k, text in captions.items() if all(mentions(text, w) for w in words))
        if not hits:
            return f"no caption mentions {' '.join(words)} ({len(captions)} captions searched)"
        runs = _runs(hits)
        shown = ", ".join(
            f"frames {a}-{b} ({a / self.index.fps:.1f}-{b / self.index.fps:.1f} s) [C{a}]" for a, b in runs[:MAX_LISTED]
        )
        return f"{len(hits)} frames mention {' '.join(words)}: {shown}"

    # --- live foundation-model tools (present when their weights are) ---------------------------------

    def _track_box(self, frame: int, track_id: int) -> np.ndarray:
        evidence = self.index.frame_evidence(frame)
        return evidence.boxes[self._object_index(evidence, track_id)]

    def detect(self, args: DetectArgs) -> str:
        found = self.perception.detector.detect(self.frames(args.frame), [args.text], frame_index=args.frame)
        found = found.model_copy(update={"time_s": args.frame / self.index.fps})
        handle = self.index.add_live(found)
        if not len(found):
            return f"[{handle}] no {json.dumps(args.text)} found at {self._when(args.frame)}"
        boxes = "; ".join(
            f"box ({', '.join(f'{v:.0f}' for v in box)}) score {score:.2f}"
            for box, score in list(zip(found.boxes, found.scores))[:MAX_LISTED]
        )
        return f"[{handle}] {len(found)} {json.dumps(args.text)} at {self._when(args.frame)}: {boxes}"

    def match(self, args: MatchArgs) -> str:
        boxes = None if args.track_id is None else self._track_box(args.frame, args.track_id)[None]
        scored = self.perception.clip.text_scores(self.frames(args.frame), args.texts, boxes, frame_index=args.frame)
        scored = scored.model_copy(update={"time_s": args.frame / self.index.fps})
        handle = self.index.add_live(scored)
        what = f"track {args.track_id}" if args.track_id is not None else "the frame"
        similarities = ", ".join(f"{m.name.split(':', 1)[1]!r} {m.value:.2f}" for m in scored.measurements)
        return (
            f"[{handle}] {what} at {self._when(args.frame)} fits {scored.labels[0]!r} best "
            f"({scored.scores[0]:.2f}); cosine: {similarities}"
        )

    def segment(self, args: SegmentArgs) -> str:
        evidence = self.index.frame_evidence(args.frame)
        which = self._object_index(evidence, args.track_id)
        box, label = evidence.boxes[which], evidence.labels[which]
        outlined = self.perception.segmenter.segment(
            self.frames(args.frame), boxes=box[None], labels=[label], frame_index=args.frame
        )
        outlined = outlined.model_copy(
            update={
                "time_s": args.frame / self.index.fps,
                "track_ids": np.array([args.track_id]),
            }
        )
        handle = self.index.add_live(outlined)
        area = int(outlined.masks[0].sum())
        return f"[{handle}] track {args.track_id} at {self._when(args.frame)}: outline of {area} px inside its box"

    def describe(self, args: FrameArgs) -> str:
        caption = self.perception.captioner.caption(self.frames(args.frame), frame_index=args.frame)
        caption = caption.model_copy(update={"time_s": args.frame / self.index.fps})
        handle = self.index.add_live(caption)
        return f"[{handle}] caption of {self._when(args.frame)} (data): {json.dumps(caption.text)}"

    def search(self, args: SearchArgs) -> str:
        if self._frame_index is None:
            step = max(1, self.index.frames // SEARCH_FRAMES)
            chosen = list(range(0, self.index.frames, step))
            self._frame_index = self.perception.clip.index([self.frames(k) for k in chosen], chosen)
        hits = self._frame_index.search(args.text, top_k=MAX_LISTED)
        return f"frames that look most like {json.dumps(args.text)} (CLIP cosine): " + ", ".join(
            f"frame {k} ({k / self.index.fps:.1f} s) {similarity:.2f}" for k, similarity in hits
        )


def label_parts(label: str) -> tuple[str, str]:
    """``("moving E", "zone r2c1")`` from a motion label such as ``"object moving E in zone r2c1"``."""
    what, _, zone = label.partition(" in zone ")
    return what.split(" ", 1)[-1], f"zone {zone}" if zone else ""


def mentions(text: str, term: str) -> bool:
    """True when every word of ``term`` occurs in ``text`` as a word (singular or plural)."""
    words = set(re.findall(r"[a-z0-9]+", text.lower()))
    words |= {w[:-1] for w in words if w.endswith("s")} | {w[:-2] for w in words if w.endswith("es")}
    wanted = re.findall(r"[a-z0-9]+", term.lower())
    return bool(wanted) and all(w in words or w.rstrip("s") in words for w in wanted)


def _runs(frames: list[int], gap: int = 1) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for k in frames:
        if runs and k - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], k)
        else:
            runs.append((k, k))
    return runs
