"""Explanation quality on UCSD Ped2: the agent explains the events screening finds, and an independent
checker judges every claim against the raw evidence, the caption files and the ground truth.

The checker shares no code with the agent's verifier: it reads measurements, rule records, labels and
caption lines itself, and it is stricter where ground truth exists (a temporal claim must overlap frames
labelled anomalous). ``unsupported_before`` is its verdict on the agent's first drafts, ``unsupported_after``
on what the agent finally said; the gap is what verification bought.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import cv2
import numpy as np

from anomalens.agents.claims import fact_classes
from anomalens.errors import AnomalensError
from anomalens.report import true_runs
from anomalens.tools.coco import coco_class
from anomalens.types import Claim, Evidence, Explanation, MeasurementKind, Rulebook, Track

PED2_FPS = 10.0
TOLERANCE = 0.10  # relative, for numbers
TEMPORAL_IOU = 0.5


def _words(text: str) -> set[str]:
    """The words of ``text``, plurals folded to the singular (crudely: a final s dropped)."""
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in re.findall(r"[a-z0-9]+", text.lower())}


def judge(
    claim: Claim, evidence: dict[str, Evidence], captions: list[str], labels: np.ndarray,
    followed: list[Track] | None = None, rulebook: Rulebook | None = None,
) -> bool:  # fmt: skip
    """True when ``claim`` holds by the raw records (and, for time ranges, by the ground truth). ``followed``: every
    object of the video (the tracks followed long enough to be one), when the records hold them all: a count is
    then of the objects in view (from their first to their last sighting), not of one frame's boxes. ``rulebook``:
    the scene's, which a comparison with normal footage is read against."""
    cited = [evidence.get(i) for i in claim.evidence_ids]
    if not cited or any(ev is None for ev in cited):
        return False

    def objects(ev: Evidence) -> list[int]:
        ids = [] if ev.track_ids is None else [int(t) for t in ev.track_ids]
        return [k for k, t in enumerate(ids) if claim.track_id is None or t == claim.track_id]

    if claim.kind == "rule":
        return any(
            m.kind is MeasurementKind.RULE_SEVERITY
            and m.name == claim.rule_id
            and m.value > 1.0
            and (claim.track_id is None or m.object_index in objects(ev))
            for ev in cited
            for m in ev.measurements
        )
    if claim.kind == "measurement":
        for ev in cited:
            for m in ev.measurements:
                if m.kind is not MeasurementKind.QUANTITY or m.name != claim.quantity:
                    continue
                if claim.track_id is not None and m.object_index not in objects(ev):
                    continue
                value = m.value * (PED2_FPS if (m.unit, claim.unit) == ("px/frame", "px/s") else 1.0)
                if claim.unit not in (None, m.unit, "px/s"):
                    continue
                if abs(value - (claim.value or 0.0)) <= max(TOLERANCE * abs(value), 0.25):
                    return True
        return False
    if claim.kind == "count":
        wanted = _words(claim.term or "")

        def counted(ev: Evidence) -> int:
            if followed is not None:
                names = [t.class_name for t in followed if t.frames[0] <= ev.frame_index <= t.frames[-1]]
            else:
                names = ev.class_names or [None] * len(ev.boxes)
            return sum(not wanted or (c is not None and _words(c) == wanted) for c in names)

        return any(ev.text is None and counted(ev) == round(claim.value or -1) for ev in cited)
    if claim.kind == "object":
        wanted = _words(claim.term or "")
        for ev in cited:
            if ev.text is not None and claim.track_id is None and ev.frame_index < len(captions):
                if wanted and wanted <= _words(captions[ev.frame_index]):
                    return True
            if ev.class_names is not None and any(wanted and wanted == _words(ev.class_names[k]) for k in objects(ev)):
                return True
        return False
    if claim.kind == "attribute":
        return any(ev.headings is not None and claim.heading in [ev.headings[k] for k in objects(ev)] for ev in cited)
    if claim.kind == "spatial" and claim.relation is None:
        zone = (claim.zone or "").removeprefix("zone ").strip()
        return any(ev.zones is not None and any(ev.zones[k] == zone for k in objects(ev)) for ev in cited)
    if claim.kind == "spatial":
        for ev in cited:
            ids = [] if ev.track_ids is None else [int(t) for t in ev.track_ids]
            if claim.track_id in ids and claim.other_track_id in ids:
                a, b = ev.boxes[ids.index(claim.track_id)], ev.boxes[ids.index(claim.other_track_id)]
                centre_a, centre_b = (a[:2] + a[2:]) / 2, (b[:2] + b[2:]) / 2
                return {
                    "left_of": centre_a[0] < centre_b[0],
                    "right_of": centre_a[0] > centre_b[0],
                    "above": centre_a[1] < centre_b[1],
                    "below": centre_a[1] > centre_b[1],
                }[claim.relation]
        return False
    if claim.kind == "place":
        held = [_place(ev, k) for ev in cited for k in objects(ev)]
        return claim.track_id is not None and (claim.zone, claim.term) in held
    if claim.kind == "comparison" and claim.track_id is not None:
        return any(_compares(claim, ev, k, rulebook) for ev in cited for k in objects(ev))
    if claim.kind == "temporal" and claim.frames is not None:
        first, last = claim.frames
        return bool(labels[max(first, 0) : last + 1].any())
    return False


