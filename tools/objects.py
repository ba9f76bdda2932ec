"""Objects in the scene: what each moving thing is and how unusual it looks.

Motion finds and tracks the moving things (``tools.motion``); this module names them and describes their look:

- **what it is**: the COCO detector runs only where motion found something and only when a track is due for a
  look (a few looks when it appears, then one every ``RELOOK_SECONDS``), on the region around the tracks due
  (zoomed in, so small objects get more of the detector's canvas); each blob takes the class of the best
  detection that contains it or that it contains (a blob can merge a rider and a bicycle), and a track keeps
  the class its detections voted for (score-weighted), so frames between looks keep their names. A blob no detection ever covered stays ``UNKNOWN``: the motion blobs are the
  fallback;
- **how fast for its size**: speed in body heights per second (``relative_speed``), comparable across the
  near and far ends of a view;
- **how it looks**: a crop embedding (ImageNet features) of each established blob when its track is due for a
  look, and its nearest-neighbour distance to the normal objects of the scene (``Appearance``), 1.0 at the normal edge.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from anomalens.geometry import box_intersection
from anomalens.tools.motion import FrameFacts
from anomalens.tools.protocols import Detector, Embedder
from anomalens.video import Frame

UNKNOWN = "object"  # a moving thing no detection named
CONTAINED = 0.5  # a blob and a detection match when at least half of either lies inside the other
# What a person rides: a blob holding a person and one of these moves as the ridden thing (a cyclist is named by
# its bicycle, which is what sets it apart from the walkers around it; the rider's box usually scores higher).
RIDDEN = frozenset({"bicycle", "motorcycle", "skateboard", "horse"})
REGION_MARGIN = 0.5  # the detector's region: the moving things' bounding box, grown by half its size
MIN_REGION = 96  # analysis px: smaller regions are grown to this side (context for the detector)
MIN_CROP = 8  # analysis px: blobs smaller than this on either side are noise, not embedded
CROP_MARGIN = 0.15  # crops include some surroundings: a blob's box cuts off limbs and wheels
CROP_SIDE = 128  # the embedder's input for objects: surveillance objects are small, 128 px already upsamples
MAX_BANK = 6000  # normal objects kept for the nearest-neighbour search (a k-centre coreset of them)
FIRST_LOOKS = 2  # looks at a new track, ``every`` frames apart, before its class is taken as settled
RELOOK_SECONDS = 2.0  # then one look this often: what a track is can change (a walker gets on a bicycle)
EDGE_QUANTILE = 0.995  # the normal edge of appearance: this quantile of held-out normal objects' distances


def named(name: str) -> str:
    """A class name with its article: "a person", "an object"."""
    return f"{'an' if name[:1] in tuple('aeiou') else 'a'} {name}"


def containment(blobs: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(N, M)``: the share of each blob's box (xyxy) lying inside each detection box."""
    blobs = np.asarray(blobs, dtype=np.float64).reshape(-1, 4)
    area = np.maximum((blobs[:, 2] - blobs[:, 0]) * (blobs[:, 3] - blobs[:, 1]), 1e-9)
    return box_intersection(blobs, boxes) / area[:, None]


