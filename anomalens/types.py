"""The central types every layer shares.

Conventions (stated once, here):

- **Coordinates** are pixels of the *source* frame (the decoded video frame or image at its native size,
  before any analysis downscaling), origin at the top-left corner, x to the right, y down. Boxes are
  ``xyxy`` floats with ``0 <= x1 <= x2 <= width`` and ``0 <= y1 <= y2 <= height``. Tools that work at a
  reduced analysis resolution map their output back with the frame's ``scale`` before building evidence.
- **Time** is a 0-based frame index into the source (counted before any stride) plus seconds from the
  start of the source, ``time_s = frame_index / fps``. Frame ranges are inclusive at both ends.
- **Masks** are boolean ``(N, H, W)`` at source-frame resolution, one per box. **Anomaly maps** are float
  ``(h, w)`` covering the whole frame at any resolution (resize to the frame to overlay); larger is more
  anomalous. **Keypoints** are ``(N, K, 3)``: x, y in source pixels and a confidence in [0, 1].
- **Units** travel with every number in ``Measurement.unit``; the facts perception measures, with their units,
  are the table in ``anomalens.facts``. **Headings** are image-plane compass sectors (north is up on screen) or
  ``still``; **zones** are named cells of a grid over the frame (``r{row}c{col}``) or zones people drew.
- **Classes**: an object's class is what a detector named it; an object nothing named (a moving thing no detected
  box covers) has no class (None), never a made-up one.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections import Counter
from enum import Enum
from typing import Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from anomalens.arrays import FloatArray, IntArray, MapArray, MaskArray
from anomalens.facts import FACTS, MEASURED

_ARRAYS = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

Heading = Literal["E", "NE", "N", "NW", "W", "SW", "S", "SE", "still"]
EVENT_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
SECTORS: tuple[Heading, ...] = ("E", "NE", "N", "NW", "W", "SW", "S", "SE")
STILL: Heading = "still"

# Evidence fields that hold one entry per object (None or of length N), besides boxes, scores, labels and masks.
OBJECT_FIELDS = ("track_ids", "class_names", "class_scores", "headings", "zones", "keypoints", "embeddings")


def _unique(ids: list[str], what: str) -> None:
    dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate {what} ids: {', '.join(dupes)}")


class EvidenceKind(str, Enum):
    """What a piece of evidence is, whichever tool produced it."""

    FRAME = "frame"  # one frame's objects as screening measured them: tracks, facts, rule breaches
    CAPTION = "caption"  # a description of the frame (``text``)
    DETECTION = "detection"  # boxes a detector found, each with its class
    TEXT_MATCH = "text_match"  # how well texts describe the frame or boxes (CLIP)
    SEGMENTATION = "segmentation"  # masks outlining given boxes
    IMAGE = "image"  # an image inspected for anomalies: its anomaly map and the regions beyond normal
    POSE = "pose"  # people with their keypoints
    APPEARANCE = "appearance"  # what boxes look like: one embedding per box


class Source(BaseModel):
    """Which tool produced a piece of evidence, with what, and how long it took."""

    model_config = ConfigDict(extra="forbid")
    tool: str
    backend: str = ""
    weights: str | None = None
    latency_s: float = Field(default=0.0, ge=0)


class MeasurementKind(str, Enum):
    """What a measurement's ``name`` names."""

    QUANTITY = "quantity"  # a measured fact (``anomalens.facts``) in its unit
    RULE_SEVERITY = "rule_severity"  # a rule's id; the value is how far past its limit (> 1: broken), unit ratio
    TEXT_SIMILARITY = "text_similarity"  # a text; the value is its cosine similarity to the frame or object


class Measurement(BaseModel):
    """A named number with its unit; ``object_index`` points into the evidence's arrays, if per-object."""

    model_config = ConfigDict(extra="forbid")
    kind: MeasurementKind = MeasurementKind.QUANTITY
    name: str
    value: float
    unit: str
    object_index: int | None = Field(default=None, ge=0)


class Breach(NamedTuple):
    rule_id: str
    severity: float
    object_index: int | None  # None: a rule about the whole frame


