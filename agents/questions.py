"""Question tools: a chat question becomes a typed ``Query``, and each kind of query is answered from the video's
index with claims the verifier checks, so a question gets an answer, not raw facts to word.

A router settles the questions whose words say what they ask ("how many people at 0:30?", "and after that?")
without the LLM; the LLM chooses the query of the others with constrained output (``Query`` is its schema).
The answer's prose is rendered from verified claims (``claims.render``), as explanations are: the small LLM is
asked only for what it does reliably (picking a tool and its arguments), and no unverified word is said.

Kinds: ``between`` (what happened from one time to another), ``count`` (objects, of a class, at a time),
``appears`` (when a class, an activity or a caption phrase was seen), ``why`` (an event's facts), ``summary``
(the events in order), ``rules`` (which rules were broken, how often), ``other`` (left to the agent's tools).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from anomalens.agents.claims import claims_from_draft, parse_drafts
from anomalens.agents.digest import numbered_facts
from anomalens.agents.index import EvidenceBook, VideoIndex
from anomalens.agents.llm import LLM, Message
from anomalens.agents.llm.structured import ask_structured, structured_messages
from anomalens.agents.sightings import activities, activity_of, sighted_frames, state_of
from anomalens.errors import LLMError
from anomalens.facts import states as facts_states
from anomalens.prompts import load as load_prompts
from anomalens.tools.coco import coco_class
from anomalens.types import Claim, Event, SeenBy

QueryKind = Literal["between", "count", "appears", "why", "summary", "rules", "other"]
EVENTS_SAID = 3  # events an answer describes one by one; a tally counts them all
SUMMARY_EVENTS = 5
RULES_SAID = 5
CHOOSER_TOKENS = 80  # a query is about 30 tokens of JSON
CHOOSER_ATTEMPTS = 2  # a second try with the validation error; then the agent's own tools take the question
_SECONDS = r"\s*(?:s\b|sec\b|secs\b|seconds?\b)"
_TIME = re.compile(
    r"(?P<clock>\b\d+:\d{2}(?:\.\d+)?\b)|\bframe\s+(?P<frame>\d+)|(?:\bsecond\s+(?P<nth>\d+(?:\.\d+)?))"
    rf"|\b(?P<first>\d+(?:\.\d+)?)\s*(?:and|to|-|–)\s*(?P<then>\d+(?:\.\d+)?){_SECONDS}"  # "50 and 70 seconds"
    rf"|(?P<seconds>\b\d+(?:\.\d+)?){_SECONDS}"
)


class Query(BaseModel):
    """What a question asks, typed: the LLM fills this schema when the router cannot."""

    model_config = ConfigDict(extra="forbid")
    kind: QueryKind
    from_s: float = None
    to_s: float = None
    at_s: float = None
    subject: str = None
    seen_by: SeenBy = None  # "caption": look for the subject in what the captions say
    event: int = None  # 1 = the first event, -1 = the last

    @model_validator(mode="before")
    @classmethod
    def _nulls_mean_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


def _text() -> dict[str, Any]:
    return load_prompts("questions")


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9:.]+", text.lower())).strip(" .")


def _has(words: str, phrases: list[str]) -> bool:
    return any(re.search(rf"(^|\s){re.escape(p)}", words) for p in phrases)


def times_in(question: str, fps: float) -> list[float]:
    """The times a question names, in seconds, in order: ``0:30``, ``30 s``, ``second 30``, ``frame 300``."""
    found = []
    for match in _TIME.finditer(question.lower()):
        if match["clock"]:
            minutes, seconds = match["clock"].split(":")
            found.append(int(minutes) * 60 + float(seconds))
        elif match["frame"]:
            found.append(int(match["frame"]) / fps)
        elif match["first"]:
            found += [float(match["first"]), float(match["then"])]
        else:
            found.append(float(match["nth"] or match["seconds"]))
    return found


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def subject_of(question: str) -> str | None:
    """The thing a question asks about, its filler words and times removed ("a bicycle", "people")."""
    text = _text()
    stripped = _TIME.sub(" ", question.lower())
    qualifiers = text["qualifiers"]
    qualifying = {w for kind, words in qualifiers.items() if kind != "person" for w in words}
    # A kind of person ("woman") asks for people: the person is kept, what kind is not measured.
    found = ["person" if w in qualifiers["person"] else w for w in re.findall(r"[a-z]+", stripped)]
    words = [w for w in found if w not in text["filler"] and _singular(w) not in qualifying]
    return " ".join(words) or None


def route(question: str, index: VideoIndex, previous: dict[str, Any] | None = None) -> Query | None:
    """The query a question's words settle, or None (the LLM chooses). ``previous``: the last turn's query and
    the events its answer named, for follow-ups ("and after that?", "what about at 0:40?", "why?")."""
    text, words = _text(), _words(question)
    fps, length_s = index.fps, index.frames / index.fps
    routes, times = text["routes"], times_in(question, fps)
    before = previous["query"] if previous else None
    if before is not None:
        follow = _follow_up(question, words, times, Query(**before), previous.get("events", []))
        if follow is not None:
            return follow
    if words.startswith("why") or " why " in f" {words} ":
        return _why(words, times, [])
    if _has(words, routes["rules"]):
        return Query(kind="rules")
    if _has(words, routes["summary"]):
        return Query(kind="summary")
    if _has(words, routes["count"]):
        return Query(kind="count", at_s=times[0] if times else 0.0, subject=subject_of(question))
    if len(times) >= 2 and _has(words, ["between", "from"]):
        return Query(kind="between", from_s=min(times[:2]), to_s=max(times[:2]))
    if len(times) == 1 and (edge := re.search(r"\b(first|last|final)\s+\d", words)):
        if edge[1] == "first":
            return Query(kind="between", from_s=0.0, to_s=times[0])
        return Query(kind="between", from_s=max(0.0, length_s - times[0]), to_s=length_s)
    if (state := state_of(question)) is not None and not times and not _has(words, routes["captions"]):
        return Query(kind="appears", subject=state[1].name, seen_by="state")
    if _has(words, routes["appears"]) and not times:
        if _has(words, routes["captions"]):
            subject = subject_of(question)
            return Query(kind="appears", subject=subject, seen_by="caption") if subject else None
        subject = activity_of(question) or subject_of(question)
        return Query(kind="appears", subject=subject) if subject else None
    if times and (_has(words, routes["between"]) or len(words.split()) <= 4):
        return _around(times[0])
    return None


def _around(at_s: float) -> Query:
    half = _text()["around_s"]
    return Query(kind="between", from_s=max(0.0, at_s - half), to_s=at_s + half)


def _why(words: str, times: list[float], named_events: list[int]) -> Query:
    if match := re.search(r"event[\s-]*(\d+)", words):
        return Query(kind="why", event=int(match[1]))
    ordinals = _text()["ordinals"]
    if number := next((n for word, n in ordinals.items() if re.search(rf"\b{word}\b", words)), None):
        return Query(kind="why", event=number)
    if times:
        return Query(kind="why", at_s=times[0])
    return Query(kind="why", event=named_events[0] if named_events else 1)


def _follow_up(question: str, words: str, times: list[float], before: Query, events: list[int]) -> Query | None:
    routes = _text()["routes"]
    if words.startswith("why") and not re.search(r"event|first|second|third|last", words):
        return _why(words, times, events)
    step = 1 if _has(words, routes["next"]) else -1 if _has(words, routes["before"]) else 0
    if step and not times:
        if before.kind == "between":
            span = before.to_s - before.from_s
            start = before.to_s if step > 0 else max(0.0, before.from_s - span)
            return Query(kind="between", from_s=start, to_s=start + span)
        if before.kind == "why" and before.event is not None and before.event > 0:
            return Query(kind="why", event=max(1, before.event + step))
        return None
    if not any(words.startswith(f"{p} ") for p in routes["follow"]) or len(words.split()) > 6:
        return None  # "and at 0:40?", "what about cars?": short, and opening with a follow-up's words
    if times and before.kind == "count":
        return before.model_copy(update={"at_s": times[0]})
    if times and before.kind == "between":
        return _around(times[0])
    # A new subject only when it is one the words name for sure: a kind of object or an activity.
    subject = activity_of(question) or coco_class(subject_of(question) or "")
    if subject and before.kind in ("count", "appears"):
        return before.model_copy(update={"subject": subject})
    return None


def chooser_prefix() -> list[Message]:
    """The system turn of every query choice, as sent (``LLM.warm`` precomputes it once per session)."""
    return structured_messages([Message(role="system", content=_text()["choose"])], Query)


def choose(llm: LLM, question: str, index: VideoIndex, previous: dict[str, Any] | None = None) -> tuple[Query, int]:
    """The LLM's query for a question no route settles (``other`` when it gives none that validates), and the
    LLM calls it took."""
    text = _text()
    history = ""
    if previous:
        history = text["history"].format(question=previous["question"], query=json.dumps(previous["query"])) + "\n"
    prompt = text["question"].format(
        seconds=index.frames / index.fps, events=len(index.events), history=history, question=question
    )
    try:
        messages = [Message(role="system", content=text["choose"]), Message(role="user", content=prompt)]
        chosen = ask_structured(llm, messages, Query, attempts=CHOOSER_ATTEMPTS, max_tokens=CHOOSER_TOKENS)
    except LLMError:
        return Query(kind="other"), CHOOSER_ATTEMPTS
    return _as_said(_settled(chosen.value, index.frames / index.fps), times_in(question, index.fps)), chosen.attempts


def _as_said(query: Query, times: list[float]) -> Query:
    """The model's query with the times the question's own words name ("1:05" is 65 s, whatever a small model
    reads into it)."""
    if not times:
        return query
    if query.kind == "between":
        if len(times) == 1:
            return _around(times[0])
        return Query(kind="between", from_s=min(times[:2]), to_s=max(times[:2]))
    if query.kind in ("count", "why") and query.event is None:
        return query.model_copy(update={"at_s": times[0]})
    return query


def _settled(query: Query, seconds: float) -> Query:
    """A chosen query with what its kind needs: a small model asks "appears" with times but no subject when it
    means "what happened then", and leaves out the ends of a span it means to be the whole video."""
    if query.kind == "appears" and not query.subject:
        if query.from_s is None and query.to_s is None and query.at_s is None:
            return Query(kind="other")
        query = Query(kind="between", from_s=query.from_s, to_s=query.to_s, at_s=query.at_s)
    if query.kind == "between":
        if query.from_s is None and query.to_s is None and query.at_s is not None:
            return _around(query.at_s)
        start = query.from_s if query.from_s is not None else 0.0
        end = query.to_s if query.to_s is not None and query.to_s > start else max(start, seconds)
        return Query(kind="between", from_s=start, to_s=end)
    if query.kind == "count":
        return Query(kind="count", at_s=query.at_s or query.from_s or 0.0, subject=query.subject)
    return query


def event_near(index: VideoIndex, frame: int) -> Event | None:
    """The event holding ``frame``, else the nearest one (None in a video without events)."""
    def distance(event: Event) -> int:
        return max(event.start_frame - frame, frame - event.end_frame, 0)

    return min(index.events, key=distance, default=None)


class Answered(BaseModel):
    """A question tool's answer: claims to verify, the events it named, and what is known when it has no claim."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    claims: list[Claim]
    events: list[int] = []
    note: str = ""