def grown(boxes: np.ndarray, margin: float, size: tuple[int, int], minimum: float = 0.0) -> np.ndarray:
    """``boxes`` grown by ``margin`` of their size on each side and to at least ``minimum`` wide and tall, moved
    into the frame where they stick out (so a box at the edge keeps its size), then cut to the frame."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = np.maximum((boxes[:, 2:] - boxes[:, :2]) * (0.5 + margin), minimum / 2)
    low, high = centre - half, centre + half
    limit = np.array(size, dtype=np.float64)
    shift = np.clip(-low, 0, None) - np.clip(high - limit, 0, None)
    low, high = np.clip(low + shift, 0, limit), np.clip(high + shift, 0, limit)
    return np.concatenate([low, high], axis=1)


@dataclass(frozen=True)
class Looks:
    """Crop embeddings of some of a frame's objects: ``vectors[k]`` is object ``indices[k]``'s."""

    indices: np.ndarray  # (K,) int
    vectors: np.ndarray  # (K, D) float32, unit rows


@dataclass
class Appearance:
    """The look of a scene's normal objects: a bank of unit embeddings and the normal edge of the distance to it.

    An object's distance is 1 - the cosine similarity of its nearest normal neighbour; ``ratios`` divides by
    ``edge`` (the distance held-out normal objects reach at ``EDGE_QUANTILE``), so 1.0 is the edge of normal
    like every other cue."""

    bank: np.ndarray  # (M, D) float32, unit rows
    edge: float

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        if not len(vectors):
            return np.zeros(0)
        return 1.0 - (np.asarray(vectors, np.float32) @ self.bank.T).max(axis=1).astype(np.float64)

    def ratios(self, vectors: np.ndarray) -> np.ndarray:
        return self.distances(vectors) / self.edge

    @classmethod
    def fit(cls, folds: tuple[np.ndarray, np.ndarray]) -> Appearance:
        """From the embeddings of normal objects in two folds (different videos, or the halves of one): each fold
        is scored against the other's bank, which sets the edge; the bank holds both."""
        first, second = (np.asarray(fold, np.float32) for fold in folds)
        if min(len(first), len(second)) < 2:
            raise ValueError(f"only {len(first) + len(second)} objects were seen well enough to learn their look")
        held_out = np.concatenate([
            cls(coreset(first, MAX_BANK), 1.0).distances(second),
            cls(coreset(second, MAX_BANK), 1.0).distances(first),
        ])  # fmt: skip
        edge = max(float(np.quantile(held_out, EDGE_QUANTILE)), 1e-3)
        return cls(coreset(np.concatenate([first, second]), MAX_BANK), edge)

    def state(self) -> dict:
        return {"appearance_bank": self.bank, "appearance_edge": np.float64(self.edge)}

    @classmethod
    def from_state(cls, state: dict) -> Appearance | None:
        if "appearance_bank" not in state:
            return None
        return cls(np.asarray(state["appearance_bank"], np.float32), float(state["appearance_edge"]))


def coreset(vectors: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """At most ``size`` rows of ``vectors`` chosen greedily farthest-first (k-centre), so that rare looks survive
    the cut that a random sample would drop (PatchCore's coreset idea, without its random projection)."""
    if len(vectors) <= size:
        return vectors
    chosen = [int(np.random.default_rng(seed).integers(len(vectors)))]
    nearest = 1.0 - vectors @ vectors[chosen[0]]
    for _ in range(size - 1):
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, 1.0 - vectors @ vectors[pick])
    return vectors[np.sort(chosen)]


class _Schedule:
    """When each track is due for a look, on a clock shared by all tracks so that one detector run serves many:
    looks fall on every ``spacing``-th frame; a track's first ``first`` looks on consecutive ones, then its looks
    on every ``relook``-th frame (a multiple of ``spacing``)."""

    def __init__(self, spacing: int, first: int, relook: int):
        self.spacing, self.first, self.relook = spacing, first, relook
        self._looks: Counter = Counter()  # track -> looks so far

    def due(self, track_id: int, frame: int) -> bool:
        if frame % self.spacing:
            return False
        return self._looks[track_id] < self.first or frame % self.relook == 0

    def looked(self, track_id: int) -> None:
        self._looks[track_id] += 1


