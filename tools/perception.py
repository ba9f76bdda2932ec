"""The vision tools present on this machine: foundation models and the pretrained CPU perception.

``Perception.available()`` loads, per kind, the first backend (in ``backends.yaml``'s order) that is installed
and has weights here (Hugging Face checkpoints, or a model-store entry; checked before anything heavy is
imported); the kinds it could not load are listed with the reason. A vision model behind an OpenAI-compatible
server (settings ``captioner_base_url`` and ``captioner_model``) is the captioner when set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anomalens import modelstore, registry, weights
from anomalens.config import Settings, load_settings
from anomalens.errors import ConfigError, WeightsNotFound
from anomalens.registry import Backend
from anomalens.tools.protocols import (
    Captioner,
    Detector,
    Embedder,
    PoseEstimator,
    Segmenter,
    TextScorer,
)

KINDS = ("clip", "detector", "segmenter", "captioner", "pose", "embedder")
AGENT_KINDS = ("clip", "detector", "segmenter", "captioner")  # what the agent's tools and verifier call
IMAGE_KINDS = ("clip", "detector", "segmenter", "embedder")  # what image inspection uses
# Patch features for images: MobileNetV2's beat EfficientNet-Lite0's on the magnetic tiles' Crack class (4 shots).
IMAGE_EMBEDDERS = ("embedder:mobilenetv2", "embedder:efficientnet-lite0")
OBJECT_KINDS = ("detector", "embedder", "pose")  # what names and describes a scene's objects


@dataclass
class Perception:
    """Loaded tools (None when absent) and, for each absent kind, why."""

    clip: TextScorer | None = None
    detector: Detector | None = None
    segmenter: Segmenter | None = None
    captioner: Captioner | None = None
    pose: PoseEstimator | None = None
    embedder: Embedder | None = None
    absent: dict[str, str] = field(default_factory=dict)

    @classmethod
    def available(
        cls,
        root: Path | None = None,
        settings: Settings | None = None,
        kinds: tuple[str, ...] = KINDS,
        allowed: Mapping[str, Sequence[str]] | None = None,
    ) -> Perception:
        """The tools of ``kinds`` this machine can run (each loaded now); ``allowed`` limits a kind to some of its
        backends, in the order given."""
        settings = settings or load_settings()
        found = cls()
        if settings.captioner_base_url:  # the user pointed at a server: it wins over local weights
            if not settings.captioner_model:
                raise ConfigError("captioner_base_url is set but captioner_model is not (ANOMALENS_CAPTIONER_MODEL)")
            found.captioner = registry.load("captioner:openai")(
                settings.captioner_model, base_url=settings.captioner_base_url, api_key=settings.llm_api_key
            )
        for kind in kinds:
            if getattr(found, kind) is not None:
                continue
            chosen = choose(kind, root, (allowed or {}).get(kind))
            if isinstance(chosen, str):
                found.absent[kind] = chosen
                continue
            backend, path = chosen
            tool = registry.load(backend.name).load(path)
            if kind == "clip":
                from anomalens.tools.clip import ClipScorer

                tool = ClipScorer(tool)
            setattr(found, kind, tool)
        return found

    @property
    def present(self) -> list[str]:
        return [kind for kind in KINDS if getattr(self, kind) is not None]

    def backend(self, kind: str) -> str:
        """The registered name of the loaded tool of ``kind`` (e.g. ``detector:centernet``)."""
        return f"{kind}:{getattr(self, kind).backend}"


def object_tools(chosen: Mapping[str, str] | None = None, root: Path | None = None) -> Perception:
    """The detector, embedder and pose model that find and describe a scene's objects (``tools.objects``).

    ``chosen`` (kind -> backend, as a scene records them) must all load, or a ``ConfigError`` says how to get
    them; without it, the first detector with a fixed vocabulary (it names objects without prompts), and the
    first embedder and pose model with weights here, each left out (with the reason in ``absent``) when none has."""
    detectors = [b.name for b in registry.of_kind("detector") if b.vocabulary]
    if chosen is None:
        return Perception.available(root, kinds=OBJECT_KINDS, allowed={"detector": detectors})
    found = Perception.available(root, kinds=tuple(chosen), allowed={k: [n] for k, n in chosen.items()})
    if found.absent:
        raise ConfigError(
            "this scene was learned with " + ", ".join(chosen.values()) + ", which cannot load here: "
            + "; ".join(found.absent.values())
        )  # fmt: skip
    return found


def image_tools(root: Path | None = None) -> Perception:
    """The tools image inspection can use here (``tools.inspect``), patch features from ``IMAGE_EMBEDDERS``."""
    return Perception.available(root, kinds=IMAGE_KINDS, allowed={"embedder": IMAGE_EMBEDDERS})


def choose(kind: str, root: Path | None = None, names: Sequence[str] | None = None) -> tuple[Backend, Path] | str:
    """The backend of ``kind`` that ``available`` loads (the first of ``names``, or of the registry's order, that
    is installed and has weights here) with its weights; or why none can be, one reason per backend. Nothing
    heavy is imported."""
    reasons = []
    for backend in registry.of_kind(kind) if names is None else [registry.get(n) for n in names]:
        if not backend.checkpoints and not backend.store:
            continue  # a server client or a replay: nothing to find on this machine
        if backend.missing():
            reasons.append(f"{backend.name} not installed (pip install 'anomalens[{backend.extra}]')")
            continue
        path = weights_of(backend, root)
        if path is not None:
            return backend, path
        pull = backend.store or backend.checkpoints[0].name
        reasons.append(f"{backend.name} has no weights here; anomalens models pull {pull}")
    return "; ".join(reasons)


def weights_of(backend: Backend, root: Path | None = None) -> Path | None:
    """Where ``backend``'s weights are on this machine (its model-store entry, or a checkpoint), or None."""
    if backend.store:
        return modelstore.location(backend.store, root) if modelstore.present(backend.store, root) else None
    try:
        return weights.resolve(None, backend.name, root=root)
    except WeightsNotFound:
        return None
