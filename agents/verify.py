"""The verifier: every claim is checked against the evidence it cites, and only what holds is said.

Checks, by the claim's kind (fields as described in ``prompts/claims.yaml``), always against typed fields of
the evidence, never against display labels:

- every claim: each cited evidence id exists (in the index or among what the agent produced) and, for an
  event, lies within its frames;
- ``rule``: the rule exists and a cited frame records it broken (by ``track_id``, when given);
- ``measurement``: the quantity is read back from the cited evidence (converted to the claimed unit) and must
  agree within ``tolerance``;
- ``count``: the number of objects (of the claimed class, when it names one) in the cited frame;
- ``object``: the term is the cited object's class (``class_names``), or, for a claim about the frame rather
  than one object, a cited caption mentions it; else a grounder (detector, CLIP) looks at the frame again;
- ``attribute``: the heading is the one the cited frame recorded for the track (``headings``);
- ``spatial``: the zone is the one recorded for the track (``zones``); a relation is recomputed from the boxes;
- ``temporal`` (anomalous activity during a frame range): the range overlaps an event (lies inside the event
  being explained, if any) and holds every cited frame;
- ``tally`` (how many events in a frame range, breaking a rule when it names one): counted in the index;
- ``appearance`` (in how many frames a class, caption words or an activity was seen, first and last): the
  sightings are read again from the whole index, and the first of them must be cited;
- ``other``: nothing can check it, so it is ``unverifiable`` and never said.

A claim that fails is told, where it helps, which of the event's frames would support it, so a revision can
cite it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from anomalens.agents.headline import how_far, place_of
from anomalens.agents.index import EvidenceBook, VideoIndex, handle
from anomalens.agents.sightings import activities, same_class, sighted_frames
from anomalens.geometry import box_iou
from anomalens.tools.captions import mentions
from anomalens.tools.protocols import Detector, TextScorer
from anomalens.types import Claim, Event, Evidence, Verdict

# A number agrees within 5%, or within the rounding of the digests' two decimals (of a tenth of a second, of whole
# pixels and frames): an LLM that copies or rounds a digest's number stays within them; a number 10% off does
# not, down to 0.2 px/frame (``eval verifier``).
RELATIVE_TOLERANCE = 0.05
ABSOLUTE_TOLERANCE = {"px/frame": 0.01, "px/s": 0.1, "px": 0.5, "px^2": 5.0, "s": 0.05, "frames": 0.5, "ratio": 0.01}
TEMPORAL_SLACK = 2  # frames a temporal claim may miss a cited frame by
GROUND_BOX_THRESHOLD = 0.35  # Grounding DINO's published box threshold
GROUND_MIN_IOU = 0.3  # a detection re-finds a claimed object when it overlaps the object's box this much
CLIP_DECISIVE = 0.6  # CLIP confirms a term at >= 0.6 probability against a neutral text, refutes at <= 0.4
CLIP_NEUTRAL = "a photo of something else"


class Grounder(Protocol):
    """Looks at the frame again for a term (a detector or CLIP): True/False, or None when it cannot tell."""

    def ground(self, term: str, evidence: Evidence, box: Sequence[float] | None) -> bool | None: ...


class DetectorGrounder:
    """Re-finds a term with a detector: in the claimed object's box, or anywhere in the frame."""

    def __init__(
        self, detector: Detector, frames: Callable[[int], np.ndarray], threshold: float = GROUND_BOX_THRESHOLD
    ):
        self.detector, self.frames, self.threshold = detector, frames, threshold

    def ground(self, term: str, evidence: Evidence, box: Sequence[float] | None) -> bool | None:
        if evidence.frame_index is None or not self.detector.knows(term):
            return None  # a detector cannot refute what it was never taught to find
        found = self.detector.detect(self.frames(evidence.frame_index), [term], box_threshold=self.threshold)
        if box is None or not len(found):
            return len(found) > 0
        return bool((box_iou(np.asarray([box], float), found.boxes) >= GROUND_MIN_IOU).any())


