"""Chat over the event history: questions across every stored video ("how many bicycles this week?", "anything
unusual while I was away?", "which rules were broken?"), answered from the event store and verified.

A question becomes a typed ``HistoryQuery``: by the words of ``prompts/history.yaml`` when they settle it, else
by the LLM with constrained output. The store's tools find the events (by time, class, rule, words). What is said
of each event is a claim checked by the same verifier as every other answer, against the evidence of the event's
own report; an answer states only what was verified, and cites each event (``E<id>``) and frame
(``E<id>/F<frame>``), which the app turns into links.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from anomalens.agents.claims import render
from anomalens.agents.index import EvidenceBook, VideoIndex
from anomalens.agents.llm import LLM, Message
from anomalens.agents.llm.structured import ask_structured, structured_messages
from anomalens.agents.questions import QuestionTools
from anomalens.agents.verify import Verifier
from anomalens.errors import AnomalensError, ConfigError, LLMError
from anomalens.prompts import load as load_prompts
from anomalens.report import Report, load_report
from anomalens.store import EventFilter, EventStore
from anomalens.tools.coco import coco_class
from anomalens.types import Claim

EVENTS_SAID = 5  # events an answer describes; the rest are counted and linked from the timeline
CHOOSER_TOKENS = 120


class HistoryQuery(BaseModel):
    """What a question about the history asks, typed: the LLM fills this schema when the words do not settle it."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["events", "count", "rules", "why"] = "events"
    # Lengths bound what a small model's constrained output can ramble into (llama.cpp's grammar enforces them).
    object_class: str | None = Field(default=None, max_length=40)
    rule: str | None = Field(default=None, max_length=60)
    words: str | None = Field(default=None, max_length=60)
    since: str | None = Field(default=None, max_length=40)  # ISO times
    until: str | None = Field(default=None, max_length=40)
    event: int | None = Field(default=None, ge=1)
    verdict: Literal["false alarm", "confirmed", "unreviewed"] | None = None  # how a person reviewed the events

    @model_validator(mode="before")
    @classmethod
    def _nulls_mean_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    def filter(self) -> EventFilter:
        return EventFilter(since=self.since, until=self.until, rule=self.rule, object_class=self.object_class,
                           words=self.words, verdict=self.verdict, silenced=False)


class SaidClaim(BaseModel):
    text: str
    status: str
    reason: str
    event: int  # the store's event id
    cites: list[str]  # E<id>/F<frame> handles


class HistoryAnswer(BaseModel):
    question: str
    query: HistoryQuery
    text: str
    claims: list[SaidClaim]  # every claim made, with its verdict; only supported ones are in ``text``
    events: list[int]  # the events the answer names
    llm_calls: int = 0
    seconds: float = 0.0


def _text() -> dict[str, Any]:
    return load_prompts("history")


def _has(words: str, phrases: list[str]) -> bool:
    return any(re.search(rf"(^|\s){re.escape(p)}(\s|$)", words) for p in phrases)


def _window(words: str, now: datetime, last_review: str | None) -> tuple[str | None, str | None]:
    text = _text()
    windows = text["windows"]
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if _has(words, windows["today"]):
        return midnight.isoformat(), None
    if _has(words, windows["yesterday"]):
        return (midnight - timedelta(days=1)).isoformat(), midnight.isoformat()
    if _has(words, windows["week"]):
        return (now - timedelta(days=7)).isoformat(), None
    if _has(words, windows["away"]):
        return last_review, None  # no review yet: everything is news
    if match := re.search(text["recent"], words):
        unit = {"hour": "hours", "day": "days", "minute": "minutes"}[match[2]]
        return (now - timedelta(**{unit: int(match[1])})).isoformat(), None
    return None, None


