"""The tools the agent's LLM may call over one video: declared as data (``TOOLS``), described and worded in
``prompts/tools.yaml``.

Every tool validates its arguments with pydantic, and every lookup the LLM can get wrong (an unknown track, a
frame without evidence, a misspelt quantity) raises ``ToolArgumentError``, whose message goes back to the LLM
as the tool's result so it can correct itself. Anything else a tool raises is a real failure and propagates.

A tool returns a ``ToolResult``: short plain text for the LLM (every token costs time on a CPU) naming the
handles that claims cite, and the evidence it produced (live tools), which the graph keeps in its state.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anomalens.agents.claims import answer_spec
from anomalens.agents.digest import MAX_LISTED, describe_objects, event_digest
from anomalens.agents.index import EvidenceBook, VideoIndex, handle
from anomalens.agents.llm import ToolCall, ToolSpec, tool_parameters
from anomalens.agents.llm.structured import problem_summary
from anomalens.prompts import load as load_prompts
from anomalens.tools.captions import mentions
from anomalens.tools.coco import coco_class
from anomalens.facts import named
from anomalens.tools.perception import Perception
from anomalens.facts import FACTS, MEASURED
from anomalens.types import Event, Evidence

SEARCH_FRAMES = 500  # frames CLIP embeds for text search, spread over the video
QUANTITIES = tuple(name for name in MEASURED if FACTS[name].stored_in is None)  # what ``measure`` reads back


class ToolArgumentError(ValueError):
    """The LLM called a tool wrongly; the message tells it how to call it right."""


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventArgs(_Args):
    event_id: str


class TrackArgs(_Args):
    track_id: int


class MeasureArgs(_Args):
    quantity: str = Field(description=f"one of {', '.join(QUANTITIES)}")
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


class AppearsArgs(_Args):
    text: str = Field(min_length=1, max_length=60, description="a kind of object, e.g. 'a car'")


@dataclass(frozen=True)
class ToolDef:
    """A tool: its name for the LLM, its arguments, the ``Toolbox`` method that runs it (which also keys its
    description in ``prompts/tools.yaml``) and what the video and machine must offer for it to exist."""

    name: str
    args: type[BaseModel]
    method: str
    needs: frozenset[str] = frozenset()


def _tool(name: str, args: type[BaseModel], method: str | None = None, *needs: str) -> ToolDef:
    return ToolDef(name, args, method or name, frozenset(needs))


# Capabilities: chat (a conversation, not one event), captions (replayed), classes (screening named the
# objects), detector, clip, segmenter, and live_captioner (a VLM, used only when no captions are replayed).
TOOLS = (
    _tool("track", TrackArgs),
    _tool("measure", MeasureArgs),
    _tool("rule", RuleArgs),
    _tool("objects", FrameArgs),
    _tool("events", EventsArgs, None, "chat"),
    _tool("event", EventArgs, None, "chat"),
    _tool("detect", DetectArgs, None, "detector"),
    _tool("match", MatchArgs, None, "clip"),
    _tool("search", SearchArgs, None, "clip", "chat"),
    _tool("segment", SegmentArgs, None, "segmenter"),
    _tool("caption", FrameArgs, "describe", "live_captioner"),
    _tool("caption", FrameArgs, "caption", "captions"),
    _tool("find", FindArgs, None, "captions", "chat"),
    _tool("appears", AppearsArgs, None, "classes", "chat"),
)


@dataclass
class ToolResult:
    text: str
    evidence: list[Evidence] = field(default_factory=list)


class Toolbox:
    """The tools available for one video, given what it has (captions) and what the machine has (perception)."""

    def __init__(
        self,
        index: VideoIndex,
        *,
        chat: bool = False,
        perception: Perception | None = None,
        frames: Callable[[int], np.ndarray] | None = None,
        namer: Callable[[str], str | None] | None = None,
    ):
        """``namer``: free text -> the COCO class it names, for ``appears`` (default: ``coco.yaml``'s words)."""
        self.index = index
        self.namer = namer or coco_class
        self.perception = perception if frames is not None else None
        self.frames = frames
        self._frame_index = None  # CLIP embeddings of the video's frames, built on the first search
        live = self.perception or Perception()
        have = {"chat"} if chat else set()
        have |= {kind for kind in ("detector", "clip", "segmenter") if getattr(live, kind) is not None}
        if index.has_captions:
            have.add("captions")
        if any(ev.class_names and set(ev.class_names) - {None} for ev in index.evidence):
            have.add("classes")
        elif live.captioner is not None:
            have.add("live_captioner")
        self._tools = {t.name: t for t in TOOLS if t.needs <= have}
        described = load_prompts("tools")["descriptions"]
        self.specs: list[ToolSpec] = [
            ToolSpec(name=t.name, description=described[t.method], parameters=tool_parameters(t.args))
            for t in self._tools.values()
        ] + [answer_spec()]

    def call(self, call: ToolCall, book: EvidenceBook) -> ToolResult:
        """Run one tool call; raises ``ToolArgumentError`` with a message for the LLM when it is malformed."""
        tool = self._tools.get(call.name)
        if tool is None:
            raise ToolArgumentError(f"no tool {call.name!r}; tools: {', '.join(self._tools)}, answer")
        try:
            args = tool.args.model_validate(call.arguments)
        except ValidationError as error:
            raise ToolArgumentError(f"{call.name}: {problem_summary(error, 'arguments')}") from None
        return getattr(self, tool.method)(args, book)

    # --- lookups the LLM can get wrong ---------------------------------------------------------------

    def _event(self, event_id: str) -> Event:
        event = self.index.event(event_id)
        if event is None:
            known = ", ".join(e.id for e in self.index.events) or "none"
            raise ToolArgumentError(f"no event {event_id!r} (events: {known})")
        return event

    def _frame(self, frame: int) -> Evidence:
        evidence = self.index.frame_evidence(frame)
        if evidence is None:
            raise ToolArgumentError(f"no screening evidence kept for frame {frame}")
        return evidence

    @staticmethod
    def _object(evidence: Evidence, track_id: int) -> int:
        index = evidence.object_of(track_id)
        if index is None:
            ids = [] if evidence.track_ids is None else [int(t) for t in evidence.track_ids]
            raise ToolArgumentError(f"track {track_id} is not in frame {evidence.frame_index} (tracks there: {ids})")
        return index

    def _in_video(self, frame: int) -> int:
        if not 0 <= frame < self.index.frames:
            raise ToolArgumentError(f"frame {frame} is outside the video (frames 0-{self.index.frames - 1})")
        return frame

    def _when(self, frame: int) -> str:
        return _say("when", frame=frame, time_s=frame / self.index.fps)

    # --- the tools -----------------------------------------------------------------------------------

    def event(self, args: EventArgs, book: EvidenceBook) -> ToolResult:
        return ToolResult(event_digest(book, self._event(args.event_id)))

    def events(self, args: EventsArgs, book: EvidenceBook) -> ToolResult:
        to_s = float("inf") if args.to_s is None else args.to_s
        found = [e for e in self.index.events if e.end_s >= args.from_s and e.start_s <= to_s]
        if not found:
            return ToolResult(_say("no_events", from_s=args.from_s, to_s=to_s, count=len(self.index.events)))
        none = load_prompts("tools")["results"]["no_rules"]
        return ToolResult(
            "\n".join(
                _say("event", **e.model_dump(), rules=", ".join(e.rule_ids) or none) for e in found[:MAX_LISTED]
            )
        )

    def track(self, args: TrackArgs, book: EvidenceBook) -> ToolResult:
        track = self.index.track(args.track_id)
        if track is None:
            raise ToolArgumentError(f"no track {args.track_id}")
        fps, (first, last) = self.index.fps, (track.frames[0], track.frames[-1])
        (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = track.boxes[0], track.boxes[-1]
        return ToolResult(
            _say(
                "track", id=track.id, first=first, last=last, first_s=first / fps, last_s=last / fps,
                seen=len(track.frames), ax=(ax1 + ax2) / 2, ay=(ay1 + ay2) / 2, bx=(bx1 + bx2) / 2, by=(by1 + by2) / 2,
            )
        )

    def measure(self, args: MeasureArgs, book: EvidenceBook) -> ToolResult:
        if args.quantity not in QUANTITIES:
            raise ToolArgumentError(f"measure: unknown quantity {args.quantity!r}; one of {', '.join(QUANTITIES)}")
        evidence = self._frame(args.frame)
        shown = {"handle": handle(evidence), "quantity": args.quantity, "when": self._when(args.frame)}
        if FACTS[args.quantity].scope == "frame":
            m = evidence.measurement(args.quantity)
            if m is None:
                raise ToolArgumentError(f"measure: {args.quantity} was not measured at frame {args.frame}")
            return ToolResult(_say("frame_quantity", **shown, value=m.value, unit=m.unit))
        if args.track_id is None:
            raise ToolArgumentError(f"measure: {args.quantity} is a quantity of an object: give track_id")
        m = evidence.measurement(args.quantity, self._object(evidence, args.track_id))
        if m is None:
            raise ToolArgumentError(f"measure: {args.quantity} was not measured for track {args.track_id}")
        return ToolResult(_say("object_quantity", **shown, track=args.track_id, value=m.value, unit=m.unit))

    def rule(self, args: RuleArgs, book: EvidenceBook) -> ToolResult:
        if self.index.rulebook is None:
            raise ToolArgumentError("rule: this video was screened without a rulebook")
        rule = self.index.rule(args.rule_id)
        if rule is None:
            known = ", ".join(r.id for r in self.index.rulebook.rules)
            raise ToolArgumentError(f"no rule {args.rule_id!r} (rules: {known})")
        p = rule.predicate
        where = f" where {json.dumps(p.where)}" if p.where else ""
        return ToolResult(
            _say("rule", id=rule.id, sentence=rule.sentence, fact=p.fact, op=p.op, value=p.value, unit=p.unit or "",
                 where=where)  # fmt: skip
        )

    def objects(self, args: FrameArgs, book: EvidenceBook) -> ToolResult:
        evidence = self._frame(args.frame)
        head = _say("objects", handle=handle(evidence), count=len(evidence), when=self._when(args.frame))
        return ToolResult("\n".join([head, *describe_objects(evidence)]))

    def caption(self, args: FrameArgs, book: EvidenceBook) -> ToolResult:
        evidence = self.index.caption(args.frame)
        if evidence is None:
            known = self.index.captions
            covered = f"{min(known)}-{max(known)}"
            raise ToolArgumentError(f"no caption for frame {args.frame} (captions cover frames {covered})")
        return self._said(evidence)

    def _said(self, caption: Evidence) -> ToolResult:
        when = self._when(caption.frame_index)
        return ToolResult(_say("caption", handle=handle(caption), when=when, text=json.dumps(caption.text)), [caption])

    def find(self, args: FindArgs, book: EvidenceBook) -> ToolResult:
        words = [w for w in re.findall(r"[a-z0-9]+", args.text.lower()) if len(w) > 2]
        if not words:
            raise ToolArgumentError("find: give at least one word of three or more letters")
        captions = self.index.captions
        hits = sorted(k for k, text in captions.items() if all(mentions(text, w) for w in words))
        said = " ".join(words)
        if not hits:
            return ToolResult(_say("no_mention", words=said, count=len(captions)))
        fps = self.index.fps
        runs = ", ".join(
            _say("mention_run", first=a, last=b, first_s=a / fps, last_s=b / fps) for a, b in _runs(hits)[:MAX_LISTED]
        )
        return ToolResult(_say("mentions", count=len(hits), words=said, runs=runs))

    def appears(self, args: AppearsArgs, book: EvidenceBook) -> ToolResult:
        name = self.namer(args.text)
        if name is None:
            raise ToolArgumentError(f"appears: {args.text!r} names no kind of object the detector knows")
        seen = {ev.frame_index: ev for ev in self.index.evidence if ev.class_names and name in ev.class_names}
        if not seen:
            return ToolResult(_say("never_appears", name=named(name), count=self.index.frames))
        fps = self.index.fps
        runs = _runs(sorted(seen))
        listed = ", ".join(  # each run cites the evidence of its first frame
            _say("appears_run", first=a, last=b, first_s=a / fps, last_s=b / fps, handle=handle(seen[a]))
            for a, b in runs[:MAX_LISTED]
        )
        return ToolResult(_say("appears", name=named(name), count=len(seen), runs=listed))

    # --- live foundation-model tools (present when their weights are) ---------------------------------

    def _live(self, found: Evidence, frame: int, **update) -> Evidence:
        return found.model_copy(update={"time_s": frame / self.index.fps, **update})

    def detect(self, args: DetectArgs, book: EvidenceBook) -> ToolResult:
        self._in_video(args.frame)
        if not self.perception.detector.knows(args.text):
            raise ToolArgumentError(f"detect: the detector cannot look for {args.text!r}; name an everyday object")
        found = self._live(
            self.perception.detector.detect(self.frames(args.frame), [args.text], frame_index=args.frame), args.frame
        )
        shown = {"handle": handle(found), "text": json.dumps(args.text), "when": self._when(args.frame)}
        if not len(found):
            return ToolResult(_say("not_found", **shown), [found])
        boxes = "; ".join(
            _say("found_box", box=", ".join(f"{v:.0f}" for v in box), score=score)
            for box, score in list(zip(found.boxes, found.scores))[:MAX_LISTED]
        )
        return ToolResult(_say("found", **shown, count=len(found), boxes=boxes), [found])

    def match(self, args: MatchArgs, book: EvidenceBook) -> ToolResult:
        boxes = None
        self._in_video(args.frame)
        if args.track_id is not None:
            evidence = self._frame(args.frame)
            boxes = evidence.boxes[self._object(evidence, args.track_id)][None]
        scored = self.perception.clip.text_scores(self.frames(args.frame), args.texts, boxes, frame_index=args.frame)
        scored = self._live(scored, args.frame)
        what = _say("match_frame") if args.track_id is None else _say("match_track", track=args.track_id)
        similarities = ", ".join(f"{text!r} {value:.2f}" for text, value in scored.similarities(0).items())
        shown = {"handle": handle(scored), "what": what, "when": self._when(args.frame)}
        best = repr(scored.class_names[0])
        text = _say("match", **shown, best=best, score=scored.scores[0], similarities=similarities)
        return ToolResult(text, [scored])

    def segment(self, args: SegmentArgs, book: EvidenceBook) -> ToolResult:
        evidence = self._frame(args.frame)
        which = self._object(evidence, args.track_id)
        outlined = self.perception.segmenter.segment(
            self.frames(args.frame), boxes=evidence.boxes[which][None], labels=[evidence.labels[which]],
            frame_index=args.frame,
        )
        outlined = self._live(outlined, args.frame, track_ids=np.array([args.track_id]))
        area = int(outlined.masks[0].sum())
        text = _say("segment", handle=handle(outlined), track=args.track_id, when=self._when(args.frame), area=area)
        return ToolResult(text, [outlined])

    def describe(self, args: FrameArgs, book: EvidenceBook) -> ToolResult:
        self._in_video(args.frame)
        caption = self.perception.captioner.caption(self.frames(args.frame), frame_index=args.frame)
        return self._said(self._live(caption, args.frame))

    def search(self, args: SearchArgs, book: EvidenceBook) -> ToolResult:
        if self._frame_index is None:
            step = max(1, self.index.frames // SEARCH_FRAMES)
            chosen = list(range(0, self.index.frames, step))
            self._frame_index = self.perception.clip.index([self.frames(k) for k in chosen], chosen)
        hits = ", ".join(
            _say("search_hit", frame=k, time_s=k / self.index.fps, similarity=similarity)
            for k, similarity in self._frame_index.search(args.text, top_k=MAX_LISTED)
        )
        return ToolResult(_say("search", text=json.dumps(args.text), hits=hits))


def _say(key: str, **fields) -> str:
    return load_prompts("tools")["results"][key].format(**fields)


def _runs(frames: list[int], gap: int = 1) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for k in frames:
        if runs and k - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], k)
        else:
            runs.append((k, k))
    return runs