class Evidence(BaseModel):
    """What every tool returns: per-object arrays of equal length N, plus frame-level fields.

    Shapes: ``boxes`` (N, 4) float xyxy source pixels; ``scores`` (N,) what the tool ranks objects by (anomaly
    severity for screening, confidence for a detector); ``labels`` N strings of display text, never parsed.
    Typed per-object facts, each None or of length N: ``track_ids`` int; ``class_names`` and ``class_scores``
    (what the object is, None where nothing named it, and how sure); ``headings``; ``zones``; measured facts of
    objects and frames as ``measurements`` (``fact`` reads any of them by name); ``keypoints`` (N, K, 3); ``embeddings``
    (N, D) appearance features; ``masks`` (N, H, W) bool at ``frame_size``. ``anomaly_map`` (h, w) float or
    None. ``frame_size`` is ``(width, height)`` of the source frame and is required whenever boxes, masks or a
    map are present. ``id`` is derived from the content when omitted, so the same evidence gets the same id in
    every run.
    """

    model_config = _ARRAYS
    id: str = ""
    kind: EvidenceKind
    source: Source
    frame_index: int | None = Field(default=None, ge=0)
    time_s: float | None = Field(default=None, ge=0)
    frame_size: tuple[int, int] | None = None
    boxes: FloatArray = Field(default_factory=lambda: np.zeros((0, 4)))
    scores: FloatArray = Field(default_factory=lambda: np.zeros(0))
    labels: list[str] = Field(default_factory=list)
    track_ids: IntArray | None = None
    class_names: list[str | None] | None = None
    class_scores: FloatArray | None = None
    headings: list[Heading] | None = None
    zones: list[str] | None = None
    keypoints: FloatArray | None = None
    embeddings: FloatArray | None = None
    masks: MaskArray | None = None
    anomaly_map: MapArray | None = None
    frame_score: float | None = None
    measurements: list[Measurement] = Field(default_factory=list)
    text: str | None = None  # a description of the frame (a caption): data, never instructions

    @field_validator("frame_size")
    @classmethod
    def _positive_size(cls, size: tuple[int, int] | None) -> tuple[int, int] | None:
        if size is not None and min(size) <= 0:
            raise ValueError(f"frame_size must be positive (width, height), got {size}")
        return size

    @model_validator(mode="after")
    def _consistent(self) -> Evidence:
        boxes = self.boxes.reshape(-1, 4) if self.boxes.size == 0 else self.boxes
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape (N, 4), got {self.boxes.shape}")
        self.boxes = boxes
        n = len(boxes)
        lengths = {"scores": len(self.scores), "labels": len(self.labels)}
        for name in OBJECT_FIELDS:
            if (value := getattr(self, name)) is not None:
                lengths[name] = len(value)
        if self.masks is not None:
            if self.masks.ndim != 3:
                raise ValueError(f"masks must have shape (N, H, W), got {self.masks.shape}")
            lengths["masks"] = len(self.masks)
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(f"{n} boxes but " + ", ".join(f"{v} {k}" for k, v in wrong.items()))
        if self.keypoints is not None and (self.keypoints.ndim != 3 or self.keypoints.shape[2] != 3):
            raise ValueError(f"keypoints must have shape (N, K, 3), got {self.keypoints.shape}")
        if self.embeddings is not None and self.embeddings.ndim != 2:
            raise ValueError(f"embeddings must have shape (N, D), got {self.embeddings.shape}")
        needs_size = n > 0 or self.masks is not None or self.anomaly_map is not None
        if needs_size and self.frame_size is None:
            raise ValueError("frame_size (width, height) is required with boxes, masks or an anomaly_map")
        if n:
            width, height = self.frame_size
            x1, y1, x2, y2 = boxes.T
            eps = 1e-6
            if (x1 > x2 + eps).any() or (y1 > y2 + eps).any():
                raise ValueError("boxes must be xyxy with x1 <= x2 and y1 <= y2")
            if (boxes.min() < -eps) or (x2 > width + eps).any() or (y2 > height + eps).any():
                raise ValueError(f"boxes must lie inside the {width}x{height} frame (clip them first)")
        if self.masks is not None and n and self.masks.shape[1:] != (self.frame_size[1], self.frame_size[0]):
            raise ValueError(f"masks are {self.masks.shape[1:]} (H, W) but the frame is {self.frame_size} (W, H)")
        if self.anomaly_map is not None and self.anomaly_map.ndim != 2:
            raise ValueError(f"anomaly_map must be 2-D (h, w), got {self.anomaly_map.shape}")
        for m in self.measurements:
            if m.object_index is not None and m.object_index >= n:
                raise ValueError(f"measurement {m.name!r} points at object {m.object_index} of {n}")
        if not self.id:
            self.id = self._content_id()
        return self

    def _content_id(self) -> str:
        digest = hashlib.sha1()
        digest.update(f"{self.kind.value}|{self.source.tool}".encode())
        facts = (self.frame_index, self.class_names, self.headings, self.zones, self.frame_score, self.text)
        digest.update(repr(facts).encode())
        digest.update(np.round(self.boxes, 2).tobytes())
        digest.update(np.round(self.scores, 4).tobytes())
        for m in self.measurements:
            digest.update(f"{m.kind.value}:{m.name}={m.value:.6g}{m.unit}@{m.object_index}".encode())
        frame = "x" if self.frame_index is None else self.frame_index
        return f"ev-{self.source.tool}-{frame}-{digest.hexdigest()[:8]}"

    def __len__(self) -> int:
        return len(self.boxes)

    def breaches(self) -> list[Breach]:
        """Every rule this evidence records as broken, with its severity and the object that broke it."""
        return [
            Breach(m.name, m.value, m.object_index)
            for m in self.measurements
            if m.kind is MeasurementKind.RULE_SEVERITY
        ]

    def track_of(self, object_index: int | None) -> int | None:
        """The track id of object ``object_index``, or None (no object, or no tracks)."""
        if object_index is None or self.track_ids is None:
            return None
        return int(self.track_ids[object_index])

    def object_of(self, track_id: int) -> int | None:
        """The index of the object that track ``track_id`` is in this frame, or None."""
        if self.track_ids is None:
            return None
        return next((i for i, t in enumerate(self.track_ids) if int(t) == track_id), None)

    def measurement(self, name: str, object_index: int | None = None) -> Measurement | None:
        """The quantity ``name`` of object ``object_index`` (None: of the frame), if measured."""
        return next(
            (
                m
                for m in self.measurements
                if m.kind is MeasurementKind.QUANTITY and m.name == name and m.object_index == object_index
            ),
            None,
        )

    def fact(self, name: str, object_index: int | None = None) -> float | str | None:
        """The fact ``name`` (``anomalens.facts``) of object ``object_index`` (None: of the frame), or None when not
        known: categorical object facts from their typed field, measured ones from the measurements."""
        spec = FACTS[name]
        if spec.stored_in is not None:
            values = getattr(self, spec.stored_in)
            if spec.scope == "frame" or values is None:
                return values
            return None if object_index is None else values[object_index]
        found = self.measurement(name, object_index)
        return None if found is None else found.value

    def similarities(self, object_index: int | None = None) -> dict[str, float]:
        """Text -> cosine similarity, for the object ``object_index`` (or the frame)."""
        return {
            m.name: m.value
            for m in self.measurements
            if m.kind is MeasurementKind.TEXT_SIMILARITY and m.object_index == object_index
        }


