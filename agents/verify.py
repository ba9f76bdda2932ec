"""The verifier: every claim is checked against the evidence it cites, and only what holds is said.

Checks, by the claim's kind (fields as documented on ``Claim``):

- every claim: each cited evidence id exists in the index (and, for an event, lies within its frames);
- ``rule``: the rule exists and a cited frame records it broken (by ``track_id``, when given);
- ``measurement``: the quantity is re-read from the cited evidence (converted to the claimed unit) and must
  agree within ``tolerance``;
- ``count``: the number of objects in the cited frame;
- ``object``/``attribute``: the term appears in the cited object's label, or (for a claim about the frame,
  not one object) in a cited caption, or a grounder (detector, CLIP) re-finds it in the frame;
- ``spatial``: a zone term is checked like an attribute; a relation is recomputed from the two boxes;
- ``temporal`` (anomalous activity during a frame range): the range overlaps an event (lies inside the event
  being explained, if any) and holds every cited frame;
- ``other``: nothing can check it, so it is ``unverifiable`` and never said.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from anomalens.agents.index import VideoIndex
from anomalens.agents.toolbox import mentions
from anomalens.types import Claim, Event, Evidence, Verdict

RELATIVE_TOLERANCE = 0.10
ABSOLUTE_TOLERANCE = {"px/frame": 0.2, "px/s": 2.0, "px": 2.0, "px^2": 10.0, "s": 0.2, "frames": 2.0, "ratio": 0.05}
TEMPORAL_SLACK = 2  # frames a temporal claim may miss a cited frame by


class Grounder(Protocol):
    """Re-finds a term in a frame (a detector or CLIP): True/False, or None when it cannot tell."""

    def ground(self, term: str, evidence: Evidence, box: Sequence[float] | None) -> bool | None: ...


def _supported(reason: str) -> Verdict:
    return Verdict(status="supported", reason=reason)


def _unsupported(reason: str) -> Verdict:
    return Verdict(status="unsupported", reason=reason)


def _breach(evidence: Evidence, claim: Claim) -> float | None:
    """The severity with which ``evidence`` records ``claim``'s rule broken (by its track, when it names one)."""
    for rule_id, severity, index in evidence.broken_rules():
        if rule_id == claim.rule_id and (claim.track_id is None or evidence.track_of(index) == claim.track_id):
            return severity
    return None