def _place(ev: Evidence, k: int) -> tuple[str | None, str | None]:
    """Where object ``k`` was: a zone a person named, else which third of the view across and down its centre is in
    (written here again, apart from the agent's code, as the judge of its headlines)."""
    if ev.zones is not None and not re.fullmatch(r"r\d+c\d+", ev.zones[k]):
        return ev.zones[k], None
    width, height = ev.frame_size
    x1, y1, x2, y2 = ev.boxes[k]
    across = ("left", "middle", "right")[min(int(1.5 * (x1 + x2) / width), 2)]
    down = ("upper", "middle", "lower")[min(int(1.5 * (y1 + y2) / height), 2)]
    if across == down == "middle":
        return None, "the middle of the view"
    return None, f"the {across} side of the view" if down == "middle" else f"the {down} {across} of the view"


def _compares(claim: Claim, ev: Evidence, k: int, rulebook: Rulebook | None) -> bool:
    """A comparison with normal: the object's measured value over the most the normal footage reached (the rule's
    ``max``, else its limit; under a lower limit, the limit over the value), or its novelty (1.0: the edge of
    normal); None: the rule's fact has no number (a zone nothing entered)."""
    measured = next((m.value for m in ev.measurements if m.name == claim.quantity and m.object_index == k), None)
    if claim.rule_id is None:
        ratio = measured
    else:
        rule = next((r for r in rulebook.rules if r.id == claim.rule_id), None) if rulebook is not None else None
        broken = any(m.kind is MeasurementKind.RULE_SEVERITY and m.name == claim.rule_id and m.object_index == k
                     and m.value > 1.0 for m in ev.measurements)  # fmt: skip
        if rule is None or not broken or rule.predicate.fact != claim.quantity:
            return False
        limit = rule.predicate.value
        numeric = isinstance(limit, (int, float)) and not isinstance(limit, bool) and measured is not None
        if not numeric:
            ratio = None
        elif rule.predicate.op in ("<=", "<"):
            ratio = measured / (rule.stats.get("max") or limit)
        else:
            ratio = limit / measured if measured else None
    if ratio is None or claim.value is None:
        return ratio is None and claim.value is None
    return abs(ratio - claim.value) <= max(TOLERANCE * ratio, 0.05)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def box_mask_iou(box: np.ndarray, mask: np.ndarray) -> float:
    """IoU of a filled xyxy box with a boolean mask (same image)."""
    x1, y1, x2, y2 = np.round(box).astype(int)
    region = np.zeros_like(mask)
    region[max(y1, 0) : y2, max(x1, 0) : x2] = True
    union = np.logical_or(region, mask).sum()
    return float(np.logical_and(region, mask).sum() / union) if union else 0.0


