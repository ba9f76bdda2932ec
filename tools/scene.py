"""A learned scene and the scorer that audits footage against it.

A scene folder holds ``scene.json`` (analysis size, frame rate, sources, the object tools it was learned with and
the detector's floor), ``motion.npz`` (background, noise level, the people's perspective, the normal objects'
density and look) and ``rules.yaml`` (the editable rulebook).

Learning: the background; the detector's floor and the people's perspective from a sample of frames; then every
frame's objects followed (``tools.objects``), from which the density of normal objects, their look and the rules
are learned, each checked on normal footage it was not learned from.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomalens.errors import AnomalensError, ConfigError, MediaError
from anomalens.files import atomic_write
from anomalens.progress import say, track
from anomalens.rules.engine import RuleIndex, check
from anomalens.rules.io import load_rulebook, save_rulebook
from anomalens import registry
from anomalens.tools.motion import MotionModel, ground_mask, walkable_zones
from anomalens.tools.objects.appearance import CROP_SIDE, Appearance
from anomalens.tools.objects.density import ObjectDensity
from anomalens.tools.objects.describers import (
    RELOOK_SECONDS,
    Look,
    Movement,
    Naming,
    Place,
    Pose,
    Size,
    _Schedule,
)
from anomalens.tools.objects.follow import FrameObjects, ObjectFollower
from anomalens.tools.objects.perspective import Perspective
from anomalens.tools.objects.sources import DetectorSource
from anomalens.tools.perception import OBJECT_KINDS, Perception
from anomalens.tools.rule_induction import induce_validated
from anomalens.types import Evidence, Measurement, MeasurementKind, Rulebook, Source
from anomalens.video import Frame, FrameSource

SCENE_VERSION = 3
MIN_SIDE = 32  # px: narrower frames hold no object a detector or a person could make out
DETECT_EVERY_SECONDS = 0.5  # the detector looks at every frame this often (and wherever motion appears unfollowed)
PERSPECTIVE_FRAMES = 150  # frames, spread over the normal footage, whose people set the perspective
DEFAULT_FLOOR = 0.3  # the lowest score kept of a detector that does not say its own (backends.yaml)
LOOKS_PER_SECOND = 2.0  # scoring: looks (embedder, pose) at new tracks fall on these frames
LEARNING_LOOKS_PER_SECOND = 5.0  # learning: every track this often (a walker moves ~0.2 m between looks)
CONFIDENT = 2.0  # a person box of this many times the floor is sure enough to measure people's heights by


@dataclass
class Scene:
    model: MotionModel
    rulebook: Rulebook
    analysis_size: tuple[int, int]  # (width, height)
    max_side: int | None
    fps: float
    sources: list[str]
    objects: dict[str, str] = field(default_factory=dict)  # kind -> backend that named and described the objects
    floor: float | None = None  # the detector's lowest score kept in this scene (``sources.calibrate_floor``)
    perspective: Perspective | None = None  # a person's height where they stand (learned from detected people)
    density: ObjectDensity | None = None  # how unusual an object is (None: too few objects to learn it)
    appearance: Appearance | None = None  # the normal objects' look (when an embedder was present)
    folder: Path | None = None  # where it was saved or loaded from: its rules.yaml is the one reviews change

    def open(self, path: str | Path, fps: float | None = None, **options) -> FrameSource:
        """Frames of ``path`` at this scene's analysis resolution (image inputs at ``fps``, else at the scene's
        rate, which ``fps_note`` then says was assumed)."""
        source = FrameSource(path, max_side=self.max_side, fps=fps, default_fps=self.fps, **options)
        if source.analysis_size != tuple(self.analysis_size):
            (width, height), (learned_width, learned_height) = source.source_size, self.analysis_size
            raise MediaError(
                path, f"{width}x{height} frames do not fit this scene, learned at {learned_width}x{learned_height} "
                f"(analysed at most {self.max_side} px a side): is it the same camera?",
            )
        return source

    def _state(self) -> dict:
        parts = [self.model, self.perspective, self.density, self.appearance]
        return {name: value for part in parts if part is not None for name, value in part.state().items()}

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self._state())
        atomic_write(folder / "motion.npz", buffer.getvalue())
        save_rulebook(self.rulebook, folder / "rules.yaml")
        atomic_write(folder / "scene.json", json.dumps(self._meta(), indent=2))
        self.folder = folder
        return folder

    def _meta(self) -> dict:
        return {
            "version": SCENE_VERSION,
            "analysis_size": list(self.analysis_size),
            "max_side": self.max_side,
            "fps": self.fps,
            "sources": self.sources,
            "objects": self.objects,
            "floor": self.floor,
        }

    def digest(self) -> str:
        """A hash of everything that scores frames (learned state, rulebook, settings): a resumed audit's check
        that the scene is the one it screened with."""
        hashed = hashlib.sha256(json.dumps(self._meta()).encode())
        hashed.update(self.rulebook.model_dump_json().encode())
        for name, value in sorted(self._state().items()):
            hashed.update(name.encode())
            hashed.update(np.ascontiguousarray(value).tobytes())
        return hashed.hexdigest()

    @classmethod
    def load(cls, folder: str | Path) -> Scene:
        folder = Path(folder)
        meta_path = folder / "scene.json"
        if not meta_path.is_file():
            raise ConfigError(f"{folder}: not a scene folder (no scene.json); create one with `anomalens induce-rules`")
        again = "learn the scene again with `anomalens induce-rules`"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{meta_path}: damaged, not JSON ({error}); {again}") from None
        if not isinstance(meta, dict) or meta.get("version") != SCENE_VERSION:
            found = meta.get("version") if isinstance(meta, dict) else None
            raise ConfigError(f"{meta_path}: scene version {found}, this anomalens reads {SCENE_VERSION}: {again}")
        state_path = folder / "motion.npz"
        try:
            with np.load(state_path) as npz:
                state = dict(npz)
            learned = {
                "model": MotionModel.from_state(state),
                "perspective": Perspective.from_state(state),
                "density": ObjectDensity.from_state(state),
                "appearance": Appearance.from_state(state),
            }
            described = {
                "analysis_size": tuple(meta["analysis_size"]),
                "max_side": meta["max_side"],
                "fps": float(meta["fps"]),
                "sources": list(meta["sources"]),
                "objects": dict(meta["objects"]),
                "floor": meta["floor"],
            }
        except FileNotFoundError:
            raise ConfigError(f"{state_path}: missing; {again}") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # a truncated or altered file
            raise ConfigError(f"{state_path}: damaged ({error}); {again}") from None
        except KeyError as error:
            raise ConfigError(f"{folder}: the scene lacks {error}; {again}") from None
        rulebook = load_rulebook(folder / "rules.yaml")
        learned["model"].geometry.drawn = list(rulebook.zones)
        return cls(rulebook=rulebook, folder=folder, **learned, **described)

    @classmethod
    def learn(
        cls,
        inputs: Sequence[str | Path],
        *,
        max_side: int | None = 640,
        fps: float | None = None,
        contamination: float = 0.0,
        tools: Perception | None = None,
        progress: bool = True,
    ) -> Scene:
        """A scene learned from normal footage (videos or frame folders of one view): background, normal objects
        and rules; with ``tools`` (a detector, an embedder and a pose model, ``perception.object_tools``) the
        objects are detector boxes, named, and their look learned too. ``contamination``: the share of object
        observations that may be anomalous (footage not known normal)."""
        if not inputs:
            raise AnomalensError("give at least one normal video or frame folder")
        options = {"max_side": max_side} | ({"fps": fps} if fps else {})
        sources = [FrameSource(p, **options) for p in inputs]
        for source in sources:
            if source.fps_note:
                say(f"{source.name}: {source.fps_note}", progress)
        for source in sources:
            if min(source.source_size) < MIN_SIDE:
                width, height = source.source_size
                raise MediaError(source.name, f"{width}x{height} frames: too small to learn a scene from (at least "
                                              f"{MIN_SIDE} px a side)")  # fmt: skip
        sizes = {tuple(s.source_size) for s in sources}
        if len(sizes) > 1:
            raise AnomalensError(f"normal footage comes in several frame sizes {sorted(sizes)}: use one camera view")
        model = MotionModel().fit_background(track(_spread(sources, 200), "learning the background", enabled=progress))
        height, width = model.background.shape
        scene = cls(model, Rulebook(), (width, height), max_side, sources[0].fps, [str(p) for p in inputs])
        detector = tools.detector if tools is not None else None
        if detector is not None:
            scene.floor = registry.get(tools.backend("detector")).floor or DEFAULT_FLOOR
            scene.objects = {k: tools.backend(k) for k in OBJECT_KINDS if k in tools.present}
            scene.perspective = _perspective(detector, scene.floor, _spread(sources, PERSPECTIVE_FRAMES), progress)
        per_source, looks = [], []
        for source in sources:
            follower, look = scene.follower(source.fps, tools, learning=True)
            per_source.append([])
            for frame in track(source, f"learning objects: {source.name}", total=len(source), enabled=progress):
                seen = follower.step(frame)
                per_source[-1].extend(seen.facts(i) | {"foot": seen.states[i].feet[-1], "track": (len(per_source), seen.states[i].id)}
                                      for i in range(len(seen)))  # fmt: skip
            looks.append(look.vectors if look is not None else [])
        scene._learn_normality(per_source, looks, contamination, Path(str(inputs[0])).name)
        return scene

    def _learn_normality(self, per_source: list[list[dict]], looks: list[list[np.ndarray]], contamination: float,
                         name: str) -> None:  # fmt: skip
        """The density, look and rules of the normal objects (``per_source``: each source's object facts), each
        checked on footage it was not learned from: alternate sources, or the halves of a single one."""
        folds = _folds(per_source)
        speed = self.speed_attribute
        try:
            self.density = ObjectDensity.calibrated(tuple(
                ([o.get("class") for o in fold], [o[speed] for o in fold]) for fold in folds))  # fmt: skip
        except ValueError as error:
            raise AnomalensError(f"cannot learn the scene's objects: {error}") from None
        if any(looks):
            try:
                self.appearance = Appearance.fit(_folds(looks, _stacked))
            except ValueError as error:
                raise AnomalensError(f"cannot learn the scene's objects: {error}") from None
        feet = np.array([o["foot"] for objects in per_source for o in objects]).reshape(-1, 2)
        ground = ground_mask(self.model.background, feet)
        try:
            self.rulebook = induce_validated(
                folds, self.model.geometry.zones, walkable=walkable_zones(ground, self.model.geometry),
                contamination=contamination, scene=name, sources=self.sources, fps=self.fps,
                perspective=self.perspective is not None,
            )  # fmt: skip
        except ValueError as error:
            raise AnomalensError(f"cannot learn the scene: {error}") from None

    @property
    def speed_attribute(self) -> str:
        """The speed the density of objects is over: for their size where people's perspective is known (a person's
        height where each stands), else in px/s (a moving region's own height merges and splits with it)."""
        return "relative_speed" if self.perspective is not None else "speed"

    def follower(self, fps: float, tools: Perception | None, *, learning: bool = False) -> tuple[ObjectFollower, Look | None]:
        """An ``ObjectFollower`` of one video of this scene, with the scene's object tools (``tools``; None when the
        scene knows motion alone), and its look describer (None without an embedder). Learning looks at every track
        often (5 a second, its look collected, no pose); scoring looks at new tracks and every ``RELOOK_SECONDS``."""
        person_height = self.perspective.height if self.perspective is not None else None
        describers = [Size(), Place(self.model.geometry), Movement(), Naming()]
        source = look = None
        if tools is not None and self.objects:
            if tools.detector is not None:
                every = max(1, round(DETECT_EVERY_SECONDS * fps))
                source = DetectorSource(tools.detector, self.floor, every, person_height)
            per_second = LEARNING_LOOKS_PER_SECOND if learning else LOOKS_PER_SECOND
            relook = 0.0 if learning else RELOOK_SECONDS
            if tools.embedder is not None and (learning or self.appearance is not None):
                look = Look(tools.embedder, _Schedule(fps, per_second, relook), None if learning else self.appearance)
                describers.append(look)
            if tools.pose is not None and not learning:
                describers.append(Pose(tools.pose, _Schedule(fps, per_second, relook)))
        flow_scale = self.perspective.flow_scale() if self.perspective is not None else 1.0
        return ObjectFollower(self.model, fps, describers, source=source, person_height=person_height,
                              flow_scale=flow_scale), look  # fmt: skip


def _perspective(detector, floor: float, frames: Iterator[Frame], progress: bool) -> Perspective | None:
    """The people's perspective, from the confident person boxes of a sample of normal frames. (Moving regions do
    not do: near the camera they merge walkers, far away they break them up; on Ped2 a line through their heights
    made speeds for size rank frames worse than chance.)"""
    people = []
    for frame in track(list(frames), "measuring people", enabled=progress):
        people.append(detector.detect(frame.image, ["person"], box_threshold=CONFIDENT * floor).boxes.reshape(-1, 4))
    boxes = np.concatenate(people)
    return Perspective.fit(boxes[:, 3], boxes[:, 3] - boxes[:, 1])


def _folds(per_source: list[list], join=None) -> tuple:
    """Two folds for validating what was learned on footage it was not learned from: alternate sources, or the
    two halves of a single source (``join`` makes a fold of sources' lists; default: one list)."""
    join = join or (lambda parts: [item for part in parts for item in part])
    if len(per_source) > 1:
        return join(per_source[0::2]), join(per_source[1::2])
    half = len(per_source[0]) // 2
    return join([per_source[0][:half]]), join([per_source[0][half:]])


def _stacked(parts: list[list[np.ndarray]]) -> np.ndarray:
    """The rows of every array in ``parts`` (lists of per-frame embeddings), as one array."""
    rows = [array for part in parts for array in part]
    return np.concatenate(rows) if rows else np.zeros((0, 1), np.float32)


def _spread(sources: Sequence[FrameSource], limit: int) -> Iterator[Frame]:
    """At most about ``limit`` frames spread evenly over all sources."""
    total = sum(len(s) for s in sources)
    step = max(1, total // limit)
    for k, frame in enumerate(itertools.chain.from_iterable(sources)):
        if k % step == 0:
            yield frame


def _breach(rule_id: str, severity: float, object_index: int | None = None) -> Measurement:
    return Measurement(
        kind=MeasurementKind.RULE_SEVERITY, name=rule_id, value=severity, unit="ratio", object_index=object_index
    )


class SceneScorer:
    """Scores frames of one video against a scene: each object by how unusual its class and speed for its size are
    among the scene's normal objects (``ObjectDensity``) and by the rules it breaks, the frame by its rules.

    ``score(frame).frame_score`` is the largest of the objects' scores and the severities of the frame rules broken,
    1.0 at the edge of normal for each; every rule broken is recorded as a ``RULE_SEVERITY`` measurement named by
    the rule's id. ``tools``: the scene's object tools (``perception.object_tools(scene.objects)``), needed when the scene was
    learned with them.
    """

    def __init__(self, scene: Scene, fps: float, tools: Perception | None = None):
        if scene.objects and tools is None:
            raise ConfigError("this scene names its objects: give its object tools (perception.object_tools)")
        self.scene, self.tools = scene, tools if scene.objects else None
        self.rules = RuleIndex(scene.rulebook)
        self.follower, _ = scene.follower(fps, self.tools)

    def warm(self, frame: Frame) -> None:
        """Run the object tools once on ``frame``, results dropped: their first run allocates and prepares, which a
        live stream's first frames should not wait for."""
        if self.tools is None:
            return
        height, width = frame.image.shape[:2]
        whole = np.array([[0.0, 0.0, width, height]])
        if self.tools.detector is not None:
            self.tools.detector.detect(frame.image, ())
        if self.tools.embedder is not None:
            self.tools.embedder.embed(frame.image, whole, side=CROP_SIDE)
        if self.tools.pose is not None:
            self.tools.pose.estimate(frame.image)

    def score(self, frame: Frame) -> Evidence:
        started = time.perf_counter()
        seen = self.follower.step(frame)
        object_scores = self._unusual(seen)
        if self.scene.density is not None:
            for state, novelty in zip(seen.states, object_scores):
                state.record("novelty", float(novelty))
        object_scores = object_scores.copy()
        broken: list[Measurement] = []
        # A rule counts once broken; how near its limit a normal object comes says nothing the density does not.
        for i in range(len(seen)):
            facts = seen.facts(i)
            for result in check(self.rules.object_rules(facts), facts):
                if result.violated:
                    object_scores[i] = max(object_scores[i], result.severity)
                    broken.append(_breach(result.rule.id, result.severity, i))
        frame_severity = 0.0
        if len(seen):  # frame facts (count, occupancy) are the same for every object: checked once
            for result in check(self.rules.frame_rules, seen.facts(0)):
                if result.violated:
                    frame_severity = max(frame_severity, result.severity)
                    broken.append(_breach(result.rule.id, result.severity))
        source = Source(tool="scene", backend="objects+rules" if self.scene.objects else "motion+rules",
                        latency_s=time.perf_counter() - started)  # fmt: skip
        evidence = seen.evidence(source, scores=object_scores, extra=broken,
                                 frame_score=float(max(object_scores.max(initial=0.0), frame_severity)))  # fmt: skip
        return evidence.model_copy(update={"anomaly_map": _painted(seen, object_scores)})

    def _unusual(self, seen: FrameObjects) -> np.ndarray:
        """Each object's surprise on the density of the scene's normal objects (0 without one)."""
        density = self.scene.density
        if density is None or not len(seen):
            return np.zeros(len(seen))
        speed = self.scene.speed_attribute
        return density.ratios([s.class_name for s in seen.states], [s.latest(speed) for s in seen.states])

    def tracks(self):
        return self.follower.tracks()


def _painted(seen: FrameObjects, scores: np.ndarray) -> np.ndarray:
    """The objects' scores painted over their boxes (analysis resolution): where in the frame the anomaly is."""
    height, width = seen.frame.image.shape[:2]
    picture = np.zeros((height, width), np.float32)
    boxes = (seen.boxes * seen.frame.scale).round().astype(int)
    for (x1, y1, x2, y2), score in sorted(zip(boxes, scores), key=lambda item: item[1]):
        picture[max(0, y1) : y2, max(0, x1) : x2] = np.maximum(picture[max(0, y1) : y2, max(0, x1) : x2], score)
    return picture