class Verifier:
    def __init__(self, index: VideoIndex, grounders: Sequence[Grounder] = (), tolerance: float = RELATIVE_TOLERANCE):
        self.index = index
        self.grounders = list(grounders)
        self.tolerance = tolerance

    def verify(self, claim: Claim, event: Event | None = None) -> Verdict:
        cited: list[Evidence] = []
        for evidence_id in claim.evidence_ids:
            evidence = self.index.get(evidence_id)
            if evidence is None:
                return _unsupported(f"cites {evidence_id}, which is not in the evidence")
            if event is not None and not event.start_frame <= (evidence.frame_index or 0) <= event.end_frame:
                span = f"{event.start_frame}-{event.end_frame}"
                return _unsupported(f"cites frame {evidence.frame_index}, outside the event's frames {span}")
            cited.append(evidence)
        check = getattr(self, f"_{claim.kind}")
        return check(claim, cited, event)

    # --- per kind ------------------------------------------------------------------------------------

    def _rule(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        if not claim.rule_id:
            return _unsupported("a rule claim must name the rule")
        if self.index.rule(claim.rule_id) is None:
            if any(ev.measurement(claim.rule_id) is not None for ev in cited):  # a quantity named as a rule
                return _unsupported(
                    f"there is no rule {claim.rule_id}; {claim.rule_id} is a measurement: claim it as kind measurement"
                )
            return _unsupported(f"there is no rule {claim.rule_id}")
        for evidence in cited:
            severity = _breach(evidence, claim)
            if severity is not None:
                return _supported(f"frame {evidence.frame_index} records {claim.rule_id} broken ({severity:.2f}x)")
        who = f" by track {claim.track_id}" if claim.track_id is not None else ""
        recorded = self._recorded_in(event, lambda evidence: _breach(evidence, claim) is not None)
        hint = f"; {recorded} records it" if recorded else ""  # a revision that cites it can be supported
        return _unsupported(f"no cited frame records {claim.rule_id} broken{who}{hint}")

    def _recorded_in(self, event: Event | None, holds: Callable[[Evidence], bool]) -> str | None:
        """The handle of the event's first frame (its cited frames, then its peak) where ``holds``, if any."""
        if event is None:
            return None
        frames = [self.index.get(evidence_id) for evidence_id in event.evidence_ids]
        try:
            frames.append(self.index.frame_evidence(event.peak_frame))
        except KeyError:  # the peak frame's evidence was not kept
            pass
        return next((self.index.handle(ev) for ev in frames if ev is not None and holds(ev)), None)

    def _readings(self, claim: Claim, evidence: Evidence) -> list[tuple[float | None, str]]:
        """``claim``'s quantity as ``evidence`` measured it (for the claim's track; without one, for the frame
        and every object), each as (value in the claim's unit or None when it does not convert, unit)."""
        if claim.track_id is not None:
            index = evidence.object_of(claim.track_id)
            candidates = [] if index is None else [index]
        else:
            candidates = [None, *range(len(evidence))]
        readings = []
        for index in candidates:
            if (m := evidence.measurement(claim.quantity, index)) is not None:
                readings.append((self._convert(m.value, m.unit, claim.unit or m.unit), m.unit))
        return readings

    def _agrees(self, claim: Claim, value: float, unit: str) -> bool:
        return abs(claim.value - value) <= max(self.tolerance * abs(value), ABSOLUTE_TOLERANCE.get(unit, 0.0))

    def _measurement(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        if not claim.quantity or claim.value is None:
            return _unsupported("a measurement claim needs a quantity and a value")
        measured = []
        for evidence in cited:
            for value, measured_unit in self._readings(claim, evidence):
                if value is None:
                    return _unsupported(f"{claim.quantity} is measured in {measured_unit}, not {claim.unit}")
                unit = claim.unit or measured_unit
                measured.append((evidence, value, unit))
                if self._agrees(claim, value, unit):
                    return _supported(f"re-measured {value:.3g} {unit} at frame {evidence.frame_index}")
        if not measured:
            if claim.track_id is None:
                return _unsupported(f"no cited frame measured {claim.quantity}")
            whole_frame = any(ev.measurement(claim.quantity) is not None for ev in cited)
            hint = f"; {claim.quantity} is measured for the whole frame: claim it without track" if whole_frame else ""
            return _unsupported(f"no cited frame measured track {claim.track_id}'s {claim.quantity}{hint}")
        evidence, value, unit = measured[0]

        def agrees_in(other: Evidence) -> bool:
            readings = self._readings(claim, other)
            return any(v is not None and self._agrees(claim, v, claim.unit or u) for v, u in readings)

        recorded = self._recorded_in(event, agrees_in)
        hint = f"; {recorded} measured {claim.value:g}" if recorded else ""  # a revision that cites it can pass
        found = f"re-measured {value:.3g} {unit} at frame {evidence.frame_index}"
        return _unsupported(f"{found}, not {claim.value:g}{hint}")

    def _count(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        frames = [ev for ev in cited if ev.source.tool != "caption"]
        if claim.value is None:
            return _unsupported("a count claim needs a value")
        if not frames:
            return _unsupported("a count claim must cite a frame's measured objects (F<frame>), not a caption")
        for evidence in frames:
            if round(claim.value) == len(evidence):
                return _supported(f"{len(evidence)} objects at frame {evidence.frame_index}")
        return _unsupported(f"frame {frames[0].frame_index} has {len(frames[0])} objects, not {claim.value:g}")

    def _object(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        if not claim.term:
            return _unsupported(f"an {claim.kind} claim must say what was seen (term)")
        for evidence in cited:
            # A caption describes the whole frame: it grounds what is in view, not what one tracked object is.
            if evidence.text is not None and claim.track_id is None and mentions(evidence.text, claim.term):
                return _supported(f"the caption of frame {evidence.frame_index} mentions {claim.term!r}")
            for i, label in enumerate(evidence.labels):
                if claim.track_id is not None and evidence.track_of(i) != claim.track_id:
                    continue
                if mentions(label, claim.term):
                    return _supported(f"frame {evidence.frame_index}: {label}")
        for evidence in cited:
            box = None
            if claim.track_id is not None and (i := evidence.object_of(claim.track_id)) is not None:
                box = evidence.boxes[i].tolist()
            for grounder in self.grounders:
                found = grounder.ground(claim.term, evidence, box)
                if found is not None:
                    name = type(grounder).__name__
                    verdict = _supported if found else _unsupported
                    return verdict(f"{name} {'re-found' if found else 'did not find'} {claim.term!r}")
        who = f"track {claim.track_id}" if claim.track_id is not None else "the cited evidence"
        if claim.track_id is not None and any(ev.text and mentions(ev.text, claim.term) for ev in cited):
            return _unsupported(f"the caption mentions {claim.term!r}, not which object it is: claim it without track")
        return _unsupported(f"{claim.term!r} is not what {who} shows")

    _attribute = _object

    def _spatial(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        if claim.relation is None:
            return self._object(claim, cited, event)
        if claim.track_id is None or claim.other_track_id is None:
            return _unsupported("a relation needs track_id and other_track_id")
        for evidence in cited:
            a, b = evidence.object_of(claim.track_id), evidence.object_of(claim.other_track_id)
            if a is None or b is None:
                continue
            (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = evidence.boxes[a], evidence.boxes[b]
            holds = {
                "left_of": (ax1 + ax2) < (bx1 + bx2),
                "right_of": (ax1 + ax2) > (bx1 + bx2),
                "above": (ay1 + ay2) < (by1 + by2),
                "below": (ay1 + ay2) > (by1 + by2),
            }[claim.relation]
            verdict = _supported if holds else _unsupported
            return verdict(
                f"boxes at frame {evidence.frame_index}: track {claim.track_id} is "
                f"{'' if holds else 'not '}{claim.relation.replace('_', ' ')} track {claim.other_track_id}"
            )
        return _unsupported(f"no cited frame shows both track {claim.track_id} and track {claim.other_track_id}")

    def _temporal(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        if claim.frames is None:
            return _unsupported("a temporal claim needs frames [first, last]")
        first, last = claim.frames
        if first > last:
            return _unsupported(f"frames {first}-{last} end before they start")
        if event is not None and (
            first < event.start_frame - TEMPORAL_SLACK or last > event.end_frame + TEMPORAL_SLACK
        ):
            return _unsupported(
                f"frames {first}-{last} reach outside the event ({event.start_frame}-{event.end_frame})"
            )
        if not any(e.start_frame <= last and first <= e.end_frame for e in self.index.events):
            return _unsupported(f"no anomalous event overlaps frames {first}-{last}")
        outside = [
            ev.frame_index
            for ev in cited
            if not first - TEMPORAL_SLACK <= (ev.frame_index or 0) <= last + TEMPORAL_SLACK
        ]
        if outside:
            return _unsupported(f"cited frame {outside[0]} is not within frames {first}-{last}")
        return _supported(f"cited frames lie within {first}-{last}")

    def _other(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        return Verdict(status="unverifiable", reason="no check exists for this kind of claim")

    # --- helpers -------------------------------------------------------------------------------------

    def _convert(self, value: float, unit: str, wanted: str) -> float | None:
        """``value`` from ``unit`` into ``wanted`` (per frame <-> per second, seconds <-> frames), or None."""
        if unit == wanted:
            return value
        fps = self.index.fps
        factors = {
            ("px/frame", "px/s"): fps,
            ("px/s", "px/frame"): 1 / fps,
            ("s", "frames"): fps,
            ("frames", "s"): 1 / fps,
        }
        factor = factors.get((unit, wanted))
        return None if factor is None else value * factor