def run_explanations(
    data: str | Path, llm, *, captions: bool = True, max_events: int | None = None, progress: bool = True
) -> dict:
    """Learn Ped2's scene, screen its test videos, explain every event with ``llm``, judge the claims.

    With ``captions``, screening also reasons over the replayed captions with the rules AnomalyRuler published
    for Ped2 (``vlm_captions/ped2/published_rules.txt``), as ``audit --caption-rules`` does."""
    from anomalens.agents.graph import explain_events
    from anomalens.eval.ped2 import _videos
    from anomalens.pipelines import learn_scene
    from anomalens.agents.index import VideoIndex
    from anomalens.pipelines.audit import screen_video
    from anomalens.pipelines.captions import caption_cue, caption_rulebook, sentence_embedder
    from anomalens.tools.caption_scoring import CaptionScorer
    from anomalens.tools.captions import ReplayedCaptions

    data = Path(data)
    ped2, caption_dir = data / "ucsd_ped2", data / "vlm_captions" / "ped2" / "captions"
    if not (ped2 / "labels.json").is_file() or not caption_dir.is_dir():
        raise AnomalensError(f"{data}: needs ucsd_ped2/ and vlm_captions/ped2/ (see its README.md)")
    labels = json.loads((ped2 / "labels.json").read_text())
    started = time.perf_counter()
    rules = data / "vlm_captions" / "ped2" / "published_rules.txt"
    caption_scorer = CaptionScorer(caption_rulebook(rules), sentence_embedder()) if captions else None
    screening_llm_calls = 0
    scene = learn_scene(_videos(ped2 / "train"), fps=PED2_FPS, progress=progress)
    drafted, said, per_video_iou, detected_iou, localization, details = [], [], {}, {}, [], []
    kept, named = [], []  # per event: the agent kept the deterministic explanation's facts; it named a class
    on_anomaly, complete, subject_named = [], [], []  # per event: the headline's subject, its parts, its class
    explanations: list[Explanation] = []
    remaining = max_events
    for video in _videos(ped2 / "test"):
        if remaining is not None and remaining <= 0:
            break
        truth = np.asarray(labels[video.name], dtype=bool)
        captions_file = caption_dir / f"test_{video.name}.txt"
        caption_lines = captions_file.read_text().splitlines()
        cues = []
        if caption_scorer is not None:
            replay = ReplayedCaptions.load(captions_file, PED2_FPS)
            cues.append(caption_cue(replay, caption_scorer, llm, progress=False))
            screening_llm_calls += cues[0].llm_calls
        screening = screen_video(scene.open(video), scene, cues=cues, progress=False)
        index = VideoIndex.from_screening(screening, scene.rulebook, captions=captions_file)
        event_ids = [e.id for e in screening.events][:remaining]
        if remaining is not None:
            remaining -= len(event_ids)
        found = list(explain_events(llm, index, event_ids=event_ids, progress=progress))
        explanations += found
        records = {ev.id: ev for ev in index.evidence}
        for explanation in found:
            records.update({ev.id: ev for ev in explanation.evidence})  # what live tools found
            for claim in explanation.claims + explanation.first_draft:  # captions the agent read
                for evidence_id in claim.evidence_ids:
                    if (ev := index.get(evidence_id)) is not None:
                        records[ev.id] = ev
        predicted = np.zeros(len(truth), dtype=bool)  # frames of events with a verified claim
        detected = np.zeros(len(truth), dtype=bool)  # frames of every event screening found
        for event in screening.events:
            detected[event.start_frame : event.end_frame + 1] = True
        truth_runs = true_runs(truth)
        for explanation in found:
            event = index.event(explanation.event_id)
            details.append(
                {
                    "video": video.name,
                    "event": event.id,
                    "frames": [event.start_frame, event.end_frame],
                    "truth": truth_runs,
                    "seconds": round(explanation.seconds, 1),
                    "llm_calls": explanation.llm_calls,
                    "headline": explanation.headline,
                    "said": [c.text for c in explanation.supported],
                    "not_said": [
                        f"{c.kind}: {c.verdict.reason}"
                        for c in explanation.first_draft + explanation.claims
                        if c.verdict.status != "supported"
                    ],
                }
            )
            kept.append(not described_facts(event, records) - set().union(*map(fact_classes, explanation.supported)))
            named.append(any(c.kind == "object" and coco_class(c.term or "") for c in explanation.supported))
            drafted += [judge(c, records, caption_lines, truth) for c in explanation.first_draft]
            said += [judge(c, records, caption_lines, truth) for c in explanation.supported]
            if explanation.supported:
                event = index.event(explanation.event_id)
                predicted[event.start_frame : event.end_frame + 1] = True
            localization += _localization(explanation, records, ped2 / "test_masks" / video.name)
            if truth[event.start_frame : event.end_frame + 1].any():
                on_anomaly.append(_subject_on_anomaly(explanation, records, ped2 / "test_masks" / video.name))
            complete.append(headline_complete(explanation))
            subject_named.append(_names_subject_class(explanation, index.tracks))
        per_video_iou[video.name] = _iou(predicted, truth)
        detected_iou[video.name] = _iou(detected, truth)
    events = len(explanations)
    return {
        "dataset": "ucsd_ped2",
        "llm": f"{llm.backend}:{llm.model}",
        "screening": "motion + caption rules (" + rules.name + ")" if captions else "motion",
        "screening_llm_calls": screening_llm_calls,
        "events": events,
        "claims": len(drafted),
        "claims_said": len(said),
        "unsupported_before": 1.0 - float(np.mean(drafted)) if drafted else None,
        "unsupported_after": 1.0 - float(np.mean(said)) if said else None,
        "events_with_a_verified_claim": sum(bool(x.supported) for x in explanations),
        "agent_keeps_deterministic_facts": float(np.mean(kept)) if kept else None,
        "events_naming_a_class": float(np.mean(named)) if named else None,
        "temporal_iou_per_video": per_video_iou,
        "temporal_iou_ok_fraction": float(np.mean([v >= TEMPORAL_IOU for v in per_video_iou.values()])),
        # The same with every detected event, explained by the agent or not (screening's share of the result).
        "temporal_iou_ok_fraction_detected": float(np.mean([v >= TEMPORAL_IOU for v in detected_iou.values()])),
        "localization_iou": float(np.mean(localization)) if localization else None,
        "localization_regions": len(localization),
        "llm_calls": sum(x.llm_calls for x in explanations),
        "subject_on_anomaly": float(np.mean(on_anomaly)) if on_anomaly else None,
        "events_on_an_anomaly": len(on_anomaly),
        "headline_complete": float(np.mean(complete)) if complete else None,
        "names_subject_class": float(np.mean(subject_named)) if subject_named else None,
        "seconds_per_event": float(np.mean([x.seconds for x in explanations])) if explanations else None,
        "max_seconds_per_event": max((x.seconds for x in explanations), default=None),
        "seconds": time.perf_counter() - started,
        "explained": details,
    }