class Track(BaseModel):
    """One object followed over frames, with everything perception found of it: ``boxes[k]`` is its box in
    ``frames[k]`` (source pixels) and ``facts[name][k]`` the object fact ``name`` (``anomalens.facts``) there;
    ``class_name`` is what the detections matched to it voted for (``class_votes``: summed detector scores per
    class), None when nothing named it."""

    model_config = _ARRAYS
    id: int = Field(ge=0)
    frames: list[int]
    boxes: FloatArray
    class_name: str | None = None
    class_votes: dict[str, float] = Field(default_factory=dict)
    facts: dict[str, list[float | str | None]] = Field(default_factory=dict)
    evidence_ids: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Track:
        if not self.frames:
            raise ValueError(f"track {self.id} has no frames")
        if any(b <= a for a, b in zip(self.frames, self.frames[1:])):
            raise ValueError(f"track {self.id}: frames must be strictly increasing")
        if self.boxes.shape != (len(self.frames), 4):
            raise ValueError(f"track {self.id}: {len(self.frames)} frames but boxes {self.boxes.shape}")
        for name, values in self.facts.items():
            if name not in FACTS or FACTS[name].scope != "object":
                raise ValueError(f"track {self.id}: {name!r} is not a fact of objects")
            if len(values) != len(self.frames):
                raise ValueError(f"track {self.id}: {len(self.frames)} frames but {len(values)} values of {name}")
        return self

    def fact(self, name: str, frame: int, *, last_seen: bool = False) -> float | str | None:
        """The object fact ``name`` at ``frame`` (None: not seen there, or not measured); with ``last_seen``, where the
        object was last seen at or before ``frame`` (alive, but missed in that frame)."""
        k = bisect.bisect_right(self.frames, frame) - 1
        values = self.facts.get(name)
        if values is None or k < 0 or (not last_seen and self.frames[k] != frame):
            return None
        return values[k]

    def alive(self, frame: int) -> bool:
        """Whether the object was in view at ``frame`` (between its first and last sighting)."""
        return self.frames[0] <= frame <= self.frames[-1]


