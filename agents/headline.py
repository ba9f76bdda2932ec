"""What an event is about and a headline a person can read.

The subject is the object whose facts made the event (its worst rule breach; else its most unusual object), or
the whole view when it changed at once. The headline says what the subject is, how far from normal, where and
when; each part is a claim built from the subject's own evidence, checked by the verifier (the cited frame must
hold the subject's track), and said only when it holds. Wording: ``prompts/headline.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anomalens.agents.index import EvidenceBook
from anomalens.facts import named
from anomalens.prompts import load as load_prompts
from anomalens.types import GRID_ZONE, Claim, Event, Evidence, Rule
from anomalens.tools.motion import VIEW_MOVED

HEADLINE_PARTS = ("h-what", "h-how", "h-where", "h-when")  # claim ids: what, how far from normal, where, when
MAX_SUBJECTS = 3  # candidates the LLM chooses among


@dataclass(frozen=True)
class Subject:
    evidence: Evidence  # the frame it is cited at: where it was worst
    position: int | None  # its index among that frame's objects; None: the whole view
    rule_id: str | None  # the rule it broke worst; None: no rule (the most unusual object, or the view)

    @property
    def track(self) -> int | None:
        return self.evidence.track_of(self.position)


def subjects(book: EvidenceBook, event: Event, limit: int = MAX_SUBJECTS) -> list[Subject]:
    """Who the event may be about, likeliest first, from its cited frames and its peak: the object that made the
    event's peak (the highest object score in its peak frame: the most anomalous object), then each object that
    broke a rule (at its worst breach), worst first; the whole view instead when it changed at once and no object
    broke a rule; the most unusual objects when nothing else is found. The LLM picks one by handle (S1, S2, ...);
    the first is the default."""
    frames, peak = book.event_frames(event), book.index.frame_evidence(event.peak_frame)
    breaches = sorted(((b.severity, ev, b) for ev in frames for b in ev.breaches() if b.object_index is not None),
                      key=lambda item: -item[0])  # fmt: skip
    if not breaches:
        for evidence in frames:
            if (moved := evidence.measurement("view_motion")) is not None and moved.value > VIEW_MOVED:
                return [Subject(evidence, None, None)]
    found: dict[int | None, Subject] = {}
    if peak is not None and len(peak) and peak.scores.max() > 0:
        top = int(np.argmax(peak.scores))
        own = max((b for b in peak.breaches() if b.object_index == top), key=lambda b: b.severity, default=None)
        found[peak.track_of(top)] = Subject(peak, top, own.rule_id if own is not None else None)
    for _, evidence, breach in breaches:
        found.setdefault(evidence.track_of(breach.object_index), Subject(evidence, breach.object_index, breach.rule_id))
    unusual = sorted(((m.value, ev, m.object_index) for ev in frames for m in ev.measurements
                      if m.name == "novelty" and m.object_index is not None), key=lambda item: -item[0])  # fmt: skip
    for _, evidence, position in unusual if not found else []:
        found.setdefault(evidence.track_of(position), Subject(evidence, position, None))
    return list(found.values())[:limit]


def subject_of(book: EvidenceBook, event: Event) -> Subject | None:
    """The likeliest subject of the event (``subjects``' first), or None when nothing in it is one."""
    return next(iter(subjects(book, event, limit=1)), None)


def normal_reference(rule: Rule) -> tuple[float | None, str]:
    """What a value of the fact ``rule`` limits is compared with, and what that is: ``seen`` (the most the normal
    footage reached), ``limit`` (the rule's limit: a rule not learned from footage), ``below`` (a lower limit) or
    ``never`` (no number: the normal footage never did this)."""
    limit = rule.predicate.value
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        return None, "never"
    if rule.predicate.op in ("<=", "<"):
        most = rule.stats.get("max", 0.0)
        reference, against = (most, "seen") if most > 0 else (float(limit), "limit")
        return (reference, against) if reference > 0 else (None, "never")
    if rule.predicate.op in (">=", ">"):
        return float(limit), "below"
    return None, "never"


def how_far(rule: Rule, value: float | None) -> float | None:
    """How many times ``value`` lies from normal (``normal_reference``): the value over the normal most, or a lower
    limit over the value; None when there is no number to compare."""
    reference, against = normal_reference(rule)
    if reference is None or value is None:
        return None
    if against == "below":
        return reference / value if value > 0 else None
    return value / reference


def place_of(evidence: Evidence, position: int, size: tuple[int, int]) -> tuple[str | None, str | None]:
    """Where an object was: (the named zone it stood in, or None; else the plain place, e.g. "lower left of the
    view", by the thirds of the view its box's centre lies in). ``size``: the frame's width and height."""
    if evidence.zones is not None and not GRID_ZONE.match(evidence.zones[position]):
        return evidence.zones[position], None
    text = load_prompts("headline")
    width, height = evidence.frame_size or size
    x1, y1, x2, y2 = evidence.boxes[position]
    column = min(int(3 * (x1 + x2) / 2 / width), 2) if width else 1
    row = min(int(3 * (y1 + y2) / 2 / height), 2) if height else 1
    across, down = text["columns"][max(column, 0)], text["rows"][max(row, 0)]
    if across == down == "middle":
        return None, "the middle of the view"
    if down == "middle":
        return None, f"the {across} side of the view"
    return None, f"the {down} {across} of the view"


def headline_claims(subject: Subject, book: EvidenceBook, event: Event) -> list[Claim]:
    """The claims a headline is written from (ids ``HEADLINE_PARTS``), each citing the subject's frame."""
    evidence, position, track = subject.evidence, subject.position, subject.track
    cite = [evidence.id]
    when = Claim(id="h-when", kind="temporal", frames=(event.start_frame, event.end_frame), evidence_ids=cite)
    if position is None:
        moved = evidence.measurement("view_motion")
        what = Claim(id="h-what", kind="measurement", quantity="view_motion", value=round(moved.value, 3),
                     unit=moved.unit, evidence_ids=cite)  # fmt: skip
        return [what, when]
    claims = []
    seen_as = book.index.track(track) if track is not None else None
    name = seen_as.class_name if seen_as is not None else None  # what its detections voted for over its frames
    if name is None and evidence.class_names is not None:
        name = evidence.class_names[position]
    size = evidence.measurement("relative_size", position)
    if name is not None:
        claims.append(Claim(id="h-what", kind="object", term=name, track_id=track, evidence_ids=cite))
    elif size is not None:
        claims.append(Claim(id="h-what", kind="measurement", quantity="relative_size", value=round(size.value, 2),
                            unit=size.unit, track_id=track, evidence_ids=cite))  # fmt: skip
    rule = book.index.rule(subject.rule_id) if subject.rule_id is not None else None
    fact = rule.predicate.fact if rule is not None else "novelty"
    measured = evidence.measurement(fact, position)
    if rule is not None:
        ratio = how_far(rule, measured.value if measured is not None else None)
        claims.append(Claim(id="h-how", kind="comparison", rule_id=rule.id, quantity=fact, track_id=track,
                            value=None if ratio is None else round(ratio, 1), evidence_ids=cite))  # fmt: skip
    elif measured is not None:
        claims.append(Claim(id="h-how", kind="comparison", quantity=fact, value=round(measured.value, 1),
                            track_id=track, evidence_ids=cite))  # fmt: skip
    zone, plain = place_of(evidence, position, book.index.source_size)
    claims.append(Claim(id="h-where", kind="place", zone=zone, term=plain, track_id=track, evidence_ids=cite))
    return claims + [when]


def comparison_text(claim: Claim, rule: Rule | None) -> str:
    """How far from normal, in words ("moved at about 3.1 times the fastest speed seen in the normal footage")."""
    text = load_prompts("headline")
    if rule is None:  # the object's own unusualness: 1.0 is the edge of what normal footage holds
        key = text["within"] if claim.value is not None and claim.value < 1.0 else text["how_far"][claim.quantity]
        return key.format(ratio=claim.value, reference=text["reference_seen"])
    _, against = normal_reference(rule)
    if claim.value is None:
        return text["never"].get(claim.quantity, text["never"]["other"])
    if against == "below":
        return text["below"].format(fact=claim.quantity.replace("_", " "), ratio=claim.value,
                                    reference=text["reference_seen"])  # fmt: skip
    reference = text["reference_seen" if against == "seen" else "reference_limit"]
    said = text["how_far"].get(claim.quantity, text["how_far"]["other"])
    return said.format(ratio=claim.value, reference=reference, fact=claim.quantity.replace("_", " "))


def headline_text(claims: list[Claim], book: EvidenceBook) -> str:
    """The headline from the verified claims among ``claims`` (its parts whose claims failed are left out)."""
    text = load_prompts("headline")
    said = {c.id: c for c in claims if c.id in HEADLINE_PARTS and c.verdict and c.verdict.status == "supported"}
    if "h-when" not in said:
        return ""
    first, last = said["h-when"].frames
    fps = book.index.fps
    when = text["when"].format(start_s=first / fps, end_s=last / fps)
    what = said.get("h-what")
    if what is not None and what.quantity == "view_motion":
        return text["view"].format(when=when)
    if what is None:
        subject = "Something"
    elif what.kind == "object":
        article = named(what.term)
        subject = article[:1].upper() + article[1:]
    else:
        subject = text["what_unnamed"].format(size=f"{what.value:.1f}")
    how = said.get("h-how")
    how_far_said = comparison_text(how, book.index.rule(how.rule_id) if how.rule_id else None) if how else "was seen"
    where = said.get("h-where")
    place = ""
    if where is not None:
        place = text["where_zone"].format(place=where.zone) if where.zone else text["where"].format(place=where.term)
    return text["headline"].format(what=subject, how_far=how_far_said, where=place, when=when)
