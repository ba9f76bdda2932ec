"""The deterministic explainer: plain-language sentences built only from an event's evidence, the scene's rules
and what cues say (no LLM). Screening calls it as it builds each event (``tools.screening.screen(describe=)``)."""

from __future__ import annotations

import numpy as np

from anomalens.agents.claims import object_phrase, said_speed
from anomalens.events import worst_breaches
from anomalens.prompts import load as load_prompts
from anomalens.facts import FACTS, OBJECT_MEASURED
from anomalens.types import Event, Evidence, Rulebook

MAX_RULES = 3  # the explanation names the worst few; the report's rule table lists every broken rule


class Describer:
    """Sentences for the events of one scene (``rulebook`` gives the rules' sentences)."""

    def __init__(self, rulebook: Rulebook | None):
        self.rulebook = rulebook

    def _said(self, m) -> str:
        """A measurement in words: speeds per second (and in m/s with the person's scale), the rest as measured."""
        if m.name == "speed" and self.rulebook is not None:
            return said_speed(m.value, m.unit, self.rulebook.fps, self.rulebook.metres_per_pixel)
        return f"{m.value:.1f} {m.unit}"

    def __call__(self, event: Event, cited: list[Evidence], keyframe: Evidence) -> str:
        """The worst breach of the event's worst-broken rules (who, where, when, with numbers), unusual motion at
        its keyframe, and the rule its cues (captions) say is broken."""
        text = load_prompts("explain")
        worst = worst_breaches(cited)
        sentences = [text["event"].format(**event.model_dump(), n_rules=len(worst))]
        for breach, evidence in worst[:MAX_RULES]:
            rule = self.rulebook.find(breach.rule_id) if self.rulebook is not None else None
            said = {
                "rule_id": breach.rule_id,
                "sentence": rule.sentence.rstrip(".") if rule is not None else "a rule no longer in the rulebook",
                "time_s": evidence.time_s,
                "severity": breach.severity,
            }
            i = breach.object_index
            if i is None:
                sentences.append(text["frame_rule"].format(**said))
                continue
            fact = rule.predicate.fact if rule is not None else ""
            measured = "".join(
                f", {FACTS[name].said} {self._said(m)}"
                for name in dict.fromkeys([fact, "speed"])
                if name in OBJECT_MEASURED and (m := evidence.measurement(name, i))
            )
            most = rule.stats.get("max", 0.0) if rule is not None else 0.0
            if most > 0 and (m := evidence.measurement(fact, i)) is not None:
                measured += text["versus_normal"].format(times=m.value / most, fact=fact.replace("_", " "))
            who = object_phrase(evidence, i)
            sentences.append(text["object_rule"].format(**said, who=who, track=evidence.track_of(i), measured=measured))
        looks = [(m.value, m.object_index, ev) for ev in cited for m in ev.measurements if m.name == "look"]
        if looks and (strongest := max(looks, key=lambda item: item[0]))[0] > 1.0:
            ratio, i, evidence = strongest
            sentences.append(text["appearance"].format(
                who=object_phrase(evidence, i), track=evidence.track_of(i), ratio=ratio, time_s=evidence.time_s
            ))  # fmt: skip
        if len(keyframe) and len(sentences) == 1:  # no rule broken: say who was most unusual
            i = int(np.argmax(keyframe.scores))
            if (novelty := keyframe.measurement("novelty", i)) is not None and novelty.value > 1.0:
                sentences.append(text["novelty"].format(
                    who=object_phrase(keyframe, i), track=keyframe.track_of(i), ratio=novelty.value,
                    time_s=keyframe.time_s,
                ))  # fmt: skip
        sentences += [text["cue"].format(**reason.model_dump()) for reason in event.reasons]
        if len(sentences) == 1:
            sentences.append(text["nothing"])
        return " ".join(sentences)