class CueReason(BaseModel):
    """Why a screening cue other than motion calls a range anomalous: a phrase said there (e.g. by captions),
    the rule of that cue it breaks, and the frames that say it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cue: Literal["captions"]
    phrase: str
    rule_id: str
    sentence: str
    first_frame: int = Field(ge=0)
    last_frame: int = Field(ge=0)


class Event(BaseModel):
    """A time range of anomalous activity (inclusive frame range) with what supports it. Built complete and
    never changed: ``summary`` is the deterministic explanation, built from the same evidence."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=EVENT_ID_PATTERN)  # also a file name (its keyframe's): no path in it
    start_frame: int = Field(ge=0)
    end_frame: int = Field(ge=0)
    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    peak_frame: int = Field(ge=0)
    score: float
    evidence_ids: list[str] = Field(default_factory=list)
    track_ids: list[int] = Field(default_factory=list)
    rule_ids: list[str] = Field(default_factory=list)
    reasons: list[CueReason] = Field(default_factory=list)
    summary: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> Event:
        if self.end_frame < self.start_frame or self.end_s < self.start_s:
            raise ValueError(f"event {self.id} ends before it starts")
        if not self.start_frame <= self.peak_frame <= self.end_frame:
            raise ValueError(f"event {self.id}: peak frame {self.peak_frame} outside its range")
        return self


Operator = Literal["<=", ">=", "<", ">", "==", "!=", "between", "in", "not_in"]


class Predicate(BaseModel):
    """A machine-checkable condition over one fact, e.g. ``speed <= 40 px/s where zone == walkway``.

    ``between`` takes ``[low, high]`` (inclusive); ``in``/``not_in`` take a list; ``where`` limits the
    predicate to objects whose facts equal the given values (e.g. ``{"zone": "walkway"}``).

    ``caption`` rules judge what a frame's caption describes: ``in`` lists phrases of normal activity,
    ``not_in`` phrases that must not be described (e.g. ``["running", "riding a bicycle"]``); phrases are
    matched by meaning (``anomalens.tools.caption_scoring``), not by string equality.
    """

    model_config = ConfigDict(extra="forbid")
    fact: str
    op: Operator
    value: float | str | list[float] | list[str]
    unit: str | None = None
    where: dict[str, float | str] = Field(default_factory=dict)

    @field_validator("fact")
    @classmethod
    def _known_fact(cls, fact: str) -> str:
        if fact not in FACTS:
            raise ValueError(f"unknown fact {fact!r}; facts: {', '.join(FACTS)}")
        return fact

    @model_validator(mode="after")
    def _value_fits_op(self) -> Predicate:
        if self.op == "between":
            if not (isinstance(self.value, list) and len(self.value) == 2 and self.value[0] <= self.value[1]):
                raise ValueError("'between' needs value [low, high] with low <= high")
        elif self.op in ("in", "not_in"):
            if not isinstance(self.value, list):
                raise ValueError(f"'{self.op}' needs a list value")
        elif self.op in ("<=", ">=", "<", ">") and not isinstance(self.value, (int, float)):
            raise ValueError(f"'{self.op}' needs a number value")
        numbers = self.value if isinstance(self.value, list) else [self.value]
        # Sizes, rates, counts and times are never negative: a limit below 0 on one of them is a typo, not a rule.
        if self.fact in MEASURED and any(isinstance(v, (int, float)) and v < 0 for v in numbers):
            raise ValueError(f"{self.fact} is never negative: a limit below 0 cannot hold")
        return self


