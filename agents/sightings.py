"""Where in a video something was seen, read from its index: a detector class, a caption's words, or an activity.

An activity is a kind of rule broken (``prompts/questions.yaml``, ``activities``): "moving fast" is any frame
recording a speed rule broken. Screening measures motion, not gait, so an activity is what the scene's rules
say is unusual about it, and its sightings are exactly the frames that record such a rule broken. One module
answers "when was it seen?" for the question tools and checks the same for the verifier.
"""

from __future__ import annotations

import re

from anomalens.agents.index import VideoIndex
from anomalens.prompts import load as load_prompts
from anomalens.tools.captions import mentions
from anomalens.tools.coco import coco_class
from anomalens.tools.objects import UNKNOWN
from anomalens.types import SeenBy

_ARTICLES = {"a", "an", "the", "photo", "of"}


def same_class(term: str, class_name: str) -> bool:
    """Whether a claimed term names the class: the same words (``"bicycles"``, ``"a bicycle"``) or the same COCO
    class (``"pedestrian"`` and ``"person"``)."""
    bare = " ".join(w for w in class_name.lower().split() if w not in _ARTICLES)
    if bare and mentions(bare, term) and mentions(term, bare):
        return True
    return (known := coco_class(class_name)) is not None and coco_class(term) == known


def activities() -> dict[str, dict[str, list[str]]]:
    """Each activity's name: the words that ask for it and the rule facts that show it."""
    return load_prompts("questions")["activities"]


def activity_of(text: str) -> str | None:
    """The activity a phrase asks about ("was anyone running" -> "moving fast"), or None."""
    words = " ".join(re.findall(r"[a-z]+", text.lower()))
    for name, activity in activities().items():
        if any(re.search(rf"\b{re.escape(word)}", words) for word in [name, *activity["words"]]):
            return name
    return None


def sighted_frames(index: VideoIndex, term: str, seen_by: SeenBy) -> list[int]:
    """The frames, in order, in which ``term`` was seen the way ``seen_by`` says."""
    if seen_by == "caption":
        return sorted(k for k, text in index.captions.items() if mentions(text, term))
    frames = [ev for ev in index.evidence if ev.frame_index is not None and ev.text is None]
    if seen_by == "class":
        return sorted(
            ev.frame_index
            for ev in frames
            if ev.class_names is not None and any(c != UNKNOWN and same_class(term, c) for c in ev.class_names)
        )
    facts = set(activities()[term]["facts"])
    kinds = {r.id for r in index.rulebook.rules if r.predicate.fact in facts} if index.rulebook else set()
    return sorted(ev.frame_index for ev in frames if any(b.rule_id in kinds for b in ev.breaches()))
