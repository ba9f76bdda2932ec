"""A learned scene (motion model + rulebook) and the scorer that audits footage against it.

A scene folder holds ``scene.json`` (analysis size, frame rate, sources, the object tools it was learned with),
``motion.npz`` (background, noise level, normal flow, the motion reconstruction model, the normal objects' look)
and ``rules.yaml`` (the editable rulebook).
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
from anomalens.tools.motion import (
    MotionAnalyzer,
    MotionModel,
    ground_mask,
    walkable_cells,
    walkable_zones,
)
from anomalens.tools.objects import Appearance, ObjectTagger
from anomalens.tools.perception import OBJECT_KINDS, Perception
from anomalens.tools.reconstruction import FlowPatchPCA
from anomalens.tools.rule_induction import induce_validated
from anomalens.types import Evidence, Measurement, MeasurementKind, Rulebook, Source
from anomalens.video import Frame, FrameSource

SCENE_VERSION = 2
MAX_PATCH_FRAMES = 4000  # frames of motion patches kept for fitting the reconstruction detector
LOOKS_PER_SECOND = 2.0  # scoring: new tracks are looked at on these frames (one detector run serves all due)
LEARNING_LOOKS_PER_SECOND = 5.0  # learning: every track this often (a walker moves ~0.2 m between looks)


@dataclass
class Scene:
    model: MotionModel
    reconstruction: FlowPatchPCA
    rulebook: Rulebook
    analysis_size: tuple[int, int]  # (width, height)
    max_side: int | None
    fps: float
    sources: list[str]
    objects: dict[str, str] = field(default_factory=dict)  # kind -> backend that named and described the objects
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

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        looks = self.appearance.state() if self.appearance is not None else {}
        np.savez_compressed(buffer, **self.model.state(), **self.reconstruction.state(), **looks)
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
        }

    def digest(self) -> str:
        """A hash of everything that scores frames (learned state, rulebook, settings): a resumed audit's check
        that the scene is the one it screened with."""
        hashed = hashlib.sha256(json.dumps(self._meta()).encode())
        hashed.update(self.rulebook.model_dump_json().encode())
        looks = self.appearance.state() if self.appearance is not None else {}
        for name, value in sorted({**self.model.state(), **self.reconstruction.state(), **looks}.items()):
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
                "reconstruction": FlowPatchPCA.from_state(state),
                "appearance": Appearance.from_state(state),
            }
            described = {
                "analysis_size": tuple(meta["analysis_size"]),
                "max_side": meta["max_side"],
                "fps": float(meta["fps"]),
                "sources": list(meta["sources"]),
                "objects": dict(meta["objects"]),
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
        """A scene learned from normal footage (videos or frame folders of one view): background, normal motion,
        rules; with ``tools`` (a detector and an embedder, ``perception.object_tools``) also the objects' classes
        and look. ``contamination``: the share of object observations that may be anomalous (footage not known
        normal)."""
        if not inputs:
            raise AnomalensError("give at least one normal video or frame folder")
        options = {"max_side": max_side} | ({"fps": fps} if fps else {})
        sources = [FrameSource(p, **options) for p in inputs]
        for source in sources:
            if source.fps_note:
                say(f"{source.name}: {source.fps_note}", progress)
        sizes = {tuple(s.source_size) for s in sources}
        if len(sizes) > 1:
            raise AnomalensError(f"normal footage comes in several frame sizes {sorted(sizes)}: use one camera view")
        model = MotionModel().fit_background(
            track(_spread(sources, 200), "learning the background", enabled=progress)
        )
        per_source: list[list[dict]] = []
        cells: list[np.ndarray] = []
        reconstruction = FlowPatchPCA(cell=model.flow_cell)
        patches: list[np.ndarray] = []
        keep_every = max(1, sum(len(s) for s in sources) // MAX_PATCH_FRAMES)  # bounds memory on long footage
        looks: list[list[np.ndarray]] = []
        for source in sources:
            analyzer = MotionAnalyzer(model, source.fps)
            tagger = _tagger(tools, source.fps, learning=True)
            per_source.append([])
            looks.append([])
            for k, frame in enumerate(
                track(source, f"learning motion: {source.name}", total=len(source), enabled=progress)
            ):
                facts = analyzer.analyze(frame)
                seen = tagger.tag(frame, facts) if tagger is not None else None
                if seen is not None:
                    looks[-1].append(seen.vectors)
                per_source[-1].extend(facts.objects)
                if facts.flow is not None:
                    cells.append(facts.flow_novelty)  # the reference is still 1: these are raw magnitudes
                    if k % keep_every == 0:
                        patches.append(reconstruction.features(facts.flow))
        feet = np.array([o["foot"] for objects in per_source for o in objects]).reshape(-1, 2)
        ground = ground_mask(model.background, feet)
        quiet_but_walkable = walkable_cells(ground, model.flow_cell)
        if cells:
            model.fit_flow(np.stack(cells), quiet_but_walkable)
        reconstruction.fit(patches, quiet_but_walkable)
        # Two folds for validating rules on footage they were not induced from: alternate sources, or the two
        # halves of a single source.
        folds = _folds(per_source)
        appearance = None
        if tools is not None and tools.embedder is not None:
            try:
                appearance = Appearance.fit(_folds(looks, _stacked))
            except ValueError as error:
                raise AnomalensError(f"cannot learn the scene's objects: {error}") from None
        try:
            rulebook = induce_validated(
                folds,
                model.geometry.zones,
                walkable=walkable_zones(ground, model.geometry),
                contamination=contamination,
                scene=Path(str(inputs[0])).name,
                sources=[str(p) for p in inputs],
                fps=sources[0].fps,
            )
        except ValueError as error:
            raise AnomalensError(f"cannot learn the scene: {error}") from None
        height, width = model.background.shape
        objects = {k: tools.backend(k) for k in OBJECT_KINDS if k in tools.present} if tools is not None else {}
        return cls(model, reconstruction, rulebook, (width, height), max_side, sources[0].fps,
                   [str(p) for p in inputs], objects, appearance)  # fmt: skip


def _tagger(tools: Perception | None, fps: float, *, learning: bool = False) -> ObjectTagger | None:
    """The object tagger of one video. Learning looks at every established track on every look (5 a second), so
    that the normal objects are seen from every side; scoring looks at new tracks (2 looks a second) and at
    settled ones every ``objects.RELOOK_SECONDS``."""
    if tools is None or not set(OBJECT_KINDS) & set(tools.present):
        return None
    if learning:
        return ObjectTagger(tools.detector, tools.embedder, fps, every=max(1, round(fps / LEARNING_LOOKS_PER_SECOND)),
                            relook_seconds=0.0)  # fmt: skip
    return ObjectTagger(tools.detector, tools.embedder, fps, every=max(1, round(fps / LOOKS_PER_SECOND)))


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
    """Scores frames of one video against a scene: rule severities, the objects' look, flow novelty, motion
    reconstruction.

    ``score(frame).frame_score`` is the largest of the objects' scores, the frame rules' severities, the flow
    novelty and the reconstruction residual ratio; 1.0 is the edge of normal for each. Each object's score is
    the larger of its largest rule severity and its appearance ratio (how far its look lies from the scene's
    normal objects, kept along its track between the frames where it is looked at); every rule broken is
    recorded as a ``RULE_SEVERITY`` measurement named by the rule's id. ``tools``: the scene's object tools
    (``perception.object_tools(scene.objects)``), needed when the scene was learned with them.
    """

    def __init__(self, scene: Scene, fps: float, tools: Perception | None = None):
        if scene.objects and tools is None:
            raise ConfigError("this scene names its objects: give its object tools (perception.object_tools)")
        self.scene = scene
        self.rules = RuleIndex(scene.rulebook)
        self.analyzer = MotionAnalyzer(scene.model, fps)
        self.tagger = _tagger(tools, fps) if scene.objects else None
        self._looks: dict[int, float] = {}  # track -> its latest appearance ratio

    def warm(self, frame: Frame) -> None:
        """Ready the object tools on ``frame`` (nothing recorded): a stream's first frames then come on time."""
        if self.tagger is not None:
            self.tagger.warm(frame)

    def score(self, frame: Frame) -> Evidence:
        started = time.perf_counter()
        facts = self.analyzer.analyze(frame)
        seen = self.tagger.tag(frame, facts) if self.tagger is not None else None
        object_scores = np.zeros(len(facts.objects))
        broken: list[Measurement] = []
        looks: list[Measurement] = []
        if seen is not None and self.scene.appearance is not None:
            for i, ratio in zip(seen.indices, self.scene.appearance.ratios(seen.vectors)):
                self._looks[facts.track_ids[i]] = float(ratio)
        for i, obj in enumerate(facts.objects):
            if (ratio := self._looks.get(facts.track_ids[i])) is not None:
                object_scores[i] = ratio
                looks.append(Measurement.model_construct(name="appearance", value=ratio, unit="ratio", object_index=i))
            for result in check(self.rules.object_rules(obj), obj):
                object_scores[i] = max(object_scores[i], result.severity)
                if result.violated:
                    broken.append(_breach(result.rule.id, result.severity, i))
        frame_severity = 0.0
        if facts.objects:  # frame facts (count, occupancy) are the same for every object: check them once
            for result in check(self.rules.frame_rules, facts.objects[0]):
                frame_severity = max(frame_severity, result.severity)
                if result.violated:
                    broken.append(_breach(result.rule.id, result.severity))
        novelty = facts.flow_novelty
        residual = (
            self.scene.reconstruction.score(facts.flow) if facts.flow is not None else np.zeros_like(novelty)
        )
        h, w = frame.image.shape[:2]
        # Grid cues cover the frame's top-left rows*cell x cols*cell; the remainder stays 0.
        grid = np.maximum(novelty, residual)
        anomaly_map = np.zeros((h, w), dtype=np.float32)
        cell = self.scene.model.flow_cell
        rows, cols = grid.shape
        anomaly_map[: rows * cell, : cols * cell] = np.kron(grid, np.ones((cell, cell), dtype=np.float32))
        for i, mask in enumerate(facts.masks):
            anomaly_map[mask] = np.maximum(anomaly_map[mask], object_scores[i])
        return facts.evidence(
            Source(tool="scene", backend="motion+rules" + ("+objects" if self.tagger else ""),
                   latency_s=time.perf_counter() - started),  # fmt: skip
            scores=object_scores,
            anomaly_map=anomaly_map,
            frame_score=float(max(object_scores.max(initial=0.0), frame_severity, grid.max(initial=0.0))),
            extra=[Measurement(name="reconstruction", value=float(residual.max(initial=0.0)), unit="ratio"), *looks,
                   *broken],  # fmt: skip
        )