class Rule(BaseModel):
    """A human sentence, the predicate that normal footage satisfies, and where it came from.

    ``kind``: what the rule describes. Caption rules say what an anomalous (``anomaly``) or a normal
    (``normal``) frame's caption describes; rules induced from measured facts are ``limit`` rules.
    ``origin``: where it came from: ``induced`` from normal footage, an ``everyday`` prior (the everyday anomalies,
    for a scene learned without normal footage; not learned from the footage it screens), a ``zone`` drawn as
    keep-out in the app, or ``written`` as rule text.
    """

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["limit", "anomaly", "normal"] = "limit"
    origin: Literal["induced", "everyday", "zone", "written"] = "induced"
    sentence: str
    predicate: Predicate
    margin: float = Field(default=0.0, ge=0)
    stats: dict[str, float] = Field(default_factory=dict)
    enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _origin_of_older_rulebooks(cls, data):
        """Rulebooks written before rules had an origin said it in the id; read so once, here."""
        if isinstance(data, dict) and "origin" not in data:
            for prefix, origin in (("everyday-", "everyday"), ("keep-out-", "zone")):
                if str(data.get("id", "")).startswith(prefix):
                    return {**data, "origin": origin}
        return data


GRID_ZONE = re.compile(r"^r\d+c\d+$")  # the cells of the scene's grid: r{row}c{col}