def route(question: str, now: datetime, rule_ids: list[str], last_review: str | None) -> HistoryQuery | None:
    """The query a question's words settle, or None for the LLM to read."""
    text = _text()
    words = " ".join(re.findall(r"[a-z0-9_.-]+", question.lower()))
    since, until = _window(words, now, last_review)
    rule = next((r for r in rule_ids if re.search(rf"(^|\s){re.escape(r.lower())}(\s|$)", words)), None)
    named = [found for w in words.split() if (found := coco_class(w)) is not None]
    object_class = named[0] if named else None
    if match := re.search(r"\bevent\s+e?(\d+)\b|\be(\d+)\b", words):
        return HistoryQuery(kind="why", event=int(match[1] or match[2]))
    verdict = next((v for v, said in text["verdicts"].items() if _has(words, said)), None)
    if _has(words, text["routes"]["count"]):
        return HistoryQuery(kind="count", object_class=object_class, rule=rule, since=since, until=until,
                            verdict=verdict)  # fmt: skip
    if _has(words, text["routes"]["rules"]) and rule is None:
        return HistoryQuery(kind="rules", since=since, until=until)
    asks_for_events = _has(words, ["unusual", "anomal", "happen", "events", "odd"])
    if since or until or object_class or rule or verdict or asks_for_events:
        return HistoryQuery(kind="events", object_class=object_class, rule=rule, since=since, until=until,
                            verdict=verdict)  # fmt: skip
    return None


def choose(llm: LLM, question: str, now: datetime, rule_ids: list[str]) -> tuple[HistoryQuery, int]:
    """The LLM's reading of a question no route settles (each field kept only where the question bears it out);
    every event when it gives none that validates."""
    said = _text()["question"].format(now=now.isoformat(timespec="seconds"), question=question)
    messages = [Message(role="system", content=_text()["choose"]), Message(role="user", content=said)]
    try:
        chosen = ask_structured(llm, messages, HistoryQuery, attempts=2, max_tokens=CHOOSER_TOKENS)
    except LLMError:
        return HistoryQuery(kind="events"), 2
    return _settled(chosen.value, question, rule_ids, now), chosen.attempts


def _settled(query: HistoryQuery, question: str, rule_ids: list[str], now: datetime) -> HistoryQuery:
    """A small model fills fields the question never asked for ("person", a rule it knows of, "since now"), most of
    all for a question in a language other than the prompt's: keep a class only if a word of the question names it,
    a rule only if the question names it, words only if the question quotes them, times only if they read as times
    and leave something to ask about (not from now on), and "why" only with an event number."""
    named = {found for w in re.findall(r"[a-z]+", question.lower()) if (found := coco_class(w)) is not None}
    quoted = re.findall(r"[\"'“‘]([^\"'”’]+)[\"'”’]", question)

    def time_or_none(value: str | None) -> datetime | None:
        try:
            when = datetime.fromisoformat(value) if value else None
        except ValueError:
            return None
        return when.replace(tzinfo=now.tzinfo) if when and when.tzinfo is None else when

    since, until = time_or_none(query.since), time_or_none(query.until)
    if since and since >= now - timedelta(minutes=1):
        since = None  # nothing is stored from now on
    if until and until >= now:
        until = None
    if since and until and until <= since:  # an empty window asks for nothing
        since = until = None
    question_words = question.lower()
    return HistoryQuery(
        kind="events" if query.kind == "why" and query.event is None else query.kind,
        object_class=query.object_class if query.object_class in named else None,
        rule=query.rule if query.rule in rule_ids and query.rule.lower() in question_words else None,
        words=query.words if query.words and query.words in quoted else None,
        since=since.isoformat() if since else None, until=until.isoformat() if until else None, event=query.event,
    )