class ClipGrounder:
    """Asks CLIP whether the term describes the object's crop (or the frame) better than a neutral text;
    undecided in between."""

    def __init__(self, clip: TextScorer, frames: Callable[[int], np.ndarray], decisive: float = CLIP_DECISIVE):
        self.clip, self.frames, self.decisive = clip, frames, decisive

    def ground(self, term: str, evidence: Evidence, box: Sequence[float] | None) -> bool | None:
        if evidence.frame_index is None:
            return None
        image = self.frames(evidence.frame_index)
        boxes = None if box is None else np.asarray([box], float)
        scored = self.clip.text_scores(image, [f"a photo of {term}", CLIP_NEUTRAL], boxes=boxes)
        probability = scored.scores[0] if scored.class_names[0] != CLIP_NEUTRAL else 1 - scored.scores[0]
        if probability >= self.decisive:
            return True
        return False if probability <= 1 - self.decisive else None


def grounders(detector: Detector | None, clip: TextScorer | None, frames: Callable[[int], np.ndarray] | None) -> list:
    """The detector first (it localises), then CLIP; none without frames to look at."""
    if frames is None:
        return []
    found: list[Grounder] = []
    if detector is not None:
        found.append(DetectorGrounder(detector, frames))
    if clip is not None:
        found.append(ClipGrounder(clip, frames))
    return found


def _supported(reason: str) -> Verdict:
    return Verdict(status="supported", reason=reason)


def _unsupported(reason: str) -> Verdict:
    return Verdict(status="unsupported", reason=reason)


def _breach(evidence: Evidence, claim: Claim) -> float | None:
    """The severity with which ``evidence`` records ``claim``'s rule broken (by its track, when it names one)."""
    for breach in evidence.breaches():
        if breach.rule_id == claim.rule_id and (
            claim.track_id is None or evidence.track_of(breach.object_index) == claim.track_id
        ):
            return breach.severity
    return None