def described_facts(event, records: dict[str, Evidence]) -> set[str]:
    """The classes of fact (``agents.claims.fact_classes``) the deterministic explanation of ``event`` states:
    the rules broken, where the breaching object was and what it is (a named class, or what captions say)."""
    facts = {"rule"} if event.rule_ids else set()
    if event.reasons:
        facts.add("object")
    for evidence in (records[i] for i in event.evidence_ids if i in records):
        for breach in evidence.breaches():
            if breach.object_index is not None:
                facts.add("where")
                if evidence.class_names is not None and evidence.class_names[breach.object_index] is not None:
                    facts.add("object")
    return facts


def _localization(explanation: Explanation, records: dict[str, Evidence], masks: Path) -> list[float]:
    """IoU with the ground-truth mask of every object region a said claim points at (track + cited frame)."""
    scores = []
    for claim in explanation.supported:
        if claim.track_id is None:
            continue
        for evidence_id in claim.evidence_ids:
            ev = records[evidence_id]
            ids = [] if ev.track_ids is None else [int(t) for t in ev.track_ids]
            mask_path = masks / f"{ev.frame_index:03d}.png"
            if claim.track_id not in ids or not mask_path.is_file():
                continue
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127
            if mask.any():
                scores.append(box_mask_iou(ev.boxes[ids.index(claim.track_id)], mask))
    return scores


# What a reader must not meet in a headline: a grid cell's id or a track number.
INTERNAL_IDS = re.compile(r"\br\d+c\d+\b|\btrack\s*\d+", re.IGNORECASE)


def headline_complete(explanation: Explanation) -> bool:
    """The headline says what, where, when and how far from normal (a whole view that moved: what and when), with no
    internal id. Judged on the verified claims it was written from and on its text."""
    said = {c.kind for c in explanation.headline_claims if c.verdict is not None and c.verdict.status == "supported"}
    parts = {"temporal", "place", "comparison"} | ({"object"} if "object" in said else {"measurement"})
    if any(c.quantity == "view_motion" for c in explanation.headline_claims):
        parts = {"measurement", "temporal"}
    return bool(explanation.headline) and parts <= said and not INTERNAL_IDS.search(explanation.headline)


def _subject_on_anomaly(explanation: Explanation, records: dict[str, Evidence], masks: Path) -> bool:
    """The subject's box, in the frame its headline cites, overlaps the labelled anomaly's pixels there."""
    evidence = records.get(explanation.subject_evidence or "")
    if evidence is None or explanation.subject_track is None or evidence.track_ids is None:
        return False
    ids = [int(t) for t in evidence.track_ids]
    mask_path = masks / f"{evidence.frame_index:03d}.png"
    if explanation.subject_track not in ids or not mask_path.is_file():
        return False
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127
    x1, y1, x2, y2 = np.round(evidence.boxes[ids.index(explanation.subject_track)]).astype(int)
    return bool(mask[max(y1, 0) : y2, max(x1, 0) : x2].any())


def _names_subject_class(explanation: Explanation, tracks: list[Track]) -> bool:
    """The headline names the class the subject's track was seen as (most of its frames), or the subject has none
    and the headline says the detector could not name it."""
    track = next((t for t in tracks if t.id == explanation.subject_track), None)
    own = track.class_name if track is not None else None
    if own is None:
        return "could not name" in explanation.headline
    return _words(own) <= _words(explanation.headline)