class HistoryChat:
    """Answers questions over ``store``; ``llm`` reads the questions the words do not settle (none: every such
    question lists the events)."""

    def __init__(self, store: EventStore, llm: LLM | None = None, clock: Callable[[], datetime] | None = None):
        self.store, self.llm = store, llm
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.said = _text()["said"]
        self._index = lru_cache(maxsize=32)(self._load_index)
        self._llm_lock = threading.Lock()  # the app answers in threads; an in-process LLM takes one call at a time
        if llm is not None:  # the reading prompt's system turn, computed once: each question then costs its own words
            llm.warm(structured_messages([Message(role="system", content=_text()["choose"])], HistoryQuery))

    @staticmethod
    def _load_index(report_path: str, modified_ns: int) -> VideoIndex:
        """``modified_ns`` keys the cache: a report written again (an audit re-run, a watch event explained) is read
        again."""
        report = load_report(Path(report_path))
        if not isinstance(report, Report):
            raise ConfigError(f"{report_path}: not a video report")
        return VideoIndex.from_report(report)

    def ask(self, question: str, session: str | None = None) -> HistoryAnswer:
        started, now = time.monotonic(), self.clock()
        rule_ids = self.store.rule_ids()
        query, calls = route(question, now, rule_ids, self.store.last_review()), 0
        if query is None:
            if self.llm is not None:
                with self._llm_lock:
                    query, calls = choose(self.llm, question, now, rule_ids)
            else:
                query = HistoryQuery(kind="events")
        answer = getattr(self, f"_{query.kind}")(query)
        answer = answer.model_copy(update={"question": question, "query": query, "llm_calls": calls,
                                           "seconds": round(time.monotonic() - started, 3)})
        if session is not None:
            self.store.add_answer(session, question, answer.text, [c.model_dump() for c in answer.claims])
        return answer

    # --- what is said of one event ---------------------------------------------------------------------

    def _verified(self, stored: dict, claims_of: Callable[[VideoIndex, EvidenceBook, Any], list[Claim]]):
        """The claims ``claims_of`` makes of a stored event, each with the verifier's verdict and its sentence; none
        when its report is gone or no longer holds the event (nothing can be checked, so nothing is said)."""
        try:
            index = self._index(stored["report"], Path(stored["report"]).stat().st_mtime_ns)
        except (AnomalensError, OSError):
            return []
        event = index.event(stored["key"])
        if event is None:
            return []
        book = EvidenceBook(index)
        verifier = Verifier(index)
        said = []
        for claim in claims_of(index, book, event):
            verdict = verifier.verify(claim, event, book)
            frames = [ev.frame_index for i in claim.evidence_ids if (ev := book.get(i)) is not None]
            said.append(
                SaidClaim(
                    text=render(claim, book), status=verdict.status, reason=verdict.reason, event=stored["id"],
                    cites=[f"E{stored['id']}/F{f}" for f in frames if f is not None],
                )
            )
        return said

    def _describe(self, query: HistoryQuery, stored: dict) -> list[SaidClaim]:
        def claims_of(index: VideoIndex, book: EvidenceBook, event) -> list[Claim]:
            made = QuestionTools(index, coco_class).event_claims(event, book, facts=2)
            if query.object_class:
                made += self._class_claims(query.object_class, book, event)
            return made

        return self._verified(stored, claims_of)

    @staticmethod
    def _class_claims(object_class: str, book: EvidenceBook, event) -> list[Claim]:
        """An object claim for the first of the event's frames that names ``object_class``."""
        for evidence_id in event.evidence_ids:
            evidence = book.get(evidence_id)
            if evidence is not None and object_class in (evidence.class_names or []):
                track = evidence.track_of(evidence.class_names.index(object_class))
                return [Claim(id="h", kind="object", term=object_class, track_id=track, evidence_ids=[evidence.id])]
        return [Claim(id="h", kind="object", term=object_class, evidence_ids=event.evidence_ids[:1] or ["none"])]

    def _span(self, query: HistoryQuery) -> str:
        if query.since and query.until:
            return f"between {_clock(query.since)} and {_clock(query.until)}"
        if query.since:
            return f"since {_clock(query.since)}"
        return f"before {_clock(query.until)}" if query.until else "in the store"

    @staticmethod
    def _filters(query: HistoryQuery) -> str:
        said = [f"with a {query.object_class}" if query.object_class else "",
                f"breaking {query.rule}" if query.rule else "", f"mentioning {query.words!r}" if query.words else "",
                f"reviewed as {query.verdict}" if query.verdict not in (None, "unreviewed") else "",
                "not yet reviewed" if query.verdict == "unreviewed" else ""]
        return "".join(f" {s}" for s in said if s)

    def _listing(self, query: HistoryQuery, events: list[dict], head: str) -> HistoryAnswer:
        lines, claims, named, unverified = [], [], [], 0
        for stored in events:
            if len(named) == EVENTS_SAID:
                break
            made = self._describe(query, stored)
            claims += made
            supported = [c for c in made if c.status == "supported"]
            if query.object_class and not any(query.object_class in c.text for c in supported):
                unverified += 1
                continue
            if not supported:
                unverified += 1
                continue
            named.append(stored["id"])
            title = self.said["event"].format(handle=f"E{stored['id']}", title=stored["title"], at=_clock(stored["at"]))
            headline = [stored["headline"]] if stored.get("headline") else []  # verified when its report was written
            lines.append(" ".join([title, *headline, *(c.text for c in supported)]))
        count = len(events) - unverified
        header = head.format(count=count, events=_plural("event", count), span=self._span(query),
                             filters=self._filters(query))
        if unverified:
            lines.append(self.said["unverified"].format(count=unverified, events=_plural("event", unverified)))
        if len(events) > len(named) + unverified:
            lines.append(self.said["more"].format(count=len(events) - len(named) - unverified))
        return HistoryAnswer(question="", query=query, text="\n".join([header, *lines]), claims=claims, events=named)

    # --- the tools -------------------------------------------------------------------------------------

    def _events(self, query: HistoryQuery) -> HistoryAnswer:
        events = self.store.events(query.filter())
        if not events:
            text = self.said["none"].format(span=self._span(query), filters=self._filters(query))
            return HistoryAnswer(question="", query=query, text=text, claims=[], events=[])
        return self._listing(query, events, self.said["counted" if query.kind == "count" else "found"])

    _count = _events  # the same search; the answer's first sentence is the count

    def _why(self, query: HistoryQuery) -> HistoryAnswer:
        stored = self.store.event(query.event) if query.event is not None else None
        if stored is None:
            text = self.said["no_event"].format(event=f"E{query.event}")
            return HistoryAnswer(question="", query=query, text=text, claims=[], events=[])
        return self._listing(query, [stored], self.said["found"])

    def _rules(self, query: HistoryQuery) -> HistoryAnswer:
        events = self.store.events(query.filter())
        broken = Counter(rule for e in events for rule in e["rules"])
        if not broken:
            text = self.said["no_rules"].format(span=self._span(query))
            return HistoryAnswer(question="", query=query, text=text, claims=[], events=[])
        lines, claims, named = [], [], []
        for rule_id, _ in broken.most_common(EVENTS_SAID):
            verified = []
            for stored in (e for e in events if rule_id in e["rules"]):
                made = self._verified(stored, lambda index, book, event, r=rule_id: self._rule_claims(r, book, event))
                claims += made
                if made and made[0].status == "supported":
                    verified.append(stored["id"])
            if verified:
                said = self.said["rule_tally"].format(rule=rule_id, count=len(verified),
                                                      events=_plural("event", len(verified)))
                lines.append(f"{said} ({', '.join(f'E{i}' for i in verified)})")
                named += [i for i in verified if i not in named]
        return HistoryAnswer(question="", query=query, text="\n".join(lines), claims=claims, events=named)

    @staticmethod
    def _rule_claims(rule_id: str, book: EvidenceBook, event) -> list[Claim]:
        for evidence_id in event.evidence_ids:
            evidence = book.get(evidence_id)
            for breach in evidence.breaches() if evidence is not None else []:
                if breach.rule_id == rule_id and breach.severity > 1.0:
                    track = evidence.track_of(breach.object_index)
                    return [Claim(id="h", kind="rule", rule_id=rule_id, track_id=track, evidence_ids=[evidence.id])]
        return [Claim(id="h", kind="rule", rule_id=rule_id, evidence_ids=event.evidence_ids[:1] or ["none"])]


def _plural(noun: str, n: int) -> str:
    return noun if n == 1 else noun + "s"


def _clock(iso: str) -> str:
    """An ISO time as people read it, to the minute."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
