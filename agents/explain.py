"""The deterministic explainer: plain-language sentences built only from an event's evidence and rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomalens.prompts import load as load_prompts
from anomalens.types import Event, Evidence, Rulebook

if TYPE_CHECKING:
    from anomalens.agents.caption_reasoning import CaptionReason

_MEASURED = {"speed": "px/frame", "area": "px^2", "dwell": "s"}


MAX_RULES = 3  # the explanation names the worst few; the report's rule table lists every broken rule


def explain_event(
    event: Event, cited: list[Evidence], keyframe: Evidence, rulebook: Rulebook | None,
    caption: CaptionReason | None = None,
) -> str:
    """Sentences for one event: the worst breach of its worst-broken rules, where and when, with numbers, and
    the caption rule its captions break (``caption``, when captions were screened)."""
    text = load_prompts("explain")
    worst: dict[str, tuple[float, Evidence, int | None]] = {}
    for evidence in cited:
        for rule_id, severity, index in evidence.broken_rules():
            if rule_id not in worst or severity > worst[rule_id][0]:
                worst[rule_id] = (severity, evidence, index)
    sentences = [
        text["event"].format(
            start_s=event.start_s, end_s=event.end_s, start_frame=event.start_frame, end_frame=event.end_frame,
            n_rules=len(worst),
        )
    ]
    for rule_id, (severity, evidence, index) in sorted(worst.items(), key=lambda item: -item[1][0])[:MAX_RULES]:
        try:
            sentence = rulebook.get(rule_id).sentence.rstrip(".") if rulebook else rule_id
        except KeyError:
            sentence = "a rule no longer in the rulebook"
        if index is None:
            sentences.append(
                text["frame_rule"].format(rule_id=rule_id, sentence=sentence, time_s=evidence.time_s, severity=severity)
            )
            continue
        measured = "".join(
            f", {name} {m.value:.1f} {unit}"
            for name, unit in _MEASURED.items()
            if (m := evidence.measurement(name, index)) is not None
        )
        track = int(evidence.track_ids[index]) if evidence.track_ids is not None else -1
        sentences.append(
            text["object_rule"].format(
                rule_id=rule_id, sentence=sentence, label=evidence.labels[index], track=track,
                time_s=evidence.time_s, severity=severity, measured=measured,
            )
        )
    novelty = keyframe.measurement("flow_novelty")
    if novelty is not None and novelty.value > 1.0:
        sentences.append(text["flow"].format(novelty=novelty.value, time_s=keyframe.time_s))
    if caption is not None:
        sentences.append(text["caption"].format(**vars(caption)))
    if len(sentences) == 1:
        sentences.append(text["nothing"])
    return " ".join(sentences)
