"""The one table of facts: every fact perception measures about an object or a frame, with its unit, its scope,
whether it is measured (a number) or categorical (a word), where ``Evidence`` keeps it, and the words people use
for it. Rules, induction, the describer, the digest, the verifier, chat and the prompts all read this table: a new
attribute of objects is one row here and one producer (``tools.objects.describers``).

Units: ``px``, ``px^2`` and ``px/s`` are source pixels (and per second); ``heights/s`` is body heights per second
(speed for the object's size, comparable between the near and the far side of a view) and ``heights^2`` a size in
square body heights (a standing person is about 0.3 wherever they stand); ``deg`` is degrees from
upright; ``s`` seconds; ``ratio`` a pure number (1.0 at the normal edge for novelty); ``count`` a whole number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Scope = Literal["object", "frame"]
Kind = Literal["measured", "categorical"]


@dataclass(frozen=True)
class State:
    """A named state a measured fact's value puts an object in, e.g. "running": relative speed of at least 1.5
    body heights per second. Chat answers "was anyone running?" from it."""

    name: str
    at_least: float
    words: tuple[str, ...]  # how people ask about it ("running", "ran", "run")


@dataclass(frozen=True)
class FactSpec:
    name: str
    unit: str
    scope: Scope
    kind: Kind
    said: str  # the fact in words: "speed for its size"
    stored_in: str | None = None  # the ``Evidence`` field that holds it; else it is a measurement (QUANTITY)
    states: tuple[State, ...] = field(default_factory=tuple)


# A walk is about 0.8 body heights per second (1.4 m/s for 1.7 m); a jog of 2.5 m/s and up is about 1.5.
RUNNING = State("running", 1.5, ("running", "run", "ran", "runs", "jogging", "jog", "sprinting"))
# A torso more than 60 degrees from upright: lying (or falling), not bending.
LYING = State("lying", 60.0, ("lying", "lie", "lies", "lay", "fallen", "fell", "on the ground", "lying down"))
ARMS_UP = State("arms raised", 1.0, ("arms up", "arm up", "arms raised", "raised arms", "raising", "hands up"))

FACTS: dict[str, FactSpec] = {
    spec.name: spec
    for spec in (
        FactSpec("class", "class", "object", "categorical", "what it is", stored_in="class_names"),
        FactSpec("area", "px^2", "object", "measured", "size"),
        FactSpec("width", "px", "object", "measured", "width"),
        FactSpec("height", "px", "object", "measured", "height"),
        FactSpec("aspect", "ratio", "object", "measured", "height for its width"),
        FactSpec("relative_size", "heights^2", "object", "measured", "size for where it stands"),
        FactSpec("differs", "ratio", "object", "measured", "share of its box unlike the scene's background"),
        FactSpec("speed", "px/s", "object", "measured", "speed"),
        FactSpec("relative_speed", "heights/s", "object", "measured", "speed for its size", states=(RUNNING,)),
        FactSpec("direction", "sector", "object", "categorical", "heading", stored_in="headings"),
        FactSpec("zone", "zone", "object", "categorical", "place", stored_in="zones"),
        FactSpec("dwell", "s", "object", "measured", "time in one place"),
        FactSpec("look", "ratio", "object", "measured", "how unlike the normal objects it looks"),
        FactSpec("novelty", "ratio", "object", "measured", "how unusual it is among the normal footage's objects"),
        FactSpec("torso_angle", "deg", "object", "measured", "lean of the body from upright", states=(LYING,)),
        FactSpec("arms_raised", "count", "object", "measured", "arms raised above the shoulders", states=(ARMS_UP,)),
        FactSpec("count", "count", "frame", "measured", "objects in view"),
        FactSpec("occupancy", "ratio", "frame", "measured", "share of the view covered by moving things"),
        FactSpec("view_motion", "ratio", "frame", "measured", "share of the view that changed at once"),
        FactSpec("time", "s", "frame", "measured", "time", stored_in="time_s"),
        FactSpec("caption", "text", "frame", "categorical", "what a caption says", stored_in="text"),
    )
}

OBJECT_FACTS = tuple(name for name, spec in FACTS.items() if spec.scope == "object")
FRAME_FACTS = tuple(name for name, spec in FACTS.items() if spec.scope == "frame")
MEASURED = tuple(name for name, spec in FACTS.items() if spec.kind == "measured")
# Measured facts of objects, each a QUANTITY measurement of the object in its frame's Evidence.
OBJECT_MEASURED = tuple(name for name in OBJECT_FACTS if FACTS[name].kind == "measured")
# What the caption scorer judges by meaning, never against measured facts.
CAPTION = "caption"


def unit(name: str) -> str:
    return FACTS[name].unit


def states() -> list[tuple[FactSpec, State]]:
    """Every named state (running, lying, ...) with the fact it is read from."""
    return [(spec, state) for spec in FACTS.values() for state in spec.states]


def named(name: str | None) -> str:
    """A class with its article ("a person", "an umbrella"), or what an object nothing named is."""
    if name is None:
        return "a moving thing the detector could not name"
    return f"{'an' if name[:1] in tuple('aeiou') else 'a'} {name}"