class QuestionTools:
    """Answers each kind of query from one video's index with claims citing its evidence."""

    def __init__(self, index: VideoIndex, namer: Callable[[str], str | None]):
        self.index, self.namer = index, namer
        self.text = _text()["decline"]

    def answer(self, query: Query, book: EvidenceBook, question: str = "") -> Answered:
        """The question tool's answer, and what it could not narrow by: every qualifier of the question (a colour,
        clothing, a kind of person, a place) is grounded in the evidence (a place the scene's zones name, for
        counts) or said to be beyond it, never dropped without a word."""
        activity = query.kind == "appears" and activity_of(question) is not None
        zone, beyond = self._qualifiers(question, grounded_place=activity)
        if query.kind == "count" and zone is not None:
            answered = Answered(claims=self._counts(self._frame(query.at_s), query.subject, zone))
        else:
            answered = getattr(self, f"_{query.kind}")(query, book, question)
            if zone is not None:
                beyond.append(self.text["beyond_place_zone"].format(zone=zone))
        return answered.model_copy(update={"note": " ".join([*beyond, answered.note]).strip()})

    def _qualifiers(self, question: str, grounded_place: bool) -> tuple[str | None, list[str]]:
        """The zone a question's place names (when the scene has one by that name), and a sentence for each
        qualifier the evidence does not hold. ``grounded_place``: the question asks for an activity whose rules
        are about places ("on the lawn": off the usual path), which grounds its place."""
        words = {form for w in re.findall(r"[a-z]+", question.lower()) for form in (w, _singular(w))}
        zones = [z.name for z in self.index.rulebook.zones] if self.index.rulebook is not None else []
        zone = next((z for z in zones if set(z.lower().split()) <= words), None)
        beyond = []
        for kind, listed in _text()["qualifiers"].items():
            said = sorted({_singular(w) for w in words & set(listed)})
            if said and not (kind == "place" and (zone is not None or grounded_place)):
                beyond.append(self.text[f"beyond_{kind}"].format(words=", ".join(said)))
        return zone, beyond

    # --- helpers -------------------------------------------------------------------------------------

    def _frame(self, seconds: float | None) -> int:
        return min(max(round((seconds or 0.0) * self.index.fps), 0), self.index.frames - 1)

    def _cite(self, frame: int) -> str:
        """The id of the screening evidence of ``frame`` (or of the nearest frame that has some)."""
        found = self.index.frame_evidence(frame)
        if found is None:
            found = min(
                (ev for ev in self.index.evidence if ev.text is None and ev.frame_index is not None),
                key=lambda ev: abs(ev.frame_index - frame),
            )
        return found.id

    @cached_property
    def _names_objects(self) -> bool:
        """Whether screening named objects (ran the detector): else no object has a class."""
        return any(ev.source.backend.startswith("objects") for ev in self.index.evidence)

    def _number(self, event: Event) -> int:
        return self.index.events.index(event) + 1

    @staticmethod
    def _claim(kind: str, cite: list[str], **fields) -> Claim:
        return Claim(id="q", kind=kind, evidence_ids=cite, **fields)

    def _tally(self, events: list[Event], first: int, last: int, rule_id: str | None = None) -> Claim:
        cite = [self._cite(e.peak_frame) for e in events[:4]] or [self._cite(first)]
        return self._claim("tally", cite, value=len(events), frames=(first, last), rule_id=rule_id)

    def event_claims(self, event: Event, book: EvidenceBook, facts: int) -> list[Claim]:
        """The event's span, then its strongest ``facts`` facts (who broke which rule, what it is, where)."""
        span = self._claim("temporal", [self._cite(event.peak_frame)], frames=(event.start_frame, event.end_frame))
        drafts = parse_drafts([c for c, _ in numbered_facts(book, event)][:facts])
        return [span, *claims_from_draft(drafts, book)]

    def _counts(self, frame: int, subject: str | None, zone: str | None = None) -> list[Claim]:
        """How many objects (of ``subject``'s class, when it names one the index records; standing in ``zone``, when
        given) are in view at ``frame``: the tracks alive then (``VideoIndex.in_view``), else the objects screening
        saw in that frame."""
        evidence = self.index.frame_evidence(frame)
        if evidence is None:
            return [self._claim("count", [self._cite(frame)], value=0)]
        tracks = self.index.in_view(frame)
        if zone is not None:
            if tracks is None:
                return []
            cls = self.namer(subject) if subject else None
            standing = [t for t in tracks if t.fact("zone", frame, last_seen=True) == zone]
            n = sum(cls is None or t.class_name == cls for t in standing)
            return [self._claim("count", [evidence.id], value=n, term=cls, zone=zone)]
        names = [t.class_name for t in tracks] if tracks is not None else evidence.class_names or [None] * len(evidence)
        named = names if self._names_objects else None
        cls = self.namer(subject) if subject and named is not None else None
        if cls is not None:
            return [self._claim("count", [evidence.id], value=sum(c == cls for c in named), term=cls)]
        if subject is None and named is not None and any(c is not None for c in named):
            return [self._claim("count", [evidence.id], value=n, term=c) for c, n in Counter(named).most_common(3)
                    if c is not None]  # fmt: skip
        return [self._claim("count", [evidence.id], value=len(names))]

    # --- the tools -----------------------------------------------------------------------------------

    def _between(self, query: Query, book: EvidenceBook, question: str) -> Answered:
        first, last = sorted((self._frame(query.from_s), self._frame(query.to_s)))
        events = [e for e in self.index.events if e.start_frame <= last and first <= e.end_frame]
        claims = [self._tally(events, first, last)]
        for event in events[:EVENTS_SAID]:
            claims += self.event_claims(event, book, facts=1)
        if not events:
            claims += self._counts((first + last) // 2, None)
        return Answered(claims=claims, events=[self._number(e) for e in events])

    def _count(self, query: Query, book: EvidenceBook, question: str) -> Answered:
        return Answered(claims=self._counts(self._frame(query.at_s), query.subject))

    def _appears(self, query: Query, book: EvidenceBook, question: str) -> Answered:
        if not query.subject:
            return Answered(claims=[], note=self.text["no_subject"].format(question=question))
        found = self._sought(query.subject, query.seen_by)
        if isinstance(found, str):
            return Answered(claims=[], note=found)
        if found[1] == "state":
            return self._state(found[0], book)
        claims = [self._appearance(*found, book)]
        if found[1] == "class" and claims[0].value == 0 and self.index.has_captions:
            claims.append(self._appearance(found[0], "caption", book))  # what the detector missed, a caption may say
        return Answered(claims=claims)

    def _appearance(self, term: str, seen_by: SeenBy, book: EvidenceBook) -> Claim:
        frames = sighted_frames(self.index, term, seen_by)
        if not frames:
            return self._claim("appearance", [self._cite(0)], term=term, seen_by=seen_by, value=0)
        cite = book.resolve(f"C{frames[0]}") if seen_by == "caption" else self._cite(frames[0])
        return self._claim(
            "appearance", [cite], term=term, seen_by=seen_by, value=len(frames), frames=(frames[0], frames[-1])
        )

    def _state(self, name: str, book: EvidenceBook) -> Answered:
        """When objects were in the state ``name`` (running, lying, ...), and the most telling measurement: the
        furthest into it, or, when nobody was, the nearest to it; or why the video cannot tell."""
        spec, state = next((spec, state) for spec, state in facts_states() if state.name == name)
        measured = [(v, f, t.id) for t in self.index.objects for f, v in zip(t.frames, t.facts.get(spec.name, []))
                    if v is not None]  # fmt: skip
        if not measured:
            return Answered(claims=[], note=self.text["not_measured"].format(state=name, fact=spec.said))
        value, frame, track = max(measured)
        evidence = self.index.frame_evidence(frame)
        cite = [evidence.id] if evidence is not None else [self._cite(frame)]
        strongest = self._claim("measurement", cite, quantity=spec.name, value=round(value, 2), unit=spec.unit,
                                track_id=track)  # fmt: skip
        return Answered(claims=[self._appearance(name, "state", book), strongest])

    def _sought(self, subject: str, seen_by: SeenBy | None) -> tuple[str, SeenBy] | str:
        """What a subject is looked for as: a state, an activity, a detector class, caption words; or why it cannot
        be."""
        if seen_by == "caption":
            return (subject, "caption") if self.index.has_captions else self.text["no_captions"]
        if seen_by == "state" or (found := state_of(subject)) is not None:
            return (subject if seen_by == "state" else found[1].name), "state"
        if subject in activities() or (subject := activity_of(subject) or subject) in activities():
            return subject, "activity"
        cls = self.namer(subject)
        if cls is not None and self._names_objects:
            return cls, "class"
        if self.index.has_captions:
            return subject, "caption"
        if cls is not None:
            return self.text["no_classes"].format(subject=cls)
        return self.text["unknown_subject"].format(subject=subject)

    def _why(self, query: Query, book: EvidenceBook, question: str) -> Answered:
        events = self.index.events
        if query.at_s is not None and query.event is None and events:
            event = event_near(self.index, self._frame(query.at_s))
        elif query.event is not None and 1 <= abs(query.event) <= len(events) and query.event != 0:
            event = events[query.event - 1 if query.event > 0 else query.event]
        elif not events:
            return Answered(claims=[], note=self.text["no_events"])
        else:
            number = query.event if query.event is not None else 1
            return Answered(claims=[], note=self.text["no_event"].format(number=number, count=len(events)))
        return Answered(claims=self.event_claims(event, book, facts=3), events=[self._number(event)])

    def _summary(self, query: Query, book: EvidenceBook, question: str) -> Answered:
        events = self.index.events
        claims = [self._tally(events, 0, self.index.frames - 1)]
        for event in sorted(events, key=lambda e: -e.score)[:SUMMARY_EVENTS]:  # the events that matter most lead
            claims += self.event_claims(event, book, facts=1)
        if not events:
            claims += self._counts(self.index.frames // 2, None)
        return Answered(claims=claims, events=[self._number(e) for e in events])

    def _rules(self, query: Query, book: EvidenceBook, question: str) -> Answered:
        last = self.index.frames - 1
        broken = Counter(rule_id for e in self.index.events for rule_id in e.rule_ids)
        if not broken:
            return Answered(claims=[self._tally([], 0, last)])
        claims = []
        for rule_id, _ in broken.most_common(RULES_SAID):
            events = [e for e in self.index.events if rule_id in e.rule_ids]
            claims.append(self._tally(events, 0, last, rule_id=rule_id))
        return Answered(claims=claims, events=[self._number(e) for e in self.index.events if e.rule_ids])
