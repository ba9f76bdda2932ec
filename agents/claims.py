"""The agent's answer contract: the claims an LLM may draft, how a draft becomes ``Claim`` objects (handles
resolved to evidence ids), and how a verified claim becomes a sentence.

What each kind of claim states and which fields it fills is described once, in ``prompts/claims.yaml``
(``kinds``), for the LLM's system prompt and for people. The prose of a claim is rendered from its checked
fields (the same file's templates), never copied from the LLM, so no unverified word reaches the reader.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from anomalens.agents.headline import comparison_text
from anomalens.agents.index import HANDLE_PATTERN, EvidenceBook, handle
from anomalens.agents.llm import ToolSpec, tool_parameters
from anomalens.prompts import load as load_prompts
from anomalens.facts import OBJECT_MEASURED, named
from anomalens.types import Claim, Evidence, Heading, Relation

ANSWER_TOOL = "answer"
MAX_CLAIMS = 3  # per answer: each costs about 3 s of generation on 2 cores (the budget is 20 s an event)
# A draft's short field names and the ``Claim`` fields they fill.
DRAFT_FIELDS = {
    "rule": "rule_id",
    "track": "track_id",
    "quantity": "quantity",
    "value": "value",
    "unit": "unit",
    "term": "term",
    "heading": "heading",
    "zone": "zone",
    "relation": "relation",
    "other_track": "other_track_id",
    "frames": "frames",
}

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
    kind: Literal["object"]
    cite: Cite
    term: str
    track: int = None


class AttributeDraft(_Draft):
    kind: Literal["attribute"]
    cite: Cite
    heading: Heading
    track: int


class SpatialDraft(_Draft):
    kind: Literal["spatial"]
    cite: Cite
    track: int
    zone: str = None
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
    RuleDraft | MeasurementDraft | CountDraft | ObjectDraft | AttributeDraft | SpatialDraft | TemporalDraft
    | OtherDraft,
    Field(discriminator="kind"),
]


class Answer(BaseModel):
    """An answer: for an event, the subject it is about and its telling facts, by the digest's handles (S<k>,
    f<k>: a few tokens, the code writes the sentences); claims drafted in full for what a tool found, or in chat."""

    model_config = ConfigDict(extra="forbid")
    subject: str = Field(default=None, pattern=r"^S[0-9]{1,2}$")
    facts: list[Annotated[str, Field(pattern=r"^f[0-9]{1,2}$")]] = Field(default_factory=list, max_length=MAX_CLAIMS)
    claims: list[DraftClaim] = Field(default_factory=list, max_length=MAX_CLAIMS)


def answer_spec() -> ToolSpec:
    description = load_prompts("claims")["answer_tool"]
    return ToolSpec(name=ANSWER_TOOL, description=description, parameters=tool_parameters(Answer))


def kinds_text() -> str:
    """The claim kinds and their fields, one line each, for the system prompt."""
    return "\n".join(f"- {kind}: {what}" for kind, what in load_prompts("claims")["kinds"].items())


def parse_drafts(claims: list[dict[str, Any]]) -> list[DraftClaim]:
    """Claims as the LLM writes them (``{"kind": ..., "cite": [...], ...}``), validated."""
    return TypeAdapter(list[DraftClaim]).validate_python(claims)


def fact_classes(claim: Claim) -> set[str]:
    """What an explanation's reader learns from ``claim``: what the object is (``object``), the rule broken
    (``rule``), where (``where``). An agent's explanation must keep every class its event's facts hold."""
    return {name for name, states in (("object", claim.kind == "object"), ("rule", claim.kind == "rule"),
                                      ("where", claim.zone is not None)) if states}  # fmt: skip


def claims_from_draft(drafts: list[DraftClaim], book: EvidenceBook) -> list[Claim]:
    """Claims citing evidence ids (handles resolved; an unknown handle stays as written, for the verifier)."""
    claims = []
    for k, draft in enumerate(drafts, 1):
        fields = {DRAFT_FIELDS[name]: value for name, value in draft.model_dump(exclude={"kind", "cite"}).items()}
        if fields.get("frames") is not None:
            fields["frames"] = tuple(fields["frames"])
        cited = [book.resolve(h) for h in draft.cite]
        claims.append(Claim(id=f"c{k}", kind=draft.kind, evidence_ids=cited, **fields))
    return claims


def as_draft(claim: Claim, book: EvidenceBook) -> dict[str, Any]:
    """A claim in the form the LLM writes it (handles, short keys), to show it what failed."""
    handles = [handle(ev) if (ev := book.get(i)) else i for i in claim.evidence_ids]
    fields = {name: getattr(claim, field) for name, field in DRAFT_FIELDS.items()}
    if fields["frames"] is not None:
        fields["frames"] = list(fields["frames"])
    return {"kind": claim.kind, "cite": handles} | {k: v for k, v in fields.items() if v is not None}


def render(claim: Claim, book: EvidenceBook) -> str:
    """One sentence saying what ``claim`` states (and what the verifier checked)."""
    text = load_prompts("claims")
    index = book.index
    cited = [ev for ev_id in claim.evidence_ids if (ev := book.get(ev_id)) is not None]
    frame = cited[0].frame_index if cited else None
    when = f"at {frame / index.fps:.1f} s (frame {frame})" if frame is not None else ""
    subject = f"Track {claim.track_id}" if claim.track_id is not None else "The scene"
    if claim.kind == "measurement" and claim.track_id is None and claim.quantity in OBJECT_MEASURED:
        subject = "An object"
    if claim.kind == "object" and claim.track_id is None and cited and cited[0].text is not None:
        return text["caption"].format(frame=frame, term=claim.term, time_s=frame / index.fps)
    fields = claim.model_dump() | {"subject": subject, "when": when, "value": number(claim.value)}
    if claim.kind == "measurement" and claim.unit is None:  # the verifier compared in the measured unit
        fields["unit"] = next((m.unit for ev in cited if (m := _any_reading(ev, claim.quantity))), "")
    if claim.kind == "rule":
        rule = index.rule(claim.rule_id)
        return text["rule"].format(**fields, sentence=rule.sentence.rstrip(".") if rule is not None else "?")
    if claim.kind == "attribute":
        return text["attribute"].format(**fields | {"heading": text["headings"][claim.heading]})
    if claim.kind == "spatial":
        if claim.relation is not None:
            return text["spatial_relation"].format(**fields | {"relation": claim.relation.replace("_", " ")})
        return text["spatial_zone"].format(**fields)
    if claim.kind == "temporal":
        first, last = claim.frames
        return text["temporal"].format(first=first, last=last, start_s=first / index.fps, end_s=last / index.fps)
    if claim.kind == "place":
        return text["place"].format(**fields, place=f"the {claim.zone} zone" if claim.zone else claim.term)
    if claim.kind == "comparison":
        rule = index.rule(claim.rule_id) if claim.rule_id else None
        return text["comparison"].format(**fields, how_far=comparison_text(claim, rule))
    if claim.kind in ("tally", "appearance"):
        return _said_of_frames(claim, index, text)
    if claim.kind == "count":
        things = plural(claim.term or "object", claim.value or 0)
        return text["count_zone" if claim.zone else "count"].format(**fields, things=things)
    if claim.kind == "measurement" and claim.quantity == "speed":
        scale = index.rulebook.metres_per_pixel if index.rulebook is not None else None
        speed = said_speed(claim.value, fields["unit"], index.fps, scale)
        return text["measurement_speed"].format(**fields, speed=speed)
    if claim.kind == "measurement" and f"measurement_{claim.quantity}" in text:
        return text[f"measurement_{claim.quantity}"].format(**fields)
    return text[claim.kind].format(**fields)


def _said_of_frames(claim: Claim, index, text: dict) -> str:
    """A tally of events or an appearance: claims about a span of frames rather than one frame."""
    first, last = claim.frames or (0, 0)
    span = {"first": first, "last": last, "first_s": first / index.fps, "last_s": last / index.fps}
    n = round(claim.value)
    if claim.kind == "tally":
        events = "no anomalous event" if n == 0 else plural("anomalous event", n)
        if claim.rule_id is not None:
            rule = index.rule(claim.rule_id)
            sentence = rule.sentence.rstrip(".") if rule is not None else "?"
            return text["tally_rule"].format(rule_id=claim.rule_id, sentence=sentence, events=plural("event", n))
        whole = first == 0 and last == index.frames - 1
        return text["tally_video" if whole else "tally"].format(events=events[0].upper() + events[1:], **span)
    key = f"appearance_{claim.seen_by}" + ("_never" if n == 0 else "")
    return text[key].format(term=claim.term, frames=plural("frame", n), count=index.frames, **span)


def plural(noun: str, n: float) -> str:
    """``n`` and the noun, plural unless ``n`` is one ("1 person", "3 people", "2 bicycles")."""
    n = round(n)
    if n == 1:
        return f"1 {noun}"
    irregular = {"person": "people"}
    *head, last = noun.split()
    word = irregular.get(last, last if last.endswith("s") else f"{last}s")
    return f"{n} {' '.join([*head, word])}"


def _any_reading(evidence, quantity: str):
    """``quantity`` as ``evidence`` measured it, for the frame or for any object."""
    found = evidence.measurement(quantity)
    return found if found is not None else next(
        (m for i in range(len(evidence)) if (m := evidence.measurement(quantity, i)) is not None), None
    )


def object_phrase(evidence: Evidence, i: int, *, terse: bool = False) -> str:
    """What object ``i`` of ``evidence`` is, where it heads and its zone, from the evidence's typed fields: "a
    bicycle moving east in zone r2c1" for people, or ``terse`` for the LLM's digest: "bicycle heading E in zone
    r2c1"."""
    name = evidence.class_names[i] if evidence.class_names is not None else None
    parts = [(name or "unnamed object") if terse else named(name)]
    if evidence.headings is not None:
        heading = evidence.headings[i]
        parts.append(f"heading {heading}" if terse else load_prompts("claims")["headings"][heading])
    if evidence.zones is not None:
        parts.append(f"in zone {evidence.zones[i]}")
    return " ".join(parts)


def said_speed(value: float | None, unit: str | None, fps: float | None, scale: float | None = None) -> str:
    """A speed as people read it: per second (the verifier checks the claimed number in its own unit), and in m/s
    where a person gave the scale (metres per source pixel)."""
    per_second = {"px/frame": (value or 0.0) * fps if fps else None, "px/s": value or 0.0}.get(unit or "")
    if per_second is None:
        return f"{number(value)} {unit or ''}".strip()
    metres = f" (about {per_second * scale:.1f} m/s)" if scale else ""
    return f"{number(per_second)} px/s{metres}"


def number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