class Zone(BaseModel):
    """A place a person drew and named ("lawn", "road"): a polygon in fractions of the frame's width and height
    (x right, y down, 0-1), so it fits the frame at any resolution. An object standing in it (its box's bottom
    centre) is in this zone; elsewhere it is in its grid cell."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_ -]{0,39}$")
    points: list[tuple[float, float]] = Field(min_length=3, max_length=200)

    @model_validator(mode="after")
    def _checked(self) -> Zone:
        if GRID_ZONE.match(self.name):
            raise ValueError(f"{self.name!r} is the name of a grid cell: give the zone a name of its own")
        if any(not (0.0 <= v <= 1.0) for point in self.points for v in point):
            raise ValueError(f"zone {self.name!r}: points are fractions of the frame, between 0 and 1")
        return self

    def contains(self, x: float, y: float) -> bool:
        """Whether the point (fractions of the frame) lies inside (even-odd rule)."""
        inside = False
        for (x1, y1), (x2, y2) in zip(self.points, self.points[1:] + self.points[:1]):
            if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
                inside = not inside
        return inside


class Rulebook(BaseModel):
    """A versioned set of rules for one scene, and the zones people drew in it; YAML I/O (and reading older
    versions) lives in ``anomalens.rules``."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[4] = 4
    scene: str = ""
    induced_from: list[str] = Field(default_factory=list)
    fps: float | None = Field(default=None, gt=0)  # the frame rate of the footage it was learned from
    metres_per_pixel: float | None = Field(default=None, gt=0)  # a person's scale: speeds then read in m/s too
    zones: list[Zone] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> Rulebook:
        _unique([r.id for r in self.rules], "rule")
        _unique([z.name for z in self.zones], "zone")
        return self

    def get(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(f"no rule {rule_id!r} (rules: {', '.join(r.id for r in self.rules)})")

    def find(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["supported", "unsupported", "unverifiable"]
    reason: str = ""


ClaimKind = Literal[
    "object", "attribute", "count", "measurement", "spatial", "temporal", "rule", "tally", "appearance", "place",
    "comparison", "other",
]
# What an ``appearance`` claim's term was seen by: a detector class, a caption's words, rules of a kind broken, or a
# state a measured fact puts an object in (``anomalens.facts``: running, lying, arms raised).
SeenBy = Literal["class", "caption", "activity", "state"]
Relation = Literal["left_of", "right_of", "above", "below"]


class Claim(BaseModel):
    """One checkable statement; it must cite at least one evidence id.

    Which fields a claim of each kind fills is described once, for the LLM and for people, in
    ``prompts/claims.yaml`` (``kinds``); ``tally`` (events in ``frames``, breaking ``rule_id`` when given: ``value``)
    and ``appearance`` (``term`` seen by ``seen_by`` in ``value`` frames, first and last in ``frames``) are made
    by the chat's question tools (``agents/questions.py``), not drafted by the LLM; ``place`` (where ``track_id``
    was: a named ``zone``, else a plain place as ``term``) and ``comparison`` (``track_id``'s ``quantity`` as
    ``value`` times what normal footage reached for ``rule_id``, or None: never reached) are a headline's
    (``agents/headline.py``). ``text`` is rendered from the checked fields, so it never says more than what was
    checked.
    """

    model_config = ConfigDict(extra="forbid")
    id: str
    text: str = ""
    kind: ClaimKind
    evidence_ids: list[str] = Field(min_length=1)
    rule_id: str | None = None
    track_id: int | None = None
    quantity: str | None = None
    value: float | None = None
    unit: str | None = None
    term: str | None = None
    heading: Heading | None = None
    zone: str | None = None
    relation: Relation | None = None
    other_track_id: int | None = None
    frames: tuple[int, int] | None = None
    seen_by: SeenBy | None = None
    verdict: Verdict | None = None
    from_facts: bool = False  # added from the event's facts: the answer left out this class of fact


class Explanation(BaseModel):
    """Structured answer for one event; the prose is rendered from supported claims only.

    ``evidence`` holds what the claims cite beyond the screening record (what live tools found, captions
    read), so an explanation can be checked and shown on its own."""

    model_config = ConfigDict(extra="forbid")
    event_id: str  # the event explained, or the question's id in a chat
    generator: str  # "deterministic" or "agent (<backend>:<model>)"
    claims: list[Claim]  # the final claims with their verdicts; only supported ones are said
    first_draft: list[Claim] = Field(default_factory=list)  # the first draft with its verdicts, before revision
    evidence: list[Evidence] = Field(default_factory=list)
    note: str = ""  # a chat answer with no claim to make: what is known instead ("there is no event 4")
    headline: str = ""  # an event's headline, from its verified headline claims (agents/headline.py)
    headline_claims: list[Claim] = Field(default_factory=list)  # what the headline is written from, with verdicts
    subject_track: int | None = None  # the track the event is about (None: none, or the whole view)
    subject_evidence: str | None = None  # the frame the subject is cited at
    rounds: int = 0  # revision rounds the verifier asked for
    llm_calls: int = 0
    seconds: float = 0.0

    @model_validator(mode="after")
    def _unique_ids(self) -> Explanation:
        _unique([c.id for c in self.claims], "claim")
        return self

    @property
    def supported(self) -> list[Claim]:
        return [c for c in self.claims if c.verdict is not None and c.verdict.status == "supported"]

    @property
    def prose(self) -> str:
        return " ".join(c.text.rstrip(".") + "." for c in self.supported)

    @property
    def answer_text(self) -> str:
        """A chat answer as said: what it could not narrow by (``note``) and its verified prose."""
        return " ".join(part for part in (self.note, self.prose) if part)

    @property
    def facts(self) -> list[Claim]:
        """The supporting facts (verified claims) that do not say again what the headline says."""
        told = {c.kind for c in self.headline_claims if c.verdict is not None and c.verdict.status == "supported"}
        return [c for c in self.supported if not (c.kind == "temporal" and "temporal" in told)]