class ObjectTagger:
    """Names, relative speeds and looks of one video's moving objects; call ``tag`` on every frame, in order.

    The detector and the embedder look at each established track, not at each frame: ``FIRST_LOOKS`` times
    ``every`` frames apart, then once every ``relook_seconds`` (0: every ``every`` frames, as learning a scene
    does to see its normal objects from every side), on frames shared by all tracks. A frame whose tracks are
    all settled costs neither.

    ``detector`` and ``embedder`` are optional: without a detector every object stays ``UNKNOWN``; without an
    embedder no looks are measured."""

    def __init__(
        self,
        detector: Detector | None,
        embedder: Embedder | None,
        fps: float,
        every: int = 2,
        relook_seconds: float = RELOOK_SECONDS,
    ):
        self.detector, self.embedder, self.fps = detector, embedder, fps
        spacing = max(1, every)
        relook = spacing * max(1, round(relook_seconds * fps / spacing))
        self._naming = _Schedule(spacing, FIRST_LOOKS, relook)
        self._looking = _Schedule(spacing, FIRST_LOOKS, relook)
        self._votes: dict[int, Counter] = defaultdict(Counter)
        self._frame = -1  # frames tagged so far, minus one: the schedules' clock
        self.detector_runs = 0

    def tag(self, frame: Frame, facts: FrameFacts) -> Looks | None:
        """Set each object's ``class``, ``class_score`` and ``relative_speed`` facts in ``facts.objects``; return
        the crop embeddings of the objects due for a look (established, big enough to embed), else None."""
        self._frame += 1
        objects, track_ids = facts.objects, facts.track_ids
        if not objects:
            return None
        analysis = facts.boxes * frame.scale
        # Only established tracks are looked at: a blob younger than half a second is more often noise than an
        # object (a quarter of Ped2's blobs).
        established = [bool(obj.get("established", True)) for obj in objects]
        if self.detector is not None:
            due = [i for i, t in enumerate(track_ids) if established[i] and self._naming.due(t, self._frame)]
            if due:
                self._vote(frame, analysis[due], [track_ids[i] for i in due])
        for obj, track_id in zip(objects, track_ids):
            votes = self._votes.get(track_id)
            name, weight = votes.most_common(1)[0] if votes else (UNKNOWN, 0.0)
            obj["class"] = name
            obj["class_score"] = weight / max(sum(votes.values()), 1e-9) if votes else 0.0
            obj["relative_speed"] = obj["speed"] * self.fps / max(obj["height"], 1.0)
        if self.embedder is None:
            return None
        sides = analysis[:, 2:] - analysis[:, :2]  # and only blobs big enough to show something
        due = [
            i for i, track_id in enumerate(track_ids)
            if established[i] and (sides[i] >= MIN_CROP).all() and self._looking.due(track_id, self._frame)
        ]  # fmt: skip
        if not due:
            return None
        for i in due:
            self._looking.looked(track_ids[i])
        crops = grown(analysis[due], CROP_MARGIN, (frame.image.shape[1], frame.image.shape[0]))
        vectors = self.embedder.embed(frame.image, crops, side=CROP_SIDE).embeddings.astype(np.float32)
        return Looks(np.array(due), vectors)

    def warm(self, frame: Frame) -> None:
        """Run the detector and the embedder once on ``frame``, results dropped: their first run allocates and
        prepares, which a live stream should not wait for."""
        height, width = frame.image.shape[:2]
        self.detector.detect(frame.image, ())
        if self.embedder is not None:
            self.embedder.embed(frame.image, np.array([[0.0, 0.0, width, height]]), side=CROP_SIDE)

    def _vote(self, frame: Frame, blobs: np.ndarray, track_ids: list[int]) -> None:
        size = (frame.image.shape[1], frame.image.shape[0])
        region = grown(np.concatenate([blobs[:, :2].min(axis=0), blobs[:, 2:].max(axis=0)]), REGION_MARGIN,
                       size, MIN_REGION)[0].astype(int)  # fmt: skip
        x1, y1, x2, y2 = region
        found = self.detector.detect(frame.image[y1:y2, x1:x2], ())
        self.detector_runs += 1
        for track_id in track_ids:
            self._naming.looked(track_id)
        if not len(found.boxes):
            return
        boxes = found.boxes + [x1, y1, x1, y1]
        # Either way round: a blob that merges a rider and a bicycle, or two walkers, holds each detection
        matched = np.maximum(containment(blobs, boxes), containment(boxes, blobs).T) >= CONTAINED
        for i, track_id in enumerate(track_ids):
            candidates = np.flatnonzero(matched[i])
            if len(candidates):
                best = candidates[np.argmax(found.scores[candidates])]
                ridden = [c for c in candidates if found.class_names[c] in RIDDEN]
                if ridden and found.class_names[best] == "person":
                    best = ridden[int(np.argmax(found.scores[ridden]))]
                self._votes[track_id][found.class_names[best]] += float(found.scores[best])
