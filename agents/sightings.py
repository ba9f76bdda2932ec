"""Where in a video something was seen, read from its index: a detector class, a caption's words, an activity, or
a state.

An activity is a kind of rule broken (``prompts/questions.yaml``, ``activities``): "moving fast" is any frame
recording a speed rule broken. A state is what a measured fact says of an object (``anomalens.facts``): "running"
is an object followed at 1.5 body heights per second or more, "lying" one whose torso leans 60 degrees or more
from upright; its sightings are the frames where some track's fact reached it. One module answers "when was it
seen?" for the question tools and checks the same for the verifier.
"""

from __future__ import annotations

import re

from anomalens.agents.index import VideoIndex
from anomalens.facts import FactSpec, State, states
from anomalens.prompts import load as load_prompts
from anomalens.tools.captions import mentions
from anomalens.tools.coco import coco_class
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


def state_of(text: str) -> tuple[FactSpec, State] | None:
    """The state a phrase asks about ("was anyone running" -> running, of relative_speed), or None."""
    words = " ".join(re.findall(r"[a-z]+", text.lower()))
    return next(((spec, state) for spec, state in states()
                 if any(re.search(rf"\b{re.escape(word)}\b", words) for word in state.words)), None)  # fmt: skip


def in_state(index: VideoIndex, name: str) -> list[tuple[int, int, float]]:
    """``(frame, track, value)`` wherever an object of the video was in the state ``name``: its fact at or past the
    state's level, read from the tracks (every one the index holds, each followed long enough to be an object)."""
    spec, state = next((spec, state) for spec, state in states() if state.name == name)
    found = []
    for track in index.objects:
        for frame, value in zip(track.frames, track.facts.get(spec.name, [])):
            if value is not None and value >= state.at_least:
                found.append((frame, track.id, float(value)))
    return sorted(found)


def sighted_frames(index: VideoIndex, term: str, seen_by: SeenBy) -> list[int]:
    """The frames, in order, in which ``term`` was seen the way ``seen_by`` says."""
    if seen_by == "caption":
        return sorted(k for k, text in index.captions.items() if mentions(text, term))
    if seen_by == "state":
        return sorted({frame for frame, _, _ in in_state(index, term)})
    frames = [ev for ev in index.evidence if ev.frame_index is not None and ev.text is None]
    if seen_by == "class":
        return sorted(
            ev.frame_index
            for ev in frames
            if ev.class_names is not None and any(c is not None and same_class(term, c) for c in ev.class_names)
        )
    facts = set(activities()[term]["facts"])
    kinds = {r.id for r in index.rulebook.rules if r.predicate.fact in facts} if index.rulebook else set()
    return sorted(ev.frame_index for ev in frames if any(b.rule_id in kinds for b in ev.breaches()))
