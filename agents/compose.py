"""From the LLM's draft to ``Claim`` objects, and from verified claims to prose.

The prose of a claim is rendered from its checked fields (``prompts/claims.yaml``), never copied from the
LLM, so no unverified word reaches the reader.
"""

from __future__ import annotations

from anomalens.agents.index import VideoIndex
from anomalens.agents.toolbox import OBJECT_QUANTITIES, DraftClaim
from anomalens.prompts import load as load_prompts
from anomalens.types import Claim


def claims_from_draft(drafts: list[DraftClaim], index: VideoIndex) -> list[Claim]:
    """Claims citing evidence ids (handles resolved; an unknown handle stays as written, for the verifier)."""
    return [
        Claim(
            id=f"c{k}",
            kind=d.kind,
            evidence_ids=[index.resolve(handle) for handle in d.cite],
            # Each kind's draft has only its own fields: the rest stay None.
            rule_id=getattr(d, "rule", None),
            track_id=getattr(d, "track", None),
            quantity=getattr(d, "quantity", None),
            value=getattr(d, "value", None),
            unit=getattr(d, "unit", None),
            term=getattr(d, "term", None),
            relation=getattr(d, "relation", None),
            other_track_id=getattr(d, "other_track", None),
            frames=tuple(d.frames) if getattr(d, "frames", None) else None,
        )
        for k, d in enumerate(drafts, 1)
    ]


def render(claim: Claim, index: VideoIndex) -> str:
    """One sentence saying what ``claim`` states (and what the verifier checked)."""
    text = load_prompts("claims")
    cited = [ev for ev_id in claim.evidence_ids if (ev := index.get(ev_id)) is not None]
    frame = cited[0].frame_index if cited else None
    when = f"at {frame / index.fps:.1f} s (frame {frame})" if frame is not None else ""
    subject = f"Track {claim.track_id}" if claim.track_id is not None else "The scene"
    if claim.kind == "measurement" and claim.track_id is None and claim.quantity in OBJECT_QUANTITIES:
        subject = "An object"
    if claim.kind in ("object", "attribute") and claim.track_id is None and cited and cited[0].text is not None:
        return text["caption"].format(frame=frame, term=claim.term, time_s=frame / index.fps)
    fields = claim.model_dump() | {"subject": subject, "when": when, "value": _number(claim.value)}
    if claim.kind == "measurement" and claim.unit is None:  # the verifier compared in the measured unit
        fields["unit"] = next((m.unit for ev in cited for m in ev.measurements if m.name == claim.quantity), "")
    if claim.kind == "rule":
        rule = index.rule(claim.rule_id)
        return text["rule"].format(**fields, sentence=rule.sentence.rstrip(".") if rule is not None else "?")
    if claim.kind == "spatial":
        if claim.relation is not None:
            return text["spatial_relation"].format(**fields | {"relation": claim.relation.replace("_", " ")})
        return text["spatial_term"].format(**fields)
    if claim.kind == "temporal":
        first, last = claim.frames
        return text["temporal"].format(first=first, last=last, start_s=first / index.fps, end_s=last / index.fps)
    if claim.kind == "measurement" and f"measurement_{claim.quantity}" in text:
        return text[f"measurement_{claim.quantity}"].format(**fields)
    return text[claim.kind].format(**fields)


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