class Verifier:
    def __init__(self, index: VideoIndex, grounders: Sequence[Grounder] = (), tolerance: float = RELATIVE_TOLERANCE):
        self.index = index
        self.grounders = list(grounders)
        self.tolerance = tolerance

    def verify(self, claim: Claim, event: Event | None = None, book: EvidenceBook | None = None) -> Verdict:
        """``claim``'s verdict; its citations are looked up in ``book`` (default: the index alone)."""
        book = book or EvidenceBook(self.index)
        cited: list[Evidence] = []
        for evidence_id in claim.evidence_ids:
            evidence = book.get(evidence_id)
            if evidence is None:
                hint = self._nearest(evidence_id, event)
                return _unsupported(f"cites {evidence_id}, which is not in the evidence{hint}")
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
        frames.append(self.index.frame_evidence(event.peak_frame))
        return next((handle(ev) for ev in frames if ev is not None and holds(ev)), None)

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
                    return _supported(f"frame {evidence.frame_index} recorded {value:.3g} {unit}")
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
        hint = f"; {recorded} recorded {claim.value:g}" if recorded else ""  # a revision that cites it can pass
        return _unsupported(f"frame {evidence.frame_index} recorded {value:.3g} {unit}, not {claim.value:g}{hint}")

    def _count(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        frames = [ev for ev in cited if ev.text is None]
        if claim.value is None:
            return _unsupported("a count claim needs a value")
        if not frames:
            return _unsupported("a count claim must cite a frame's measured objects (F<frame>), not a caption")
        what = f"{claim.term} objects" if claim.term else "objects"
        counted = []
        for evidence in frames:
            tracks = self.index.in_view(evidence.frame_index)
            if claim.zone is not None:  # standing in a zone: only tracks know where each object stood
                if tracks is None:
                    return _unsupported("this index does not hold every track: a count in a zone cannot be checked")
                frame = evidence.frame_index
                tracks = [t for t in tracks if t.fact("zone", frame, last_seen=True) == claim.zone]
                what += f" in zone {claim.zone}"
            if tracks is not None:  # the objects in view: tracks, not one frame's detections
                names = [t.class_name for t in tracks]
            elif claim.term is not None and evidence.class_names is None:
                return _unsupported(f"frame {evidence.frame_index} names no objects: claim the count without term")
            else:
                names = evidence.class_names or [None] * len(evidence)
            if claim.term is None:
                n = len(names)
            else:
                n = sum(c is not None and same_class(claim.term, c) for c in names)
            if round(claim.value) == n:
                return _supported(f"{n} {what} at frame {evidence.frame_index}")
            counted.append(n)
        return _unsupported(f"frame {frames[0].frame_index} has {counted[0]} {what}, not {claim.value:g}")

    def _tally(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        if claim.frames is None or claim.value is None:
            return _unsupported("a tally claim needs frames [first, last] and a value (the number of events)")
        if claim.rule_id is not None and self.index.rule(claim.rule_id) is None:
            return _unsupported(f"there is no rule {claim.rule_id}")
        first, last = claim.frames
        counted = [
            e for e in self.index.events
            if e.start_frame <= last and first <= e.end_frame and (claim.rule_id is None or claim.rule_id in e.rule_ids)
        ]
        what = f"events breaking {claim.rule_id}" if claim.rule_id else "events"
        if round(claim.value) != len(counted):
            return _unsupported(f"frames {first}-{last} hold {len(counted)} {what}, not {claim.value:g}")
        return _supported(f"frames {first}-{last} hold {len(counted)} {what}")

    def _appearance(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        if not claim.term or claim.seen_by is None or claim.value is None:
            return _unsupported("an appearance claim needs a term, what saw it (seen_by) and a value (frames)")
        if claim.seen_by == "activity" and claim.term not in activities():
            return _unsupported(f"{claim.term!r} is not an activity (activities: {', '.join(activities())})")
        seen = sighted_frames(self.index, claim.term, claim.seen_by)
        if round(claim.value) != len(seen):
            return _unsupported(f"{claim.term!r} was seen in {len(seen)} frames, not {claim.value:g}")
        if not seen:
            return _supported(f"no frame shows {claim.term!r}")
        if claim.frames != (seen[0], seen[-1]):
            return _unsupported(f"{claim.term!r} was first seen at frame {seen[0]} and last at {seen[-1]}")
        if not any(ev.frame_index == seen[0] for ev in cited):
            return _unsupported(f"cite frame {seen[0]}, where {claim.term!r} was first seen")
        return _supported(f"{claim.term!r} seen in {len(seen)} frames, {seen[0]}-{seen[-1]}")

    def _objects(self, claim: Claim, evidence: Evidence) -> list[int]:
        """The cited objects of ``evidence``: the claim's track, or every object when it names none."""
        if claim.track_id is None:
            return list(range(len(evidence)))
        index = evidence.object_of(claim.track_id)
        return [] if index is None else [index]

    def _object(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        if not claim.term:
            return _unsupported("an object claim must say what was seen (term)")
        for evidence in cited:
            # A caption describes the whole frame: it grounds what is in view, not what one tracked object is.
            if evidence.text is not None and claim.track_id is None and mentions(evidence.text, claim.term):
                return _supported(f"the caption of frame {evidence.frame_index} mentions {claim.term!r}")
            for i in self._objects(claim, evidence) if evidence.class_names is not None else []:
                if evidence.class_names[i] is not None and same_class(claim.term, evidence.class_names[i]):
                    return _supported(f"frame {evidence.frame_index}: an object of class {evidence.class_names[i]!r}")
            # What a track is: the class its detections voted for over all its frames, one frame's miss or slip aside.
            track = self.index.track(claim.track_id) if claim.track_id is not None else None
            if track is not None and track.class_name and evidence.object_of(track.id) is not None:
                if same_class(claim.term, track.class_name):
                    return _supported(f"frame {evidence.frame_index}: track {track.id}, seen as {track.class_name!r}")
        for evidence in cited:
            box = None
            if claim.track_id is not None and evidence.track_ids is not None:
                if (i := evidence.object_of(claim.track_id)) is None:
                    continue  # the track is not in this frame: whatever a grounder finds there is something else
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
        said = self._caption_saying(claim.term, [ev.frame_index for ev in cited], event)
        hint = f"; C{said} mentions it: cite C{said}, without track" if said is not None else ""
        return _unsupported(f"{claim.term!r} is not what {who} shows{hint}")

    def _caption_saying(self, term: str, frames: list[int | None], event: Event | None) -> int | None:
        """The first frame (of ``frames``, then of the event) whose caption mentions ``term``, if any."""
        candidates = [f for f in frames if f is not None]
        if event is not None:
            candidates += range(event.start_frame, event.end_frame + 1)
        return next(
            (k for k in candidates if (caption := self.index.caption(k)) is not None and mentions(caption.text, term)),
            None,
        )

    def _nearest(self, cited: str, event: Event | None) -> str:
        """For a frame handle with no evidence: the event's nearest frame that has some (a revision can cite it)."""
        match = re.fullmatch(r"F([0-9]+)", cited.strip())
        if match is None or event is None:
            return ""
        frame = int(match[1])
        kept = [k for k in range(event.start_frame, event.end_frame + 1) if self.index.frame_evidence(k) is not None]
        if not kept:
            return ""
        return f"; the event's nearest frame with evidence is F{min(kept, key=lambda k: abs(k - frame))}"

    def _recorded_field(self, claim: Claim, cited: list[Evidence], field: str, value: str) -> Verdict:
        """A per-object field (``headings``, ``zones``) of the claim's track, read back from the cited frames."""
        what = field[:-1]
        if claim.track_id is None:
            return _unsupported(f"a {what} claim must name the track")
        seen = []
        for evidence in cited:
            recorded = getattr(evidence, field)
            i = evidence.object_of(claim.track_id)
            if recorded is None or i is None:
                continue
            if recorded[i] == value:
                return _supported(f"frame {evidence.frame_index} recorded track {claim.track_id}'s {what} {value}")
            seen.append(f"{recorded[i]} at frame {evidence.frame_index}")
        if not seen:
            return _unsupported(f"no cited frame recorded track {claim.track_id}'s {what}")
        return _unsupported(f"track {claim.track_id}'s {what} was {seen[0]}, not {value}")

    def _attribute(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        if claim.heading is None:
            return _unsupported("an attribute claim must give the heading")
        return self._recorded_field(claim, cited, "headings", claim.heading)

    def _spatial(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        if claim.relation is None:
            if claim.zone is None:
                return _unsupported("a spatial claim needs a zone or a relation")
            return self._recorded_field(claim, cited, "zones", claim.zone.removeprefix("zone ").strip())
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

    def _subject_in(self, claim: Claim, cited: list[Evidence]) -> tuple[Evidence, int] | None:
        """The first cited frame that holds the claim's track, and the track's index there."""
        for evidence in cited:
            if claim.track_id is not None and (position := evidence.object_of(claim.track_id)) is not None:
                return evidence, position
        return None

    def _place(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        found = self._subject_in(claim, cited)
        if found is None:
            return _unsupported(f"no cited frame holds track {claim.track_id}")
        evidence, position = found
        zone, plain = place_of(evidence, position, self.index.source_size)
        if (claim.zone, claim.term) == (zone, plain):
            return _supported(f"frame {evidence.frame_index}: track {claim.track_id} was in {zone or plain}")
        return _unsupported(f"frame {evidence.frame_index}: track {claim.track_id} was in {zone or plain}")

    def _comparison(self, claim: Claim, cited: list[Evidence], event: Event | None) -> Verdict:
        found = self._subject_in(claim, cited)
        if found is None or not claim.quantity:
            return _unsupported(f"no cited frame holds track {claim.track_id}")
        evidence, position = found
        measured = evidence.measurement(claim.quantity, position)
        if claim.rule_id is None:  # against the normal footage's own edge (novelty, look: 1.0 is the edge)
            ratio = measured.value if measured is not None else None
        else:
            rule = self.index.rule(claim.rule_id)
            if rule is None or rule.predicate.fact != claim.quantity:
                return _unsupported(f"there is no rule {claim.rule_id} on {claim.quantity}")
            if not any(b.rule_id == rule.id and b.object_index == position for b in evidence.breaches()):
                who = f"track {claim.track_id}"
                return _unsupported(f"frame {evidence.frame_index} records no breach of {rule.id} by {who}")
            ratio = how_far(rule, measured.value if measured is not None else None)
        if ratio is None or claim.value is None:
            verdict = _supported if ratio is None and claim.value is None else _unsupported
            return verdict(f"frame {evidence.frame_index}: {claim.quantity} has {'no' if ratio is None else 'a'} ratio")
        if abs(claim.value - ratio) <= max(self.tolerance * ratio, 0.05):
            return _supported(f"frame {evidence.frame_index}: {ratio:.2f} times normal")
        return _unsupported(f"frame {evidence.frame_index}: {ratio:.2f} times normal, not {claim.value:g}")

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
