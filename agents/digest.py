"""What the agent is told: an event's digest (its facts, offered as claims it can copy) and a video's overview.

Facts come from typed fields of the evidence (tracks, headings, zones, measurements, rule breaches, what cues
say), never from label text. Wording lives in ``prompts/digest.yaml``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from anomalens.agents.claims import object_phrase
from anomalens.agents.headline import subject_of, subjects
from anomalens.agents.index import EvidenceBook, VideoIndex, handle
from anomalens.events import worst_breaches
from anomalens.prompts import load as load_prompts
from anomalens.facts import OBJECT_MEASURED
from anomalens.types import Breach, Event, Evidence

MAX_LISTED = 8  # longest list the agent is given (events, objects): the LLM's context is small
MAX_BREACHES = 2  # rule breaches an event's digest details

Fact = tuple[dict[str, Any], str]  # a claim the LLM may copy, and what it means


def _text() -> dict:
    return load_prompts("digest")


def describe_objects(evidence: Evidence, which: list[int] | None = None) -> list[str]:
    """One line per object (all, or the indices ``which``): track, what it is and where it heads, measured facts,
    broken rules."""
    text = _text()
    chosen = list(range(len(evidence))) if which is None else which
    lines = []
    for i in chosen[:MAX_LISTED]:
        facts = ", ".join(
            f"{name} {m.value:.3g} {m.unit}" for name in OBJECT_MEASURED if (m := evidence.measurement(name, i))
        )
        broken = [f"{b.rule_id} {b.severity:.1f}x" for b in evidence.breaches() if b.object_index == i]
        what = object_phrase(evidence, i, terse=True)
        line = text["object"].format(track=evidence.track_of(i), what=what, facts=facts)
        lines.append(line + (text["breaks"].format(rules=", ".join(broken)) if broken else ""))
    if len(chosen) > MAX_LISTED:
        lines.append(text["more_objects"].format(count=len(chosen) - MAX_LISTED))
    return lines


def event_facts(
    book: EvidenceBook, event: Event, *, every_place: bool = False, breaches: int = MAX_BREACHES
) -> list[Fact]:
    """What an event's evidence says, as claims the LLM may copy (each with what it means), strongest first:
    its worst rule breaches (who, where, how much), what its cues say, the peak frame, its time span. The
    zone of a breaching object is offered for zone rules, or with ``every_place`` for every breach (what
    completes an explanation; the LLM's digest stays short). ``breaches``: how many rules broken are detailed."""
    index = book.index
    cited = [ev for ev_id in event.evidence_ids if (ev := index.get(ev_id)) is not None]
    # Per rule, its worst breach; the subject's own breaches first: the facts said support the headline.
    subject = subject_of(book, event)
    about = subject.track if subject is not None else None

    def weight(breach: Breach, evidence: Evidence) -> tuple[bool, float]:
        return evidence.track_of(breach.object_index) == about, breach.severity

    ranked = worst_breaches(book.event_frames(event), weight)
    facts: list[Fact] = []
    for breach, evidence in ranked[:breaches]:
        facts += _breach_facts(index, breach, evidence, every_place)
    for reason in event.reasons:
        claim = {"kind": "object", "cite": [f"C{reason.first_frame}"], "term": reason.phrase}
        facts.append((claim, _text()["cue"].format(**reason.model_dump())))
    if (peak := index.frame_evidence(event.peak_frame)) is not None:
        facts += _peak_facts(peak)
    if len(cited) > 1:
        span = {"frames": [event.start_frame, event.end_frame]}
        facts.append(({"kind": "temporal", "cite": [handle(cited[0]), handle(cited[-1])]} | span, ""))
    return facts


def numbered_facts(book: EvidenceBook, event: Event) -> list[Fact]:
    """The event's facts (``event_facts``) once each, in the order the digest numbers them (f1, f2, ...); not its
    time span, which its headline says (every token of the digest costs time on a CPU)."""
    seen, facts = set(), []
    for claim, meaning in event_facts(book, event):
        line = json.dumps(claim, separators=(",", ":"))
        if line not in seen and claim["kind"] != "temporal":
            seen.add(line)
            facts.append((claim, meaning))
    return facts


def event_digest(book: EvidenceBook, event: Event, tools: bool = True) -> str:
    """What an event is, in a few lines: times, who it may be about (S1, S2, ...: ``headline.subjects``), its facts
    (f1, f2, ...: ``numbered_facts``) and the handles to cite; with ``tools``, where the captions can be read."""
    text = _text()
    lines = [text["event"].format(**event.model_dump()), text["subjects"]]
    for k, subject in enumerate(subjects(book, event), 1):
        evidence, position = subject.evidence, subject.position
        who = text["view"] if position is None else object_phrase(evidence, position, terse=True)
        track = evidence.track_of(position)
        said = text["subject"].format(handle=f"S{k}", track=track, who=who, frame=evidence.frame_index)
        lines.append(said + (text["subject_rule"].format(rule=subject.rule_id) if subject.rule_id else ""))
    lines.append(text["facts"])
    facts = numbered_facts(book, event)
    lines += [f"  f{k}: {fact_line(claim, meaning)}" for k, (claim, meaning) in enumerate(facts, 1)]
    if tools and book.index.has_captions:
        lines.append(text["read_captions"].format(frame=event.peak_frame))
    return "\n".join(lines)


def fact_line(claim: dict[str, Any], meaning: str) -> str:
    """A fact the LLM picks by handle, in a few words (``prompts/digest.yaml`` ``fact``): half the tokens of its
    claim's JSON, and the prompt is most of the time an event takes on a CPU."""
    cite = claim["cite"]
    who = f"track {claim['track']}" if "track" in claim else "the captions" if cite[0].startswith("C") else "the frame"
    said = _text()["fact"][claim["kind"]].format(**claim | {"who": who, "at": ", ".join(cite)})
    return said + (f" ({meaning})" if meaning else "")


def _breach_facts(index: VideoIndex, breach: Breach, evidence: Evidence, every_place: bool) -> list[Fact]:
    """A broken rule as claims: the rule, and for an object the measured value, heading or zone it is about."""
    text, cite = _text(), [handle(evidence)]
    rule = index.rule(breach.rule_id)
    sentence = rule.sentence.rstrip(".") if rule is not None else "(not in the rulebook)"
    meaning = text["breach"].format(severity=breach.severity, sentence=sentence)
    i = breach.object_index
    if i is None:
        return [({"kind": "rule", "cite": cite, "rule": breach.rule_id}, meaning)]
    track = evidence.track_of(i)
    facts = [({"kind": "rule", "cite": cite, "rule": breach.rule_id, "track": track}, meaning)]
    fact = rule.predicate.fact if rule is not None else ""
    if fact in OBJECT_MEASURED and (m := evidence.measurement(fact, i)) is not None:
        value = {"quantity": fact, "value": round(m.value, 2), "unit": m.unit, "track": track}
        facts.append(({"kind": "measurement", "cite": cite} | value, ""))
    if evidence.zones is not None and (fact == "zone" or every_place):
        facts.append(({"kind": "spatial", "cite": cite, "track": track, "zone": evidence.zones[i]}, ""))
    if fact == "direction" and evidence.headings is not None:
        facts.append(({"kind": "attribute", "cite": cite, "heading": evidence.headings[i], "track": track}, ""))
    return facts + _class_fact(evidence, i)


def _class_fact(evidence: Evidence, i: int) -> list[Fact]:
    """What object ``i`` is, as a claim, when the detector named it."""
    name = evidence.class_names[i] if evidence.class_names is not None else None
    if name is None:
        return []
    return [({"kind": "object", "cite": [handle(evidence)], "term": name, "track": evidence.track_of(i)}, "")]


def _peak_facts(peak: Evidence) -> list[Fact]:
    """The peak frame's most anomalous object (rules broken or not) as claims."""
    cite = [handle(peak)]
    facts = []
    if len(peak):
        i = int(np.argmax(peak.scores))
        track = peak.track_of(i)
        facts += _class_fact(peak, i)
        speed, look = peak.measurement("speed", i), peak.measurement("look", i)
        if speed is not None:
            value = {"quantity": "speed", "value": round(speed.value, 2), "unit": speed.unit, "track": track}
            facts.append(({"kind": "measurement", "cite": cite} | value, ""))
        if look is not None and look.value > 1.0:  # it looked unlike the scene's normal objects
            value = {"quantity": "look", "value": round(look.value, 2), "unit": look.unit, "track": track}
            facts.append(({"kind": "measurement", "cite": cite} | value, _text()["appearance"]))
        if peak.headings is not None:
            facts.append(({"kind": "attribute", "cite": cite, "heading": peak.headings[i], "track": track}, ""))
    return facts


def overview(index: VideoIndex) -> str:
    """The video in a few lines: length and its events, for a chat question's context."""
    text = _text()
    head = text["video"].format(video=index.video, frames=index.frames, fps=index.fps, seconds=index.frames / index.fps)
    if not index.events:
        return head + text["no_events"]
    lines = [head + text["events"].format(count=len(index.events))]
    lines += [
        text["event_line"].format(**e.model_dump(), rules=", ".join(e.rule_ids[:3]) or text["no_rules"])
        for e in index.events[:MAX_LISTED]
    ]
    return "\n".join(lines)
